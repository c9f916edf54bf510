"""Would a cascade pay on the demo? Replays an eval's own samples (distill/cascade.py): each cascade's
accuracy and measured cost per correct answer beside every model alone, relative to the best single model
at the largest budget, and the share of problems each stage answered.

    .venv/bin/python bench/cascades.py [runs/demo runs/demo-seed1 ...]   # after make demo (SEED=k)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.cascade import Stage, costs, index, replay  # noqa: E402


def cascades(top: int, low: int) -> dict[str, tuple[list[Stage], str]]:
    s, m, t = "student-s", "student-l", "teacher"
    return {
        "s (2 samples) -> l, on disagreement or a cut thinking":
            ([Stage(s, top, 2), Stage(m, top)], "either"),
        "s -> l, on a cut thinking": ([Stage(s, top), Stage(m, top)], "unclosed"),
        "s (2 samples) -> teacher, on either": ([Stage(s, top, 2), Stage(t, top)], "either"),
        f"l at B={low} -> l at B={top}, on a cut thinking": ([Stage(m, low), Stage(m, top)], "unclosed"),
        f"l at B={low} (2 samples) -> l at B={top}, on either": ([Stage(m, low, 2), Stage(m, top)], "either"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["runs/demo"])
    args = ap.parse_args()
    for run in args.runs:
        res = json.loads((Path(run) / "eval" / "results.json").read_text())
        samples = [json.loads(x) for x in (Path(run) / "eval" / "samples.jsonl").read_text().splitlines()]
        by_key, (spt, price) = index(samples), costs(res)
        problems = sorted({r["problem_id"] for r in samples})
        budgets = res["budgets"]
        top, low = budgets[-1], budgets[len(budgets) // 2]
        singles = {(m["name"], b): replay(by_key, problems, [Stage(m["name"], b)], "either", spt, price)
                   for m in res["models"] for b in budgets}
        best = max(((k, v) for k, v in singles.items() if k[1] == top), key=lambda kv: kv[1]["accuracy"])
        ref = best[1]["cost_per_correct"]
        print(f"\n{run}: {len(problems)} problems, sample 0 of each stage (k samples: the first k); cost per "
              f"correct relative to the best single model at B={top}, {best[0][0]}")
        print("| model or cascade | accuracy | $ per correct ÷ best | answered by each stage |")
        print("|---|---|---|---|")
        for (name, b), v in singles.items():
            if b in (low, top):
                print(f"| {name} at B={b} | {v['accuracy']:.3f} | {v['cost_per_correct'] / ref:.2f} | |")
        for name, (stages, rule) in cascades(top, low).items():
            v = replay(by_key, problems, stages, rule, spt, price)
            print(f"| {name} | {v['accuracy']:.3f} | {v['cost_per_correct'] / ref:.2f} | "
                  f"{' / '.join(f'{a:.2f}' for a in v['answered'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
