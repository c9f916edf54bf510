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

# Short, and the same cue eval's budget forcing appends: the answer sits a few tokens after the thinking's
# last line, which ends with that answer. A sentence ("The answer is 7.") puts it further away, and a tiny
# model then learned a shortcut (copy x from the prompt) instead: answer-token accuracy stalled near 0.8.
ANSWER_TEMPLATE = "Final answer: {}"


# Every line of reasoning has a fixed layout and is computed from the line above it: what a line needs is
# copied from the same column one line up, plus one small local computation. Tiny transformers learn that
# in a few hundred steps; layouts where the model must fetch "the k-th operand" from the prompt far behind,
# or a tape that shifts left on every line, had not been learned after 1,000+ steps here.
BLOCKS = 2  # search: constraint blocks per line (levels 1-2 are 1-2 constraints)


# --- chain: multi-step arithmetic, iterate x -> a*x+b (mod 10) ----------------------------------------
def chain_make(rng: random.Random, level: int) -> dict:
    if not 1 <= level <= 4:
        raise UserError(f"chain: level must be 1..4, got {level}")
    a, b, x, steps = rng.randint(1, 9), rng.randint(0, 9), rng.randint(0, 9), 2 * level
    # The prompt ends with the first line of the layout, its result unknown ("?"): the reasoning copies it.
    text = f"iterate x -> {a}x+{b} (mod 10): {steps} {a}*{x}=?+{b}=?"
    return {"problem": text, "answer": str(_iterate(a, b, x, steps)),
            "meta": {"a": a, "b": b, "x": x, "steps": steps}}


def _iterate(a: int, b: int, x: int, steps: int) -> int:
    for _ in range(steps):
        x = (a * x + b) % 10
    return x


def chain_solve(p: dict) -> str:
    """One line per step: steps left, a*x (mod 10), + b (mod 10); the result is the next line's x."""
    m, lines, x = p["meta"], [], p["meta"]["x"]
    for left in range(m["steps"], 0, -1):
        r = (m["a"] * x + m["b"]) % 10
        lines.append(f"{left} {m['a']}*{x}={m['a'] * x % 10}+{m['b']}={r}")
        x = r
    return "\n".join(lines)


def chain_check(p: dict, answer: int) -> bool:
    m = p["meta"]
    return answer == _iterate(m["a"], m["b"], m["x"], m["steps"])


# --- search: find a digit x satisfying every constraint a*x+b = c (mod 10) --------------------------
def _satisfies(cons: list, v: int) -> bool:
    return all((a * v + b) % 10 == c for a, b, c in cons)


def _padded(cons: list) -> list:
    """Empty blocks first, then the constraints, so every level has the same line width and the last block
    before the verdict is always a real constraint."""
    return [[None] * 3] * (BLOCKS - len(cons)) + cons


def _block(a, b, c, v=None) -> str:
    """One constraint checked at x = v: "a*v=p+b=r-c=d", d = r - c (mod 10), so d = 0 means it holds.
    v=None gives the prompt's layout. A difference is one more small table like the product and the sum;
    the earlier "r/c ok|no" needed an equality test, which a tiny model had only learned to 0.8."""
    if a is None:
        return "_" * 13  # no constraint
    if v is None:
        return f"{a}*?=?+{b}=?-{c}=?"
    r = (a * v + b) % 10
    return f"{a}*{v}={a * v % 10}+{b}={r}-{c}={(r - c) % 10}"


def search_make(rng: random.Random, level: int) -> dict:
    if not 1 <= level <= BLOCKS:
        raise UserError(f"search: level must be 1..{BLOCKS}, got {level}")
    x = rng.randint(0, 9)
    cons = []
    for _ in range(level):
        a, b = rng.randint(1, 9), rng.randint(0, 9)
        cons.append([a, b, (a * x + b) % 10])
    text = " ".join(_block(a, b, c) for a, b, c in _padded(cons))
    # The gold answer is the smallest solution: the checker accepts any x that satisfies all constraints.
    gold = next(v for v in range(10) if _satisfies(cons, v))
    # As in chain, the prompt ends with the layout of a reasoning line, x unknown ("?").
    return {"problem": f"find x (mod 10): ?: {text} ? ?", "answer": str(gold),
            "meta": {"constraints": cons}}


def search_solve(p: dict) -> str:
    """One line per candidate x = 0, 1, ...: every constraint checked (a*x+b=result-target=difference), then
    the verdict ("so x" when every difference is 0, else "not x"); a failed candidate is abandoned for the next one. Each
    line ends with its candidate, so the answer is right after the last line."""
    cons = p["meta"]["constraints"]
    lines = []
    for v in range(10):
        ok = _satisfies(cons, v)
        blocks = " ".join(_block(a, b, c, v) for a, b, c in _padded(cons))
        lines.append(f"{v}: {blocks} {'so' if ok else 'not'} {v}")
        if ok:
            break
    return "\n".join(lines)


def search_check(p: dict, answer: int) -> bool:
    return 0 <= answer <= 9 and _satisfies(p["meta"]["constraints"], answer)


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
