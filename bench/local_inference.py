"""Single-stream generation speed of the quantized formats against transformers fp32, on the same model and
prompts, in one run: what a user gets running the model on a laptop, one request at a time.

    .venv/bin/python bench/local_inference.py [--prompts 16] [--new 128]      (after make install-local)

Models: the demo's teacher (runs/demo/sft/teacher/model, after `make demo`; its widths of 128 are too narrow
for k-quants, so llama.cpp stores most of its Q4_K_M as other types, see the manifest) and a Qwen2 with widths
of 256 (4 layers, 3.4M parameters, built here with `distill init`, untrained) whose Q4_K_M is all k-quants.
Each is quantized by `distill quantize` to every format; each variant then generates through its distill
backend (what `eval` and `serve` call): transformers fp32 and bitsandbytes at batch size 1, GGUF through
llama_cpp. One thread for the quantized formats (torch and llama.cpp: docs/cpu.md, 2
threads stall on these VMs); the fp32 baseline is the better of 1 and 2 torch threads, measured here. Greedy, no stop token, so every prompt generates exactly --new tokens; tokens/s = new tokens / wall
time including prefill, best of --repeats timed calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench-local"
ARCH = {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 768, "num_attention_heads": 4,
        "num_key_value_heads": 4}
FORMATS = ("gguf-q8_0", "gguf-q4_k_m", "bnb-8bit", "bnb-4bit")


def _distill(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "distill.cli", *args, f"runs_dir={RUNS}", "run=b"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"distill {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc


def measure(kind: str, path: str, prompts_text: list[str], new: int, repeats: int, threads: int = 1) -> dict:
    import torch

    from distill import backends
    from distill import generate as G
    from distill.artifacts import Fallbacks

    torch.set_num_threads(threads)
    b = backends.load(kind, path, settings={"n_threads": threads, "n_threads_batch": threads} if kind == "llama_cpp" else {}, fallbacks=Fallbacks(), dtype="float32", batch_size=1)
    prompts = [G.think_prompt(b.tok, p) for p in prompts_text]
    b.generate(prompts[:2], 8, [], temperature=0.0, top_p=1.0, seed=0)  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        gens = b.generate(prompts, new, [], temperature=0.0, top_p=1.0, seed=0)
        seconds = time.perf_counter() - started
        best = max(best, sum(len(g.ids) for g in gens) / seconds)
    b.close()
    return {"tokens_per_s": best, "params": b.params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from distill.artifacts import read_jsonl

    _distill("problems", "--config", "eval/demo.yaml", "train_per_task=64", "eval_per_task=8")
    _distill("tokenizer", "--config", "eval/demo.yaml")
    _distill("init", "--config", "teachers/demo.yaml", "name=w256", f"arch={json.dumps(ARCH)}")
    models = {"w256 (widths 256, untrained)": RUNS / "b/init/w256"}
    demo = ROOT / "runs/demo/sft/teacher/model"
    if demo.is_dir():
        models = {"demo teacher": demo, **models}
    else:
        print(f"({demo} not found: run make demo to include the demo's teacher)")
    texts = [p["problem"] for p in read_jsonl(RUNS / "b/problems/eval.jsonl")][:args.prompts]
    rows = []  # printed at the end: the backends' progress bars write over a line printed meanwhile
    for label, path in models.items():
        name = path.parent.name if path.name == "model" else path.name
        # the baseline is transformers' best of 1 and 2 threads (2 can stall on these VMs, or win)
        fp32 = {t: measure("transformers", str(path), texts, args.new, args.repeats, threads=t) for t in (1, 2)}
        base = max(fp32.values(), key=lambda r: r["tokens_per_s"])
        mb = (path / "model.safetensors").stat().st_size / 1e6
        for t, r in fp32.items():
            rows.append(f"| {label} ({base['params']:,} params) | fp32 (transformers, {t} thread{'s' * (t > 1)}) | "
                        f"{mb:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} |")
        for fmt in FORMATS:
            proc = subprocess.run([sys.executable, "-m", "distill.cli", "quantize", "--format", fmt,
                                   f"model={path}", f"name={name}", f"runs_dir={RUNS}", "run=b"], cwd=ROOT,
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                rows.append(f"| {label} | {fmt} | - | refused: {proc.stderr.strip().splitlines()[-1][-120:]} | - |")
                continue
            out = RUNS / "b/quantize" / f"{name}-{fmt}"
            counts = json.loads((out / "manifest.json").read_text())["counts"]
            r = measure("llama_cpp" if fmt.startswith("gguf") else "transformers", str(out / "model"), texts,
                        args.new, args.repeats)
            rows.append(f"| {label} | {fmt} | {counts['quantized_mb']:.2f} | {r['tokens_per_s']:,.0f} | "
                        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} |")
    print(f"\n{len(texts)} prompts x {args.new} new tokens each, one at a time, greedy, best of "
          f"{args.repeats}")
    print("| model | format | file MB | tokens/s | ÷ best transformers fp32 |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))

if __name__ == "__main__":
    main()
