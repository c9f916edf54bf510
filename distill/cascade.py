"""Cascades over an eval's own samples: each problem goes to the first (model, budget) stage and on to the
next when what that stage produced fires the escalation rule; the last stage answers whatever it gives.
A stage of k samples answers their majority; its cost is its generated tokens at the model's measured seconds
per token, priced as `eval` prices a model alone (results.json `cost.tokens_per_s`, `price_per_hour`), so
every stage a problem passed through is paid for. Rules, each from the stage's own output:

- `disagree`: the k samples do not all give the same answer (self-consistency; needs k >= 2)
- `unclosed`: a sample's thinking was cut at the budget instead of closed by the model
- `either`: one or the other

A replay of what `eval` generated (every model at every budget, `n` samples each): the same samples, the same
grading. A library for bench/ (and eval); reads results.json and samples.jsonl, writes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

Rule = Literal["disagree", "unclosed", "either"]


@dataclass(frozen=True)
class Stage:
    model: str
    budget: int
    k: int = 1  # samples the stage draws (the first k of eval's n)


def index(samples: list[dict]) -> dict[tuple, list[dict]]:
    """eval's samples.jsonl rows by (model, budget, problem), in sample order."""
    out: dict[tuple, list[dict]] = {}
    for r in sorted(samples, key=lambda r: r["sample"]):
        out.setdefault((r["model"], r["budget"], r["problem_id"]), []).append(r)
    return out


def _answer(rows: list[dict]) -> tuple[bool, bool, bool]:
    """(the majority answer is correct, the samples disagree, a thinking was cut). Ties go to the answer
    seen first; a sample with no answer counts as its own answer."""
    answers = [r.get("extracted") for r in rows]
    top = Counter(answers).most_common(1)[0][0]
    correct = next(r["correct"] for r in rows if r.get("extracted") == top)
    return bool(correct), len(set(answers)) > 1, any(not r["within_budget"] for r in rows)


def fires(rule: Rule, disagree: bool, unclosed: bool) -> bool:
    return {"disagree": disagree, "unclosed": unclosed, "either": disagree or unclosed}[rule]


def replay(by_key: dict, problems: list[str], stages: list[Stage], rule: Rule, s_per_token: dict[str, float],
           price_per_hour: float) -> dict:
    """Accuracy, cost per correct answer and the share of problems each stage answered, over `problems`."""
    answered, correct, seconds = Counter(), 0, 0.0
    for pid in problems:
        for i, st in enumerate(stages):
            rows = by_key[(st.model, st.budget, pid)][:st.k]
            if len(rows) < st.k:
                raise ValueError(f"{st.model} at B={st.budget} has {len(rows)} samples of {pid}, "
                                 f"the stage asks {st.k}")
            seconds += sum(r["thinking_tokens"] + r["answer_tokens"] for r in rows) * s_per_token[st.model]
            ok, disagree, unclosed = _answer(rows)
            if i == len(stages) - 1 or not fires(rule, disagree, unclosed):
                answered[i] += 1
                correct += ok
                break
    dollars = seconds * price_per_hour / 3600
    return {"accuracy": correct / len(problems), "cost_per_correct": dollars / correct if correct else None,
            "answered": [answered[i] / len(problems) for i in range(len(stages))], "problems": len(problems)}


def costs(results: dict) -> tuple[dict[str, float], float]:
    """Seconds per generated token of every model, and the price per hour, as results.json measured them."""
    return ({m["name"]: 1 / m["cost"]["tokens_per_s"] for m in results["models"]},
            results["models"][0]["cost"]["price_per_hour"])
