"""`distill plan`'s estimate vs the peak memory `distill sft` measures, on CPU, with tiny Qwen2s.

    python bench/plan_memory.py                      # every point below, each in a fresh process; a table
    python bench/plan_memory.py --one S 1024 [VOCAB]   # one point, as JSON (what the table and the test run)

Each point is one real `distill sft` run (TRL's SFTTrainer as sft runs it on CPU: fp32, SDPA, the model's own
loss, torch AdamW, 3 steps of 4 rows of exactly the planned length) whose manifest records both numbers: the
plan's estimate for that run (a `plan:` section, planned for this machine by sft itself; its CPU reserve, 0.05 GB,
is the excess of the smallest point, S at 4 x 256, over the other terms, measured here) and
the peak it measured (resident memory above the level before the weights loaded, sampled every 10 ms).
The last two points differ only in the vocabulary (4k vs 32k, the same small body), so their difference is
the loss head's: the check of the planner's head term against a real TRL step at two vocabulary sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "S": (128, 2, 512, 4, 2, 4096),
    "M": (256, 4, 1024, 8, 2, 8192),
    "L": (384, 6, 1536, 8, 4, 16384),
}
POINTS = [("S", 256, 0), ("S", 1024, 0), ("M", 256, 0), ("M", 1024, 0), ("L", 256, 0), ("L", 1024, 0),
          ("H", 1024, 4096), ("H", 1024, 32768)]
HEAD = (64, 1, 256, 2, 2)  # "H": a small body, so the vocabulary's share shows
BATCH, STEPS = 4, 3


def _shape(size: str, vocab: int) -> dict:
    h, n, i, a, g, v = SIZES.get(size, (*HEAD, vocab))
    return {"hidden_size": h, "num_hidden_layers": n, "intermediate_size": i, "num_attention_heads": a,
            "num_key_value_heads": g, "vocab_size": vocab or v, "tie_word_embeddings": False,
            "max_position_embeddings": 4096}


def measure(size: str, seq: int, vocab: int = 0) -> dict:
    """One `distill sft` in this process; returns what its manifest says."""
    from distill.stages import init, problems, sft, tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        runs = str(Path(tmp) / "runs")
        problems.run(problems.ProblemsConfig(run="m", runs_dir=runs, tasks=["chain"], levels={"chain": [1]},
                                             train_per_task=20,
                                             eval_per_task=2))
        tokenizer.run(tokenizer.TokenizerConfig(run="m", runs_dir=runs))
        model = init.run(init.InitConfig(run="m", runs_dir=runs, name="m", arch=_shape(size, vocab)))
        data = Path(tmp) / "rows.jsonl"
        # rows longer than the planned length, cut to it by max_length: every row exactly `seq` tokens
        row = {"messages": [{"role": "user", "content": "1+1"},
                            {"role": "assistant", "content": "<think>\n" + "1 2 " * seq + "\n</think>\n2"}]}
        data.write_text((json.dumps(row) + "\n") * (BATCH * STEPS))
        out = sft.run(sft.SftConfig(run="m", runs_dir=runs, name="m", model=str(model), data=str(data),
                                    max_length=seq, batch_size=BATCH, optim="adamw_torch", threads=2,
                                    save_steps=1000, logging_steps=1, trl={"max_steps": STEPS},
                                    plan={"arch": str(model), "gpu_memory": 1000}))
        m = json.loads((out / "manifest.json").read_text())
    return {"size": size, "seq": seq, "vocab": _shape(size, vocab)["vocab_size"], "params": m["counts"]["params"],
            "tokens": m["counts"]["tokens_seen"], "measured_gb": m["memory"]["peak_gb"],
            "predicted_gb": m["memory"]["plan_gb"]}


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        vocab = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), vocab)))
        return
    rows = []
    for size, seq, vocab in POINTS:
        out = subprocess.run([sys.executable, __file__, "--one", size, str(seq), str(vocab)], capture_output=True,
                             text=True, check=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["error"] = row["predicted_gb"] / row["measured_gb"] - 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| model | params | tokens/step | predicted MB | measured MB | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} (vocab {r['vocab']}) | {r['params'] / 1e6:.2f}M | {BATCH} x {r['seq']} | "
              f"{r['predicted_gb'] * 1e3:.0f} | {r['measured_gb'] * 1e3:.0f} | {r['error']:+.0%} |")
    a, b = rows[-2], rows[-1]
    print(f"loss head, vocab {a['vocab']} -> {b['vocab']}: predicted +{(b['predicted_gb'] - a['predicted_gb']) * 1e3:.0f}"
          f" MB, measured +{(b['measured_gb'] - a['measured_gb']) * 1e3:.0f} MB")


if __name__ == "__main__":
    main()
