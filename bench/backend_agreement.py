"""Per-sample agreement of `eval` through the transformers and vLLM backends on the demo's teacher, at
temperature 0 (after `make demo` and `make install-vllm`):

    .venv/bin/python bench/backend_agreement.py [--model runs/demo/sft/teacher/model]

Runs `distill eval --config eval/demo.yaml` twice on the held-out problems (once from .venv, once from
.venv-vllm with backend=vllm) and compares, per (problem, budget), the thinking tokens used and whether the
answer is correct; also how many answers are identical text. Goal (issue 9): >= 95% agreement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench-agreement"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/demo/sft/teacher/model")
    args = ap.parse_args()
    models = json.dumps([{"name": "teacher", "role": "teacher", "path": str(ROOT / args.model)}])
    common = ["eval", "--config", "eval/demo.yaml", f"runs_dir={RUNS}", "cascades=[]", f"models={models}", "temperature=0",
              f"problems={ROOT / 'runs/demo/problems/eval.jsonl'}"]
    runs = {"transformers": [sys.executable, "-m", "distill.cli", *common, "run=tf"],
            "vllm": [str(ROOT / ".venv-vllm/bin/distill"), *common, "run=vl", "backend=vllm"]}
    samples = {}
    for name, cmd in runs.items():
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        out = RUNS / ("tf" if name == "transformers" else "vl") / "eval"
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        samples[name] = {(r["problem_id"], r["sample"], r["budget"]): r for r in rows}
        res = json.loads((out / "results.json").read_text())["models"][0]
        print(f"{name}: accuracy by budget {[round(b['accuracy'], 3) for b in res['budgets']]}, "
              f"{res['cost']['tokens_per_s']:,.0f} tokens/s")
    a, b = samples["transformers"], samples["vllm"]
    assert a.keys() == b.keys()
    agree = sum(a[k]["thinking_tokens"] == b[k]["thinking_tokens"] and a[k]["correct"] == b[k]["correct"]
                for k in a)
    same_text = sum(a[k]["answer"] == b[k]["answer"] and a[k]["thinking_tokens"] == b[k]["thinking_tokens"]
                    for k in a)
    print(f"(problem, sample, budget) pairs: {len(a)}; thinking tokens and correctness agree: {agree} "
          f"({agree / len(a):.1%}); identical thinking length and answer text: {same_text} ({same_text / len(a):.1%})")


if __name__ == "__main__":
    main()
