"""Cascades replayed over eval's samples (distill/cascade.py): which stage answers, what it costs, the majority
of a stage's samples, and thresholds picked on a calibration split. The rows have eval's samples.jsonl shape,
with the fields eval writes."""

import pytest

from distill.cascade import Stage, escalates, evaluate_all, index, replay, split

EITHER = {"min_agreement": 1.0, "max_thinking": 64}  # disagreement, or a thinking the budget (64) cut
DISAGREE = {"min_agreement": 1.0}


def _row(model, budget, pid, sample, answer, correct, closed=True, tokens=10, task="chain", level=1):
    return {"model": model, "budget": budget, "problem_id": pid, "sample": sample, "extracted": answer,
            "correct": correct, "within_budget": closed, "thinking_tokens": tokens, "answer_tokens": 2,
            "task": task, "level": level}


def test_easy_problems_stop_at_the_first_stage_and_hard_ones_escalate():
    rows = [
        # easy: the small model's two samples agree and close their thinking -> it answers
        _row("s", 64, "easy", 0, "3", True), _row("s", 64, "easy", 1, "3", True),
        # hard: they disagree -> the large model answers
        _row("s", 64, "hard", 0, "1", False), _row("s", 64, "hard", 1, "7", True),
        # cut: they agree but a thinking was cut at the budget -> escalates on the thinking, not on agreement
        _row("s", 64, "cut", 0, "5", False, closed=False, tokens=64), _row("s", 64, "cut", 1, "5", False),
    ]
    rows += [_row("l", 64, pid, 0, "x", True, tokens=100) for pid in ("easy", "hard", "cut")]
    by_key, stages = index(rows), [Stage("s", 64, k=2), Stage("l", 64)]
    spt = {"s": 1.0, "l": 2.0}  # seconds per generated token
    out = replay(by_key, ["easy", "hard", "cut"], stages, [EITHER, {}], spt, price_per_hour=3600.0)
    assert out["answered"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert out["accuracy"] == 1.0  # easy by s, hard and cut by l
    # every stage a problem passed through is paid: 2 x 12 + 2 x 12 + (66 + 12) tokens at 1 s, 2 x 102 at 2 s
    assert out["cost_per_correct"] == pytest.approx((4 * 12 + 66 + 12 + 2 * 102 * 2.0) / 3)

    only_disagree = replay(by_key, ["easy", "hard", "cut"], stages, [DISAGREE, {}], spt, 3600.0)
    assert only_disagree["answered"] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert only_disagree["accuracy"] == pytest.approx(2 / 3)  # the cut one answered wrong by s
    never = replay(by_key, ["easy", "hard", "cut"], stages, [{}, {}], spt, 3600.0)
    assert never["answered"] == [1.0, 0.0]


def test_the_rule_counts_a_cut_thinking_as_over_its_budget():
    assert not escalates(["1"], [64], [False], 64, max_thinking=64)  # closed at exactly the budget
    assert escalates(["1"], [64], [True], 64, max_thinking=64)  # cut there
    assert escalates(["1"], [40], [False], 64, max_thinking=32)
    assert not escalates(["1", "1", "2"], [1, 1, 1], [False] * 3, 64, min_agreement=0.6)  # 2/3 agree
    assert escalates(["1", "1", "2"], [1, 1, 1], [False] * 3, 64, min_agreement=0.7)


def test_a_stage_answers_its_majority_and_refuses_missing_samples():
    rows = [_row("s", 16, "p", 0, "2", False), _row("s", 16, "p", 1, "4", True),
            _row("s", 16, "p", 2, "4", True)]
    out = replay(index(rows), ["p"], [Stage("s", 16, k=3)], [{}], {"s": 1.0}, 3600.0)
    assert out["accuracy"] == 1.0 and out["answered"] == [1.0]
    with pytest.raises(ValueError, match="has 3 samples of p, the stage asks 4"):
        replay(index(rows), ["p"], [Stage("s", 16, k=4)], [{}], {"s": 1.0}, 3600.0)


def test_thresholds_are_picked_on_calibration_problems_and_reported_on_the_others():
    """Level-1 problems: the small model is right in 5 thinking tokens. Level-2: it thinks 40 tokens and is
    wrong; the large model is right on everything at 10x the price per token. The cheapest setting that
    keeps the large model's accuracy escalates exactly the long thinkings."""
    rows = []
    for i in range(20):
        level = 1 + i % 2
        pid = f"p{i}"
        rows += [_row("s", 64, pid, 0, "1", level == 1, tokens=5 if level == 1 else 40, level=level),
                 _row("l", 64, pid, 0, "1", True, tokens=30, level=level)]
    results = {"budgets": [64], "models": [
        {"name": "s", "cost": {"tokens_per_s": 10.0, "price_per_hour": 3600.0}},
        {"name": "l", "cost": {"tokens_per_s": 1.0, "price_per_hour": 3600.0}}]}
    cal, test = split(rows, 0.5)
    assert len(cal) == len(test) == 10 and not set(cal) & set(test)
    assert sum(int(p[1:]) % 2 for p in cal) == 5  # stratified: half of each level
    assert split(rows, 0.5) == (cal, test)  # the same split every time
    spec = {"name": "s->l", "stages": [{"model": "s", "budget": 64}, {"model": "l", "budget": 64}],
            "rule": "thinking"}
    out = evaluate_all([spec], results, rows, share=0.5)
    [c] = out["cascades"]
    assert 5 <= c["thresholds"][0]["max_thinking"] < 40 and c["thresholds"][0]["min_agreement"] == 0.0
    assert c["test"]["accuracy"] == 1.0 and c["test"]["answered"] == [0.5, 0.5]
    assert c["best_single"]["model"] == "l" and c["accuracy_gap"] == 0.0
    # s costs 0.7 s per problem answered alone (7 tokens), 4.2 s before escalating (42); l 32 s
    assert c["relative_cost"] == pytest.approx((5 * 0.7 + 5 * (4.2 + 32)) / (10 * 32))
    assert {s["model"] for s in out["singles"]} == {"s", "l"} and out["cheapest_single"]["model"] == "l"
    assert c["frontier"][0]["accuracy"] <= c["frontier"][-1]["accuracy"]


def test_a_low_answer_log_probability_escalates_and_is_calibrated():
    assert escalates(["1"], [5], [False], 64, logprobs=[-2.0], min_logprob=-1.0)
    assert not escalates(["1", "1"], [5, 5], [False, False], 64, logprobs=[-0.1, -0.5], min_logprob=-1.0)
    assert escalates(["1", "1"], [5, 5], [False, False], 64, logprobs=[-0.1, None], min_logprob=-1.0)  # no signal
    # the small model is sure (log-prob near 0) where it is right, unsure where it is wrong: rule logprob finds it
    rows = []
    for i in range(40):
        right = i % 4 != 0
        rows.append(_row("s", 64, f"p{i}", 0, "1" if right else "2", right, level=i % 2) |
                    {"answer_logprob": -0.05 if right else -2.5})
        rows.append(_row("l", 64, f"p{i}", 0, "1", True, tokens=100, level=i % 2) | {"answer_logprob": -0.01})
    res = {"budgets": [64], "models": [{"name": n, "cost": {"tokens_per_s": t, "price_per_hour": 1.0}}
                                       for n, t in (("s", 10.0), ("l", 1.0))]}
    spec = {"name": "s->l", "stages": [{"model": "s", "budget": 64}, {"model": "l", "budget": 64}], "rule": "logprob"}
    c = evaluate_all([spec], res, rows)["cascades"][0]
    assert c["test"]["accuracy"] == 1.0 and c["test"]["answered"][0] == pytest.approx(0.75, abs=0.1)
    assert -2.5 < c["thresholds"][0]["min_logprob"] <= -0.05 and c["relative_cost"] < 0.7
    with pytest.raises(ValueError, match="no answer log-probabilities"):
        evaluate_all([spec], res, [r | {"answer_logprob": None} for r in rows])
