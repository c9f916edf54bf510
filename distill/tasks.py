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


# Every line of reasoning has a fixed layout, and everything a line needs is in the lines just above it:
# a value copied from the same column one or two lines up, or from just to its left, plus lookups in the
# mod-10 addition table. The prompt is a worksheet: two lines in that layout with the unknowns as "?", so
# the first line of reasoning is made exactly like every later one. Both families share the layout (a
# counter that counts down, then running sums) so what a tiny model learns on one serves the other.
# Measured here (bench/RESULTS.md), all on a 0.3M-parameter Qwen2 in ~200 steps: with a sentence stating
# the problem before the worksheet, or a counter counting up, or a search checked against a target given
# in the problem, the model learned one family and not the other (or neither); this layout learned both.

# Addends are 1..5: the addition table a tiny model must learn then has 50 entries. With addends up to 9
# (90 entries) the same model learned the table after anywhere from 150 to over 400 steps depending on the
# seed; with 1..5 it had it by step 100 for every seed tried (bench/RESULTS.md).
MAX_ADD = 5


def _run(x: int, adds: list[int]) -> list[int]:
    """The running sum after each addend (mod 10)."""
    out = []
    for a in adds:
        x = (x + a) % 10
        out.append(x)
    return out


def _sums(x: int, adds: list[int]) -> str:
    return f"{x}" + "".join(f"+{a}={r}" for a, r in zip(adds, _run(x, adds)))


# --- chain: multi-step arithmetic, k rounds of "add a, then b" (mod 10) ------------------------------
def chain_make(rng: random.Random, level: int) -> dict:
    """Start at x and do `level` rounds of +a, +b (mod 10). The worksheet "k x+a=?+b=?" counts the rounds
    left; each round starts from the last round's result."""
    if not 1 <= level <= 4:
        raise UserError(f"chain: level must be 1..4, got {level}")
    x, a, b, k = rng.randint(0, 9), rng.randint(1, MAX_ADD), rng.randint(1, MAX_ADD), level
    meta = {"x": x, "adds": [a, b], "rounds": k}
    return {"problem": f"{k} {x}+{a}=?+{b}=?\n{k - 1} ?+{a}=?+{b}=?", "answer": str(_chain_end(meta)),
            "meta": meta}


def _chain_end(m: dict) -> int:
    return _run(m["x"], m["adds"] * m["rounds"])[-1]


def _rounds(x: int, rounds: int, line, step) -> str:
    """One line per round (chain, recall): rounds left, then the round's results written by `line(v)`; the last
    result, `step(v)`, starts the next line."""
    lines = []
    for i in range(rounds):
        lines.append(f"{rounds - i} {line(x)}")
        x = step(x)
    return "\n".join(lines)


def chain_solve(p: dict) -> str:
    m = p["meta"]
    return _rounds(m["x"], m["rounds"], lambda v: _sums(v, m["adds"]), lambda v: _run(v, m["adds"])[-1])


def chain_check(p: dict, answer: int) -> bool:
    return answer == _chain_end(p["meta"])


# --- search: which x in 0..9 makes x + a1 + a2 + a3 (+ a4) = 0 (mod 10)? ------------------------------
def search_make(rng: random.Random, level: int) -> dict:
    """Level 1 has three addends, level 2 four. There is no formula on the worksheet, so the reasoning
    guesses x = 9, 8, 7, ..., works each guess out, checks it ("ok" when the sum is 0), and moves on to
    the next guess when it misses: search with checking and backtracking, longer when the answer is
    smaller and when there are more addends. The target is always 0 so a guess is checked by one digit:
    against a target c given in the problem (r = c?) the teacher learned it far worse (bench/RESULTS.md)."""
    if not 1 <= level <= 2:
        raise UserError(f"search: level must be 1..2, got {level}")
    adds = [rng.randint(1, MAX_ADD) for _ in range(level + 2)]
    layout = "? ?" + "".join(f"+{a}=?" for a in adds) + " ?"
    return {"problem": f"{layout}\n{layout}", "answer": str(-sum(adds) % 10), "meta": {"adds": adds}}


def search_solve(p: dict) -> str:
    """One line per guess v: v, the running sums from v, and the verdict on the last one."""
    lines = []
    for v in range(9, -1, -1):
        ok = _run(v, p["meta"]["adds"])[-1] == 0
        lines.append(f"{v} {_sums(v, p['meta']['adds'])} {'ok' if ok else 'no'}")
        if ok:
            break
    return "\n".join(lines)


def search_check(p: dict, answer: int) -> bool:
    return 0 <= answer <= 9 and _run(answer, p["meta"]["adds"])[-1] == 0


# --- recall: k rounds of two lookups in a fixed table of facts -----------------------------------------
# Chain and search are procedures: once a model has the addition table and the copies it has every problem,
# and the small students learned them all on some seeds and not on others (a student's accuracy was a sum
# of a few on/off outcomes, bench/RESULTS.md). Recall is knowledge: 50 arbitrary facts "x then letter ->
# digit", the same in every run, composed in chain's layout. The teacher and student-l hold all of them after
# their steps; student-s mostly none, so it stays below student-l even on a seed where it learns every
# procedure. With 200 facts (20 letters) no model learned any in the demo's steps.
LETTERS = "abcde"
_FACTS = random.Random("distill-recall-facts")
TABLE = {c: _FACTS.sample(range(10), 10) for c in LETTERS}  # each letter a permutation of 0..9


def _looks(x: int, ops: list[str]) -> list[int]:
    out = []
    for c in ops:
        x = TABLE[c][x]
        out.append(x)
    return out


def _facts(x: int, ops: list[str]) -> str:
    return f"{x}" + "".join(f"{c}={y}" for c, y in zip(ops, _looks(x, ops)))


def recall_make(rng: random.Random, level: int) -> dict:
    """Start at x and do `level` rounds of "look up with c, then with d". Worksheet "k xc=?d=?"."""
    if not 1 <= level <= 3:
        raise UserError(f"recall: level must be 1..3, got {level}")
    x, c, d, k = rng.randint(0, 9), rng.choice(LETTERS), rng.choice(LETTERS), level
    meta = {"x": x, "ops": [c, d], "rounds": k}
    return {"problem": f"{k} {x}{c}=?{d}=?\n{k - 1} ?{c}=?{d}=?", "answer": str(_recall_end(meta)),
            "meta": meta}


def _recall_end(m: dict) -> int:
    return _looks(m["x"], m["ops"] * m["rounds"])[-1]


def recall_solve(p: dict) -> str:
    m = p["meta"]
    return _rounds(m["x"], m["rounds"], lambda v: _facts(v, m["ops"]), lambda v: _looks(v, m["ops"])[-1])


def recall_check(p: dict, answer: int) -> bool:
    return answer == _recall_end(p["meta"])


FAMILIES = {
    "chain": (chain_make, chain_solve, chain_check),
    "search": (search_make, search_solve, search_check),
    "recall": (recall_make, recall_solve, recall_check),
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
