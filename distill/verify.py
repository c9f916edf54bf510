"""Answer grading: split a response at `</think>`, extract the final answer, compare it with the gold.

Pure functions (no I/O) plus a process pool that enforces a per-answer timeout.

Extraction (`extract`), from the text after the last `</think>` only: a response that opened `<think>` and
never closed it is wrong (we never fall back to a number inside the thinking); one without thinking tags is
graded whole. The candidate is the last `\\boxed{}` (nested braces; an unclosed one is ignored), else the
text after the last "The answer is" / "Final answer:", else the whole answer text.

Comparison: answer_type "math" compares the candidate with math-verify, gold wrapped in `$…$`; with no
boxed answer and no cue, math-verify extracts from the whole answer text itself. answer_type "integer"
(GSM8K, AIME, AMC) takes the last number of the candidate ("1,450" -> "1450") and requires both an exact
integer match (gold "27.0" counts as 27) and math-verify's agreement.

math-verify's own timeouts use signal.alarm, which fails outside the main thread, so they are disabled
here; `grade_all` runs grade_one in worker processes and kills any worker that spends more than
`timeout_s` on one answer (that answer counts as wrong). `is_correct` grades in-process, without a
timeout: it is for trusted, short answers; bulk grading of model output goes through `grade_problems`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import signal
import time
from collections import deque
from functools import lru_cache
from multiprocessing.connection import wait

from distill import tasks

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_TYPES = ("math", "integer")
MATCH_TYPES = ("latex", "expr")

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_CUE = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:\*\*)?\s*(?:is\b|:)\s*(?:\*\*)?\s*:?", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]")
_TEXT_WRAP = re.compile(r"\\(?:text\w*|mathrm|mbox)\{([^{}]*)\}")
_NOISE = re.compile(r"\\[$%!,;: ]|\$|\\left|\\right")
# A number token that stands on its own: not part of a word, a LaTeX argument ("\frac{1}{2}"), an
# exponent or subscript, or a fraction "1/2", so "\frac{1}{2}" yields no number rather than "2".
_NUMBER = re.compile(r"(?<![\w.^_/\\{])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w^/{]|\.\d)")
_INTEGER = re.compile(r"([-+]?\d+)(?:\.0*)?")
_INT_LATEX = re.compile(r"\$(-?\d+)\$")  # "$18$": parsed without ANTLR (see _parse)
_SPACING = re.compile(r"\\[,!;: ]|(?<=\\)[dt](?=frac)|(?<![A-Za-z])\s+|\s+(?![A-Za-z])")


# ---------------------------------------------------------------- extraction


def final_answer(response: str) -> str | None:
    """The text after the last `</think>`; None for a response that opened its thinking and never closed it
    (never fall back to a number inside the thinking); the whole text when there are no thinking tags."""
    if THINK_CLOSE in response:
        return response.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in response:
        return None
    return response


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` / `\\fbox{…}` (nested braces; `\\boxed 2` too), None if there is none
    or the last one is never closed (a truncated answer)."""
    found = list(_BOXED.finditer(text))
    if not found:
        return None
    start = found[-1].end()
    rest = text[start:].lstrip()
    if not rest.startswith("{"):
        token = re.match(r"[^\s$]+", rest)
        return token[0] if token else None
    depth = 0
    for k, ch in enumerate(rest):
        if ch in "{}" and k and rest[k - 1] == "\\":
            continue  # \{ and \} are literal braces (sets), not grouping
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:k].strip()
    return None


def cue_answer(text: str) -> str | None:
    """What follows the last "The answer is" / "Final answer:" on its line: its first `$…$` span if it has
    one, else up to the end of the sentence. None without a cue."""
    found = list(_CUE.finditer(text))
    if not found:
        return None
    line = text[found[-1].end():].split("\n", 1)[0]
    span = _MATH_SPAN.search(line)
    if span:
        line = next(g for g in span.groups() if g is not None)
    else:
        line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    return line.strip().strip("*").strip() or None


def last_number(text: str) -> str | None:
    """The last stand-alone number in text, thousands separators dropped ("1,450" -> "1450"), or None."""
    plain = _NOISE.sub("", _TEXT_WRAP.sub(r"\1", text.replace("{,}", ",").replace("\u2212", "-")))
    found = _NUMBER.findall(plain)
    return found[-1].replace(",", "").lstrip("+") if found else None


def integer_value(text: str) -> int | None:
    """The integer a plain literal denotes ("1,450", "27.0", "033"), None for anything else."""
    m = _INTEGER.fullmatch(str(text).strip().replace(",", ""))
    return int(m[1]) if m else None


def extract(answer_text: str, answer_type: str = "math") -> str | None:
    """The candidate final answer of an answer text (already split from the thinking)."""
    boxed = last_boxed(answer_text)
    candidate = boxed if boxed is not None else cue_answer(answer_text)
    if answer_type == "integer":
        return last_number(answer_text if candidate is None else candidate)
    return candidate or None


# ---------------------------------------------------------------- comparison


@lru_cache(maxsize=1)
def _mv():
    """math-verify, imported on first use (it pulls in sympy) and with its timeout warnings silenced: they
    say we must enforce timeouts ourselves, which grade_all does."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import math_verify

    return math_verify


def _parse(text: str, match_types: tuple[str, ...] = MATCH_TYPES) -> tuple:
    """math-verify's parse with its signal timeout off; cached for short texts (golds repeat across samples,
    so do short answers), not for whole answer texts, which rarely repeat and would fill memory."""
    return _parse_short(text, match_types) if len(text) <= 500 else _parse_any(text, match_types)


def _parse_any(text: str, match_types: tuple[str, ...]) -> tuple:
    mv = _mv()
    m = _INT_LATEX.fullmatch(text.strip())
    if m and "latex" in match_types:
        # Plain integers are a large share of answers; ANTLR takes ~2 ms on them and gives this same result.
        import sympy

        return (sympy.Integer(int(m[1])), m[1])
    configs = [mv.LatexExtractionConfig(boxed_match_priority=0)] if "latex" in match_types else []
    configs += [mv.ExprExtractionConfig()] if "expr" in match_types else []
    return tuple(mv.parse(text, configs, parsing_timeout=None))


_parse_short = lru_cache(maxsize=8192)(_parse_any)


def _verify(gold: tuple, pred: tuple, precision: int = 6, strict: bool = True,
            allow_set_relation_comp: bool = False) -> bool:
    if not gold or not pred:
        return False
    return bool(_mv().verify(list(gold), list(pred), float_rounding=precision, strict=strict,
                             allow_set_relation_comp=allow_set_relation_comp, timeout_seconds=None))


def _canonical(latex: str) -> str:
    """LaTeX with its spacing (\\, \\! and blanks, except between letters) and \\dfrac/\\tfrac -> \\frac
    normalised: two strings with the same canonical form denote the same mathematics."""
    return _SPACING.sub("", latex.strip())


def math_equal(gold: str, pred: str, *, match_types: tuple[str, ...] = MATCH_TYPES, precision: int = 6,
               strict: bool = True, allow_set_relation_comp: bool = False) -> bool:
    """The grader's comparison: math-verify parse (LaTeX with boxed first, and/or plain expressions) of both
    strings, then verify. No timeout here: call it through grade_all for untrusted input."""
    if gold.strip() and _canonical(gold) == _canonical(pred):
        return True  # the same LaTeX up to spacing is equal whatever the parser makes of it, and it is free
    match_types = tuple(match_types)
    return _verify(_parse(gold, match_types), _parse(pred, match_types), precision, strict,
                   allow_set_relation_comp)


def _dollars(s: str) -> str:
    s = s.strip()
    return s if len(s) > 1 and s.startswith("$") and s.endswith("$") else f"${s}$"


def grade_one(response: str, gold: str, answer_type: str = "math") -> tuple[bool, str | None]:
    """(correct, extracted answer) of one response against one gold answer."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    text = final_answer(response)
    if text is None:
        return False, None
    if answer_type == "integer":
        want = integer_value(gold)
        if want is None:
            raise ValueError(f"answer_type integer needs an integer gold answer, got {gold!r}")
        got = extract(text, "integer")
        ok = got is not None and integer_value(got) == want and math_equal(f"${want}$", f"${got}$")
        return ok, got
    candidate = extract(text, "math")
    if candidate is not None:
        return math_equal(_dollars(gold), _dollars(candidate)), candidate
    if last_boxed(text) is not None:
        return False, None  # an empty \boxed{} is the model's final answer: no answer
    # no boxed answer and no cue: math-verify finds the answer itself; `extracted` is then its rendering
    parsed = _parse(text)
    extracted = next((p for p in parsed if isinstance(p, str)), None)
    return _verify(_parse(_dollars(gold)), parsed), extracted


def is_correct(problem: dict, answer_text: str | None) -> bool:
    """Grade an answer text (already split from the thinking) in-process: built-in tasks use their own
    checker (any valid answer counts); others compare with problem["answer"] by problem["answer_type"]."""
    if answer_text is None:
        return False
    if problem.get("task") in tasks.FAMILIES:
        return tasks.check(problem, answer_text)
    return grade_one(answer_text, str(problem["answer"]), problem.get("answer_type", "math"))[0]


# ---------------------------------------------------------------- parallel grading under a timeout

STARTUP_S = 120.0  # a worker must import sympy and math-verify; a slow disk or a busy machine is not a hang


def _context():
    """forkserver: workers fork from a clean server that has imported the grader once, so starting one
    (and replacing a killed one) is fast, and nothing of the caller (torch's threads) is inherited."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["distill.verify", "math_verify"])
    return ctx


def _serve(conn) -> None:
    """Worker loop: grade batches of (index, response, gold, answer_type), one result message per answer
    so the parent can time each answer on its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then kills us
    _mv()
    conn.send("ready")
    try:
        while (batch := conn.recv()) is not None:
            for i, response, gold, answer_type in batch:
                try:
                    correct, extracted = grade_one(response, gold, answer_type)
                    conn.send((i, bool(correct), extracted, None))
                except Exception as e:  # noqa: BLE001 - a grading failure is a wrong answer, not a crash
                    conn.send((i, False, None, f"{type(e).__name__}: {e}"[:500]))
    except (EOFError, BrokenPipeError):
        pass  # the parent went away


class _Worker:
    """One grading process and the indices it holds, oldest first; `since` is when its oldest began."""

    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.ready, self.pending, self.since = False, deque(), time.monotonic()

    def send(self, batch: list) -> None:
        if not self.pending and self.ready:
            self.since = time.monotonic()
        self.conn.send(batch)
        self.pending.extend(item[0] for item in batch)

    def deadline(self, timeout_s: float) -> float:
        return self.since + (timeout_s if self.ready else STARTUP_S)

    def drain(self, out: list) -> bool:
        """Collect every result waiting in the pipe; False when the process has died."""
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg == "ready":
                    self.ready = True
                else:
                    out[self.pending.popleft()] = msg[1:]
                self.since = time.monotonic()
        except (EOFError, OSError):
            return False
        return True

    def close(self, kill: bool = False) -> None:
        if not kill and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                kill = True
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _replace(w: _Worker, ctx, out: list, todo: deque, reason: str) -> _Worker:
    """Kill a worker that hung or died: its current answer is wrong, the rest go back in the queue."""
    if not w.ready:
        w.close(kill=True)
        raise RuntimeError(f"a grading process failed to start ({reason}); a script that grades must start "
                           "from an `if __name__ == '__main__':` block (workers import the main module)")
    if w.pending:
        out[w.pending.popleft()] = (False, None, reason)
    todo.extendleft(reversed(w.pending))
    w.close(kill=True)
    return _Worker(ctx)


def grade_all(items, processes: int = 2, timeout_s: float = 5.0) -> list[tuple[bool, str | None, str | None]]:
    """(correct, extracted, error) per (response, gold, answer_type) item, in order, graded by `processes`
    worker processes. An answer that takes longer than timeout_s is wrong with error "timeout ..."; its
    worker is killed and replaced. Safe to call from any thread (no signals in this process). Workers start
    by forkserver, which imports the main module: a script must call this under `if __name__ == "__main__"`."""
    items = [tuple(it) for it in items]
    if processes < 1 or timeout_s <= 0:
        raise ValueError("processes must be >= 1 and timeout_s > 0")
    out: list = [None] * len(items)
    if not items:
        return out
    # Answers to the same gold go out together, so one worker parses that gold (its cache) instead of each.
    ctx, todo = _context(), deque(sorted(range(len(items)), key=lambda i: (items[i][1], items[i][2])))
    workers = [_Worker(ctx) for _ in range(min(processes, len(items)))]
    chunk = max(1, min(16, len(items) // (4 * len(workers))))  # small batches: no idle worker at the end
    finished = False
    try:
        while todo or any(w.pending for w in workers):
            for w in workers:
                # One batch at a time: the worker is then waiting in recv, so a large batch can never
                # block against a worker blocked on sending its results (both pipes full: deadlock).
                if todo and not w.pending:
                    w.send([(i, *items[i]) for i in (todo.popleft() for _ in range(min(chunk, len(todo))))])
            busy = [w for w in workers if w.pending or not w.ready]
            next_deadline = min(w.deadline(timeout_s) for w in busy)
            wait([w.conn for w in busy], max(0.0, next_deadline - time.monotonic()))
            for k, w in enumerate(workers):
                if not w.drain(out):
                    workers[k] = _replace(w, ctx, out, todo, "grader process died")
                elif (w.pending or not w.ready) and time.monotonic() > w.deadline(timeout_s):
                    workers[k] = _replace(w, ctx, out, todo, f"timeout after {timeout_s:g}s")
        finished = True
    finally:
        for w in workers:
            w.close(kill=not finished)  # on Ctrl-C or an error, do not wait for a worker deep in sympy
    return out


def grade_many(items, processes: int = 2, timeout_s: float = 5.0) -> list[tuple[bool, str | None]]:
    """(correct, extracted) per (response, gold, answer_type) item; see grade_all."""
    return [(correct, extracted) for correct, extracted, _ in grade_all(items, processes, timeout_s)]


def grade_problems(items, processes: int = 2, timeout_s: float = 5.0) -> list[tuple[bool, str | None, str | None]]:
    """(correct, extracted, error) per (problem, answer_text) pair, answer_text already split from the thinking
    (None: no answer). Built-in tasks are checked here; the rest go through grade_all, whose timeouts and
    failures come back as wrong with their `error` ("timeout after 5s", "ValueError: ..."), for the callers
    to count."""
    out: list = [None] * len(items)
    todo = []
    for i, (problem, text) in enumerate(items):
        if text is None:
            out[i] = (False, None, None)
        elif problem.get("task") in tasks.FAMILIES:
            value = tasks.extract_int(text)
            out[i] = (tasks.check(problem, text), None if value is None else str(value), None)
        else:
            todo.append(i)
    jobs = [(items[i][1], str(items[i][0]["answer"]), items[i][0].get("answer_type", "math")) for i in todo]
    for i, result in zip(todo, grade_all(jobs, processes, timeout_s), strict=True):
        out[i] = result
    return out


def grading_errors(errors: list[str | None]) -> dict:
    """How many gradings timed out and how many failed otherwise (each counted as a wrong answer)."""
    timeouts = sum(bool(e) and e.startswith("timeout") for e in errors)
    return {"timeouts": timeouts, "errors": sum(bool(e) for e in errors) - timeouts}
