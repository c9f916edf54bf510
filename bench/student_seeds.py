"""How much of a student's spread is its own seed? One run's data (its teacher's filtered traces and held-out
problems) fixed, the student trained from several init-and-order seeds and evaluated at one budget: accuracy
and recall per seed, so the data's share of the demo's spread (bench/demo_seeds.py moves both) is what is left.

    .venv/bin/python bench/student_seeds.py [--run demo] [--student students/demo-s.yaml] [--seeds 0 1 2 3 4]
        [--budget 256] [--init arch='{...}'] [override=value ...]   # e.g. lr=6e-3: the same seeds with another setting

Outputs under runs/student-seeds/<tag>/s<k>/ (tag: the student's name and the overrides); prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTILL = str(ROOT / ".venv" / "bin" / "distill")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="demo")
    ap.add_argument("--student", default="students/demo-s.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--init", action="append", default=[], help="init settings for every seed (key=value), e.g. arch='{...}'")
    ap.add_argument("overrides", nargs="*", help="sft settings for every seed (key=value)")
    args = ap.parse_args()
    name = Path(args.student).stem.replace("demo-", "student-")
    other = [args.run] if args.run != "demo" else []  # another run's data: its own folder
    tag = re.sub(r"[^\w.=-]", "_", "_".join([name, *other, *args.init, *args.overrides]))[:120]
    runs, data = ROOT / "runs" / "student-seeds" / tag, ROOT / "runs" / args.run
    rows = []
    for k in args.seeds:
        run = f"s{k}"
        common = ["--config", args.student, f"runs_dir={runs}", f"run={run}", f"seed={k}"]
        subprocess.run([DISTILL, "init", *common, f"tokenizer={data}/tokenizer", *args.init], check=True, cwd=ROOT,
                       capture_output=True)
        subprocess.run([DISTILL, "sft", *common, f"model={runs}/{run}/init/{name}",
                        f"data={data}/filter/teacher/train.jsonl", *args.overrides], check=True, cwd=ROOT,
                       capture_output=True)
        models = [{"name": name, "role": "student", "path": f"{runs}/{run}/sft/{name}/model"}]
        subprocess.run([DISTILL, "eval", "--config", "eval/demo.yaml", f"runs_dir={runs}", f"run={run}",
                        f"seed={k}", f"problems={data}/problems/eval.jsonl", f"budgets=[{args.budget}]",
                        "cascades=[]", f"models={json.dumps(models)}"], check=True, cwd=ROOT, capture_output=True)
        samples = [json.loads(x) for x in (runs / run / "eval" / "samples.jsonl").read_text().splitlines()]
        acc = {t: statistics.mean(r["correct"] for r in samples if r["task"] == t)
               for t in sorted({r["task"] for r in samples})}
        rows.append((k, statistics.mean(r["correct"] for r in samples), acc))
        print(f"seed {k}: {rows[-1][1]:.3f} " + " ".join(f"{t} {a:.2f}" for t, a in acc.items()), flush=True)
    a = [r[1] for r in rows]
    print(f"{name} {' '.join(args.overrides)} on {args.run}'s data, B={args.budget}, seeds {args.seeds}: mean "
          f"{statistics.mean(a):.3f}, sd {statistics.stdev(a) if len(a) > 1 else 0:.3f}, [{min(a):.3f}, {max(a):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
