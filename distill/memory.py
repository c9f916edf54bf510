"""Measured memory: the peak a block of code reaches (its prediction is `distill plan`'s)."""

from __future__ import annotations

import threading


class PeakMemory:
    """Peak memory while the block runs, in MiB (`.mb`): on a GPU the allocator's peak on `device` (everything
    allocated there, what was already resident included); on CPU the process's resident memory above its level
    at entry, sampled every 10 ms."""

    def __init__(self, device: str | None = None):
        self.device = device

    def start(self):
        import torch

        self.cuda = torch.cuda.is_available() and (self.device or "cuda").startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> float:
        import torch

        self._stop.set()
        self._thread.join()
        self.mb = (torch.cuda.max_memory_allocated(self.device) if self.cuda else self.peak - self.base) / 2**20
        return self.mb

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
