"""Answer checking: split a response at `</think>` and score the final answer against the gold.

Pure functions, no I/O. Built-in procedural tasks use their own checker (any valid answer counts);
other problems compare with math-verify.
"""

from __future__ import annotations

from distill import tasks

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def final_answer(response: str) -> str | None:
    """The text after the last `</think>`; None for a response that opened its thinking and never closed it
    (never fall back to a number inside the thinking); the whole text when there are no thinking tags."""
    if THINK_CLOSE in response:
        return response.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in response:
        return None
    return response


def is_correct(problem: dict, answer_text: str | None) -> bool:
    if answer_text is None:
        return False
    if problem.get("task") in tasks.FAMILIES:
        return tasks.check(problem, answer_text)
    return _math_equal(str(problem["answer"]), answer_text)


def _math_equal(gold: str, answer_text: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(answer_text)))
