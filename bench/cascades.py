"""Would a cascade pay on the demo? Replays eval's own samples of finished runs (distill/cascade.py, the code
eval runs for its `cascades:`) for eval/demo.yaml's cascades and a few more: thresholds picked on half the
held-out problems, each cascade's accuracy and measured cost per correct answer on the other half, against
the best single model (the most accurate model at one budget) and the cheapest single model within 0.01 of it.

    .venv/bin/python bench/cascades.py [runs/demo runs/demo-seed1 ...]   # after make demo (SEED=k)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.cascade import evaluate_all  # noqa: E402

MORE = [
    {"name": "s->l (both)", "rule": "both", "stages": [{"model": "student-s", "budget": 256, "k": 2},
                                                       {"model": "student-l", "budget": 256}]},
    {"name": "s->teacher (both)", "rule": "both", "stages": [{"model": "student-s", "budget": 256, "k": 2},
                                                             {"model": "teacher", "budget": 256}]},
    {"name": "s->l (all)", "rule": "all", "stages": [{"model": "student-s", "budget": 256, "k": 2},
                                                     {"model": "student-l", "budget": 256}]},
    {"name": "s->teacher (all)", "rule": "all", "stages": [{"model": "student-s", "budget": 256, "k": 2},
                                                           {"model": "teacher", "budget": 256}]},
    {"name": "l@64->l@256 (all)", "rule": "all", "stages": [{"model": "student-l", "budget": 64},
                                                            {"model": "student-l", "budget": 256}]},
    {"name": "s->l (1 sample)", "stages": [{"model": "student-s", "budget": 256}, {"model": "student-l", "budget": 256}]},
    {"name": "l x2 -> teacher", "stages": [{"model": "student-l", "budget": 256, "k": 2},
                                           {"model": "teacher", "budget": 256}]},
    {"name": "l@64 x2 -> l@256", "stages": [{"model": "student-l", "budget": 64, "k": 2},
                                            {"model": "student-l", "budget": 256}]},
    {"name": "s@64 x2 -> l@128 -> l@256", "stages": [{"model": "student-s", "budget": 64, "k": 2},
                                                    {"model": "student-l", "budget": 128},
                                                    {"model": "student-l", "budget": 256}]},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["runs/demo"])
    args = ap.parse_args()
    specs = yaml.safe_load((ROOT / "eval" / "demo.yaml").read_text())["eval"]["cascades"] + MORE
    for run in args.runs:
        res = json.loads((Path(run) / "eval" / "results.json").read_text())
        samples = [json.loads(x) for x in (Path(run) / "eval" / "samples.jsonl").read_text().splitlines()]
        out = evaluate_all(specs, res, samples)
        c0, cheap = out["cascades"][0], out["cheapest_single"]
        best = c0["best_single"]
        print(f"\n{run}: thresholds on {c0['calibration_problems']} problems, reported on {c0['test_problems']}; "
              f"best single {best['model']}@{best['budget']} {best['accuracy']:.3f}; cheapest within 0.01: "
              f"{cheap['model']}@{cheap['budget']} {cheap['accuracy']:.3f} at "
              f"{cheap['cost_per_correct'] / best['cost_per_correct']:.2f} of its cost")
        print("| cascade | thresholds | accuracy | Δ vs best | $ per correct ÷ best | answered by each stage |")
        print("|---|---|---|---|---|---|")
        for c in out["cascades"]:
            print(f"| {c['name']} | {c['thresholds']} | {c['test']['accuracy']:.3f} | {c['accuracy_gap']:+.3f} | "
                  f"{'-' if c['relative_cost'] is None else format(c['relative_cost'], '.2f')} | "
                  f"{' / '.join(f'{a:.2f}' for a in c['test']['answered'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
