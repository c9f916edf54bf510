"""Artifacts on disk: atomic writes, JSONL with line-numbered errors, manifests, stage directories."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger("distill")


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2, no traceback."""


def stage_dir(runs_dir: str, run: str, stage: str, tag: str = "") -> Path:
    return Path(runs_dir) / run / stage / tag if tag else Path(runs_dir) / run / stage


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a malformed line or a missing field is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise UserError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def sha256(path: Path) -> str:
    """Hash of a file, or of every file under a directory (names and bytes)."""
    path, h = Path(path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if any(part.startswith("checkpoint") for part in p.parts):
            continue  # training checkpoints are resume state, not part of the artifact's identity
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    from distill import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@contextlib.contextmanager
def staging(out: Path):
    """Write a stage's output into a hidden sibling directory; move it into place only on success,
    so a failed or interrupted stage never leaves a half-written artifact behind."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def finish(out: Path, stage: str, cfg, inputs: dict[str, Path], counts: dict, started: float,
           **extra) -> None:
    """Write the resolved config.yaml and manifest.json of a stage directory."""
    out = Path(out)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    manifest = {
        "stage": stage,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {name: {"path": str(p), "sha256": sha256(p)} for name, p in inputs.items()},
        "counts": counts,
        "timings": {"total_s": round(time.time() - started, 3), **extra.pop("timings", {})},
        **extra,
    }
    atomic_write_json(out / "manifest.json", manifest)


class Fallbacks:
    """Fallbacks taken in a stage (e.g. flash-attn -> SDPA): each logged once and kept for the manifest."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, wanted: str, used: str, reason: str) -> None:
        if any(f["wanted"] == wanted for f in self.items):
            return
        log.warning("fallback: %s -> %s (%s)", wanted, used, reason)
        self.items.append({"wanted": wanted, "used": used, "reason": reason})
