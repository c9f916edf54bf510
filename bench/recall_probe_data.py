"""Probe data for the size ladder (bench/RESULTS.md, "Issue 25 probe (2)"): a run folder that
bench/student_seeds.py trains students on (`--run hop` or `--run skew`), built from one run's reference-solver
traces (runs/<from>/filter/solver/) and held-out problems, with recall changed:

    .venv/bin/python bench/recall_probe_data.py hop  [--from demo]   # recall's two lookups written as one:
                                                                     # "2 8d=1a=4" -> "2 8da=4"
    .venv/bin/python bench/recall_probe_data.py skew [--from demo]   # 300 recall problems whose letters are drawn
                                                                     # at spread frequencies (eval: 100, the same)

Writes runs/<kind>/{filter/teacher/train.jsonl, problems/eval.jsonl} and links the run's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill import tasks  # noqa: E402
from distill.reward import assistant_text  # noqa: E402

WEIGHTS = (0.40, 0.25, 0.17, 0.11, 0.07)
LINE = re.compile(r"^(\d+) (\d)([a-z])=(\d)([a-z])=(\d)$")


def _skewed(split: str, n: int) -> list[dict]:
    rng, seen, rows = random.Random(f"skew:{split}:0"), set(), []
    while len(rows) < n:
        level = (1, 2, 3)[len(rows) % 3]
        x = rng.randint(0, 9)
        c, d = rng.choices(tasks.LETTERS, WEIGHTS, k=2)
        meta = {"x": x, "ops": [c, d], "rounds": level}
        text = f"{level} {x}{c}=?{d}=?\n{level - 1} ?{c}=?{d}=?"
        if text in seen or tasks.split_of(text, 0.2) != split:
            continue
        seen.add(text)
        rows.append({"id": f"recall-{split}-{len(rows):05d}", "task": "recall", "level": level, "source": "builtin",
                     "problem": text, "answer": str(tasks._recall_end(meta)), "meta": meta})
    return rows


def _chat(p: dict) -> str:
    """A training row as `filter` writes it."""
    return json.dumps({"messages": [{"role": "user", "content": p["problem"]},
                                    {"role": "assistant", "content": assistant_text(*tasks.reference_solution(p))}]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["hop", "skew"])
    ap.add_argument("--from", dest="src", default="demo", help="the run whose solver traces and problems are used")
    args = ap.parse_args()
    src, out = ROOT / "runs" / args.src, ROOT / "runs" / args.kind
    (out / "filter" / "teacher").mkdir(parents=True, exist_ok=True)
    (out / "problems").mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer").exists():
        (out / "tokenizer").symlink_to(src / "tokenizer")
    rows = [json.loads(x) for x in (src / "filter" / "solver" / "train.jsonl").read_text().splitlines()]
    recall = re.compile(rf"^\d+ \d[{tasks.LETTERS}]=\?")
    train = []
    for r in rows:
        is_recall = bool(recall.match(r["messages"][0]["content"]))
        if args.kind == "hop" and is_recall:
            lines = r["messages"][1]["content"].split("\n")
            r["messages"][1]["content"] = "\n".join(
                LINE.sub(lambda m: f"{m[1]} {m[2]}{m[3]}{m[5]}={m[6]}", line) for line in lines)
        if args.kind == "hop" or not is_recall:
            train.append(json.dumps(r))
    evals = [x for x in (src / "problems" / "eval.jsonl").read_text().splitlines()
             if args.kind == "hop" or json.loads(x)["task"] != "recall"]
    if args.kind == "skew":
        train += [_chat(p) for p in _skewed("train", 300)]
        evals += [json.dumps(p) for p in _skewed("eval", 100)]
    (out / "filter" / "teacher" / "train.jsonl").write_text("".join(x + "\n" for x in train))
    (out / "problems" / "eval.jsonl").write_text("".join(x + "\n" for x in evals))
    print(f"{out}: {len(train)} training rows, {len(evals)} held-out problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
