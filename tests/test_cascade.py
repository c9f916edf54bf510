"""Cascades replayed over eval's samples (distill/cascade.py): which stage answers, what it costs, and the
majority of a stage's samples. The rows have eval's samples.jsonl shape, with the fields eval writes."""

import pytest

from distill.cascade import Stage, index, replay


def _row(model, budget, pid, sample, answer, correct, closed=True, tokens=10):
    return {"model": model, "budget": budget, "problem_id": pid, "sample": sample, "extracted": answer,
            "correct": correct, "within_budget": closed, "thinking_tokens": tokens, "answer_tokens": 2}


def test_easy_problems_stop_at_the_first_stage_and_hard_ones_escalate():
    rows = [
        # easy: the small model's two samples agree and close their thinking -> it answers
        _row("s", 64, "easy", 0, "3", True), _row("s", 64, "easy", 1, "3", True),
        # hard: they disagree -> the large model answers
        _row("s", 64, "hard", 0, "1", False), _row("s", 64, "hard", 1, "7", True),
        # cut: they agree but a thinking was cut at the budget -> escalates under `either`, not `disagree`
        _row("s", 64, "cut", 0, "5", False, closed=False), _row("s", 64, "cut", 1, "5", False),
    ]
    rows += [_row("l", 64, pid, 0, "x", True, tokens=100) for pid in ("easy", "hard", "cut")]
    by_key, stages = index(rows), [Stage("s", 64, k=2), Stage("l", 64)]
    spt = {"s": 1.0, "l": 2.0}  # seconds per generated token
    out = replay(by_key, ["easy", "hard", "cut"], stages, "either", spt, price_per_hour=3600.0)
    assert out["answered"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert out["accuracy"] == 1.0  # easy by s, hard and cut by l
    # every stage a problem passed through is paid: 3 x 2 samples x 12 tokens at 1 s, 2 x 102 tokens at 2 s
    assert out["cost_per_correct"] == pytest.approx((6 * 12 * 1.0 + 2 * 102 * 2.0) / 3)

    only_disagree = replay(by_key, ["easy", "hard", "cut"], stages, "disagree", spt, 3600.0)
    assert only_disagree["answered"] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert only_disagree["accuracy"] == pytest.approx(2 / 3)  # the cut one answered wrong by s


def test_a_stage_answers_its_majority_and_refuses_missing_samples():
    rows = [_row("s", 16, "p", 0, "2", False), _row("s", 16, "p", 1, "4", True),
            _row("s", 16, "p", 2, "4", True)]
    out = replay(index(rows), ["p"], [Stage("s", 16, k=3)], "disagree", {"s": 1.0}, 3600.0)
    assert out["accuracy"] == 1.0 and out["answered"] == [1.0]
    with pytest.raises(ValueError, match="has 3 samples of p, the stage asks 4"):
        replay(index(rows), ["p"], [Stage("s", 16, k=4)], "disagree", {"s": 1.0}, 3600.0)
