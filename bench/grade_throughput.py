"""Answers graded per second on MATH-500-style responses, with 1 and 2 grading processes.

Each of the 500 MATH-500 problems gets three responses, "<think>…</think> The answer is \\boxed{X}" with X:
the gold verbatim (right; the canonical-string fast path, no parsing), the gold reformatted (right; see
`reformat`: math-verify must parse it) and a perturbed gold (wrong: one digit changed, or "+1" appended).
They are shuffled, and each measured call starts fresh workers (empty caches); the time includes starting
them (the forkserver itself is started once first, as in a long-running eval). The last line gives the
in-process CPU cost of each kind, which does not depend on the machine's other load: plain integers and
verbatim answers are nearly free, anything math-verify must parse costs milliseconds (its ANTLR parser).

    .venv/bin/python bench/grade_throughput.py [--data ../shared/data/math500/test.jsonl] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from distill import verify

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"
THINKING = ("<think>\nLet me set up the problem. If 3x + 2 = 11 then x = 3, and 2^5 = 32; check: "
            "\\frac{6}{2} = 3. Wait, re-read the question: the quantity asked for is different. "
            "Recompute carefully, then box it.\n</think>\n\n")


def reformat(gold: str) -> str:
    """Same value, written differently, so that math-verify has to parse it: "x = N" for an integer, "(a)/(b)"
    for a \\frac, else extra spacing (which the grader's canonical-string fast path absorbs)."""
    if re.fullmatch(r"-?\d+", gold):
        return f"x = {gold}"
    out = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", gold)
    return out if out != gold else gold.replace(",", ", ") + "\\,"


def perturb(gold: str, rng: random.Random) -> str:
    """A wrong answer close to the gold: one digit changed, else "+1" appended."""
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if not digits:
        return f"{gold}+1"
    k = rng.choice(digits)
    return gold[:k] + str((int(gold[k]) + rng.randint(1, 9)) % 10) + gold[k + 1:]


def responses(path: Path, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(response, gold, answer_type, kind) for every problem and kind, shuffled."""
    rng = random.Random(seed)
    items = []
    for line in path.open():
        gold = json.loads(line)["answer"]
        variants = (("verbatim", gold), ("reformatted", reformat(gold)), ("wrong", perturb(gold, rng)))
        for kind, answer in variants:
            items.append((f"{THINKING}The answer is $\\boxed{{{answer}}}$.", gold, "math", kind))
    rng.shuffle(items)
    return items


def measure(items, processes: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    results = verify.grade_all([item[:3] for item in items], processes=processes, timeout_s=5.0)
    seconds = time.perf_counter() - start
    return seconds, sum(r[0] for r in results), sum(r[2] is not None for r in results)


def per_kind(items) -> str:
    """In-process answers per CPU-second of each kind, caches emptied first: CPU time hardly depends on what
    else the machine runs, unlike the wall-clock rates above."""
    rates = []
    for kind in ("verbatim", "reformatted", "wrong"):
        verify._parse_short.cache_clear()  # private, but the honest figure needs cold caches
        chosen = [item[:3] for item in items if item[3] == kind]
        cpu = time.process_time()
        for item in chosen:
            verify.grade_one(*item)
        rates.append(f"{kind} {len(chosen) / max(time.process_time() - cpu, 1e-9):.0f}")
    return ", ".join(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeat", type=int, default=1, help="measure each setting this many times (best kept)")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"grade_throughput: {args.data} not found", file=sys.stderr)
        return 2
    items = responses(args.data)
    # start the forkserver (it imports sympy once), as a long-running eval has
    verify.grade_all([item[:3] for item in items[:4]], processes=2)
    print(f"{len(items)} responses (1/3 verbatim gold, 1/3 reformatted gold, 1/3 wrong)")
    print("| processes | seconds | answers/s | correct | timeouts/errors |")
    print("|---|---|---|---|---|")
    for processes in (1, 2):
        seconds, correct, errors = min(measure(items, processes) for _ in range(args.repeat))
        print(f"| {processes} | {seconds:.2f} | {len(items) / seconds:.0f} | {correct} | {errors} |")
    print(f"in-process, 1 core, answers per CPU-second by kind: {per_kind(items)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
