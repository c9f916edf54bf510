"""`make demo` under several seeds: does every run meet the demo's targets (report.checks), and how much do
the numbers move from seed to seed?

    .venv/bin/python bench/demo_seeds.py [--seeds 0 1 2] [--reuse] [--ablation]

Each seed k runs `make demo SEED=k` (runs/demo for k = 0, runs/demo-seed<k> otherwise: other problems,
initial weights, batches and samples). `--reuse` skips the runs that already have results and only
summarises. Prints, per model, the accuracy at every budget for each seed with the mean and the spread
(max - min), the cost ratio to the teacher, and which targets each seed met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.stages.report import checks  # noqa: E402


def _run(seed: int) -> Path:
    return ROOT / "runs" / ("demo" if seed == 0 else f"demo-seed{seed}")


def results(seed: int) -> dict:
    return json.loads((_run(seed) / "eval" / "results.json").read_text())


def teacher_steps(seed: int) -> str:
    """How the teacher's training ended (its `until:` target met at a step, or not), from its manifest."""
    m = json.loads((_run(seed) / "sft" / "teacher" / "manifest.json").read_text())
    u = m.get("until")
    if not u:
        return f"teacher {m['counts']['steps']} steps (fixed)"
    if u["met_at_step"] is not None:
        return f"teacher met its target at step {u['met_at_step']}"
    return f"teacher missed its target in {u['steps']} steps (kept step {u['kept_step']}: {u['kept_accuracy']:.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reuse", action="store_true", help="summarise existing runs; run only the missing ones")
    ap.add_argument("--ablation", action="store_true", help="also `make ablation-filter` after each seed's demo")
    args = ap.parse_args()
    minutes = {}
    for k in args.seeds:
        run = "demo" if k == 0 else f"demo-seed{k}"
        if args.reuse and (ROOT / "runs" / run / "eval" / "results.json").is_file():
            continue
        started = time.time()
        subprocess.run(["make", "demo", f"SEED={k}"], cwd=ROOT, check=True)
        minutes[k] = (time.time() - started) / 60  # what a user waits for; the ablation is its own target
        if args.ablation:
            subprocess.run(["make", "ablation-filter", f"SEED={k}"], cwd=ROOT, check=True)
    res = {k: results(k) for k in args.seeds}
    names = [m["name"] for m in res[args.seeds[0]]["models"]]
    budgets = res[args.seeds[0]]["budgets"]
    print(f"\naccuracy by budget, seeds {args.seeds}: mean [min, max]")
    print("| model | " + " | ".join(f"B={b}" for b in budgets) + " | tokens/s | $/correct ÷ teacher |")
    print("|---|" + "---|" * (len(budgets) + 2))
    for name in names:
        ms = [next(m for m in res[k]["models"] if m["name"] == name) for k in args.seeds]
        cells = []
        for i in range(len(budgets)):
            a = [m["budgets"][i]["accuracy"] for m in ms]
            cells.append(f"{statistics.mean(a):.2f} [{min(a):.2f}, {max(a):.2f}]")
        tps = [m["cost"]["tokens_per_s"] for m in ms]
        teachers = [next(t for t in res[k]["models"] if t["role"] == "teacher") for k in args.seeds]
        ratio = [m["cost"]["best"]["cost_per_correct"] / t["cost"]["best"]["cost_per_correct"]
                 for m, t in zip(ms, teachers) if m["cost"].get("best") and t["cost"].get("best")]
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(tps):,.0f} | "
              + (f"{statistics.mean(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}]" if ratio else "-") + " |")
    failed = 0
    for k in args.seeds:
        got = checks(res[k])
        missed = [f"{t} ({v})" for t, ok, v in got if not ok]
        failed += bool(missed)
        took = f", {minutes[k]:.1f} min" if k in minutes else ""
        top = " / ".join(f"{m['budgets'][-1]['accuracy']:.3f}" for m in res[k]["models"])
        abl = _run(k) / "ablation-filter" / "eval" / "results.json"
        unfiltered = (f"; unfiltered {json.loads(abl.read_text())['models'][0]['budgets'][-1]['accuracy']:.3f}"
                      if abl.is_file() else "")
        print(f"seed {k}: {len(got) - len(missed)}/{len(got)} targets met{took}; {teacher_steps(k)}; B={budgets[-1]} "
              f"{' / '.join(names)} {top}{unfiltered}" + ("" if not missed else "; missed: " + "; ".join(missed)))
    print(f"\nat B={budgets[-1]}, over {len(args.seeds)} seeds: mean, standard deviation, [min, max]")
    for name in names:
        a = [next(m for m in res[k]["models"] if m["name"] == name)["budgets"][-1]["accuracy"] for k in args.seeds]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        print(f"  {name}: {statistics.mean(a):.3f}, sd {sd:.3f}, [{min(a):.3f}, {max(a):.3f}]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
