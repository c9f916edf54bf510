"""Generation tokens/s of the three backends on the same model, prompts, `n` and lengths, in one run:
transformers (in .venv, 1 and 2 torch threads), vLLM offline (in .venv-vllm) and the openai backend
against vLLM's OpenAI-compatible server (started here on 127.0.0.1, from .venv-vllm).

    .venv/bin/python bench/generate_throughput.py [--prompts 64] [--n 4] [--new 256]

Each backend is driven through its distill.backends primitive (what `traces` and `eval` call), after a
warm-up call; tokens/s = generated tokens / wall time of the timed call. The model is a ~4.3M-parameter Qwen2
(head size 32, which vLLM's CPU kernels take) built with `distill init` on the demo's tokenizer; untrained,
so lengths are set by the token limit and the odd end-of-sequence token, counted as generated.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM = ROOT / ".venv-vllm" / "bin"
RUNS = ROOT / "runs" / "bench-generate"
ARCH = {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 1024, "num_attention_heads": 8,
        "num_key_value_heads": 8}
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}


def _prompts(tok, count: int, n: int) -> list[list[int]]:
    from distill import generate as G
    from distill.artifacts import read_jsonl

    problems = read_jsonl(RUNS / "b" / "problems" / "train.jsonl")[:count]
    return [G.think_prompt(tok, p["problem"]) for p in problems for _ in range(n)]


def measure(kind: str, model: str, args, settings: dict, threads: int = 0) -> dict:
    """Warm up, then time one call of the backend's primitive over every prompt."""
    from distill import backends
    from distill.artifacts import Fallbacks

    if threads:
        import torch

        torch.set_num_threads(threads)
    b = backends.load(kind, model, settings=settings, fallbacks=Fallbacks(), runs_dir=str(RUNS), run="b",
                      dtype="float32", batch_size=args.prompts * args.n)
    prompts = _prompts(b.tok, args.prompts, args.n)
    stop = [b.tok.eos_token_id]
    b.generate(prompts[:8], 16, stop, temperature=0.8, top_p=0.95, seed=1)  # warm-up
    started = time.perf_counter()
    gens = b.generate(prompts, args.new, stop, temperature=0.8, top_p=0.95, seed=0)
    seconds = time.perf_counter() - started
    tokens = sum(len(g.ids) for g in gens)
    b.close()
    return {"backend": kind, "threads": threads or None, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(VLLM / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
                             "--no-enable-chunked-prefill"],  # see distill/backends/vllm.py
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"server exited: see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    sys.exit("server did not start in 300 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # vllm: measure in this process (.venv-vllm)
    args = ap.parse_args()
    model = str(RUNS / "b" / "init" / "m")
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, model, args, {})), flush=True)
        return
    if not (VLLM / "python").exists():
        sys.exit("needs .venv-vllm: make install-vllm")
    for stage in (["problems", "--config", "eval/demo.yaml", "train_per_task=64", "eval_per_task=8"],
                  ["tokenizer", "--config", "eval/demo.yaml"],
                  ["init", "--config", "teachers/demo.yaml", "name=m", f"arch={json.dumps(ARCH)}"]):
        subprocess.run([sys.executable, "-m", "distill.cli", *stage, f"runs_dir={RUNS}", "run=b"], cwd=ROOT,
                       check=True, capture_output=True)
    rows = [measure("transformers", model, args, {}, threads=t) for t in (1, 2)]
    out = subprocess.run([str(VLLM / "python"), __file__, "--worker", "vllm", "--prompts", str(args.prompts),
                          "--n", str(args.n), "--new", str(args.new)], cwd=ROOT, env=ENV, check=True,
                         capture_output=True, text=True)
    rows.append(json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:]))
    port = _port()
    server = _serve(model, port, RUNS / "server.log")
    try:
        rows.append(measure("openai", model, args, {"base_urls": [f"http://127.0.0.1:{port}/v1"],
                                                    "model": "bench", "concurrency": 256,
                                                    "cache": str(RUNS / f"cache-{time.time_ns()}.jsonl")}))
    finally:
        os.killpg(server.pid, 9)
    best_tf = max(r["tokens_per_s"] for r in rows if r["backend"] == "transformers")
    from distill.backends import count_params

    print(f"{args.prompts} prompts x n={args.n} x up to {args.new} new tokens, temperature 0.8, fp32, "
          f"{count_params(model):,} parameters")
    print("| backend | torch threads | tokens | seconds | tokens/s | ÷ best transformers |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['threads'] or '-'} | {r['tokens']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / best_tf:.2f} |")


if __name__ == "__main__":
    main()
