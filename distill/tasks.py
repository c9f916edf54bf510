"""Built-in procedural task families with exactly verifiable answers.

Each family has: `make(rng, level) -> dict` (a problem with its gold answer and the parameters the checker
needs), `solve(problem) -> str` (the reference solver's chain of thought: explicit steps, checks and
backtracking, longer at higher levels) and `check(problem, answer) -> bool` (scores any final answer).

Problems are deterministic by seed. Train and eval splits are disjoint by construction: a problem's
text decides its split (see `split_of`), so no eval problem can ever be drawn into training.
"""

from __future__ import annotations

import hashlib
import random
import re

from distill.artifacts import UserError

ANSWER_TEMPLATE = "The answer is {}."


def _ends(n: int) -> str:
    """A step result and, when it has two digits, its last digit: '15>5' (we work mod 10)."""
    return f"{n}>{n % 10}" if n >= 10 else str(n)


# Terms and constraints carry letter labels that the reasoning repeats ("c5"): a small model finds the
# operand it needs by matching the label (an induction-style lookup it learns quickly) instead of counting.
LOWER, UPPER = "abcdefghij", "ABCDEFGHIJ"


# --- chain: multi-step arithmetic mod 10 ------------------------------------------------------------
def chain_make(rng: random.Random, level: int) -> dict:
    terms = [rng.randint(0, 9) for _ in range(level + 2)]
    text = " ".join(f"{LOWER[i]}{t}" for i, t in enumerate(terms))
    return {"problem": f"sum {text} mod 10", "answer": str(sum(terms) % 10), "meta": {"terms": terms}}


def chain_solve(p: dict) -> str:
    terms = p["meta"]["terms"]
    acc, steps = f"a{terms[0]}", []
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
        steps.append(f"{acc}+{LOWER[i]}{t}={_ends(total + t)}")
        total = (total + t) % 10
        acc = str(total)
    return "\n".join(steps)


def chain_check(p: dict, answer: int) -> bool:
    return answer == sum(p["meta"]["terms"]) % 10


# --- search: find a digit x satisfying every constraint a*x+b = c (mod 10) --------------------------
def search_make(rng: random.Random, level: int) -> dict:
    x = rng.randint(0, 9)
    cons = []
    for _ in range(level):
        a, b = rng.randint(1, 9), rng.randint(0, 9)
        cons.append([a, b, (a * x + b) % 10])
    text = ", ".join(f"{UPPER[i]} {a}x+{b}={c}" for i, (a, b, c) in enumerate(cons))
    # The gold answer is the smallest solution: the checker accepts any x that satisfies all constraints.
    gold = next(v for v in range(10) if all((a * v + b) % 10 == c for a, b, c in cons))
    return {"problem": f"find x: {text} mod 10", "answer": str(gold), "meta": {"constraints": cons}}


def search_solve(p: dict) -> str:
    lines = []
    for v in range(10):
        checks = []
        for i, (a, b, c) in enumerate(p["meta"]["constraints"]):
            r = a * v + b
            ok = r % 10 == c
            checks.append(f"{UPPER[i]} {a}*{v}+{b}={_ends(r)} {'ok' if ok else 'no'}")
            if not ok:
                break  # backtrack: try the next candidate
        lines.append(f"x={v}: " + " ".join(checks))
        if ok:
            break
    return "\n".join(lines)


def search_check(p: dict, answer: int) -> bool:
    return 0 <= answer <= 9 and all((a * answer + b) % 10 == c for a, b, c in p["meta"]["constraints"])


FAMILIES = {
    "chain": (chain_make, chain_solve, chain_check),
    "search": (search_make, search_solve, search_check),
}


def split_of(text: str, eval_fraction: float) -> str:
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < eval_fraction else "train"


def generate(task: str, levels: list[int], n: int, split: str, seed: int, eval_fraction: float) -> list[dict]:
    """`n` distinct problems of `task` in `split`, levels cycled evenly, deterministic by `seed`.
    A level whose distinct problems run out (small levels have few) is skipped from then on."""
    make = FAMILIES[task][0]
    rng = random.Random(f"{task}:{split}:{seed}")
    out, seen, misses, live = [], set(), dict.fromkeys(levels, 0), list(levels)
    turn = 0
    while len(out) < n:
        if not live:
            raise UserError(f"task {task!r}: cannot draw {n} distinct {split} problems at levels {levels} "
                            f"(only {len(out)} exist): lower the count or raise the levels")
        level = live[turn % len(live)]
        p = make(rng, level)
        if p["problem"] in seen or split_of(p["problem"], eval_fraction) != split:
            misses[level] += 1
            if misses[level] > 2000:  # this level is (nearly) exhausted
                live.remove(level)
            continue
        misses[level] = 0
        turn += 1
        seen.add(p["problem"])
        out.append({"id": f"{task}-{split}-{len(out):05d}", "task": task, "level": level, "source": "builtin",
                    **p})
    return out


def reference_solution(p: dict) -> tuple[str, str]:
    """(thinking, answer) written by the task's reference solver."""
    return FAMILIES[p["task"]][1](p), ANSWER_TEMPLATE.format(p["answer"])


_INT = re.compile(r"-?\d+")


def extract_int(answer_text: str) -> int | None:
    """The last integer in the answer text (the text after `</think>`), or None."""
    found = _INT.findall(answer_text)
    return int(found[-1]) if found else None


def check(p: dict, answer_text: str) -> bool:
    """Score a final answer text (already split from the thinking) against a built-in problem."""
    value = extract_int(answer_text)
    return value is not None and FAMILIES[p["task"]][2](p, value)
