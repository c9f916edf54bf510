"""Cascades: each problem goes to the first (model, budget, k samples) stage and on to the next when what
that stage produced fires its escalation rule; the last stage answers whatever it gives. A stage of k
samples answers their majority (ties: the answer seen first; no answer counts as its own answer).

A stage escalates when (each signal from the stage's own output, thresholds per stage):
- `min_agreement`: the majority answer's share of the k samples is below it (self-consistency; 0: never)
- `max_thinking`: the longest thinking is over it, in tokens; a thinking the budget cut counts as budget + 1,
  so max_thinking = budget escalates exactly the cut ones (None: never)
- `min_logprob`: the least sure sample's answer has a mean token log-probability under it (the model's own
  distribution, before temperature; eval's `answer_logprob`: the transformers and vllm backends give it)
`rule` picks which signals the thresholds are calibrated on: agreement, thinking, logprob, both (agreement and
thinking: the default), all.

`escalates()` is the rule, used by `eval` (replaying its own samples: every model at every budget was
generated, so a cascade's stages are exactly what a live cascade would produce) and by `distill serve`'s
`reasoning_effort: auto` (running it). Each stage is paid at its model's measured seconds per generated token
(results.json `cost.tokens_per_s`, `price_per_hour`), every stage a problem passed through counted.

Thresholds are picked on a calibration split of the held-out problems (stratified by task and level) and
reported on the rest: the cheapest setting whose calibration accuracy is within `tolerance` of the best
single model (the most accurate model at one budget, ties the cheaper), else the most accurate one.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    model: str
    budget: int
    k: int = 1  # samples the stage draws (in a replay: the first k of eval's n)


def majority(answers: list) -> tuple[int, float]:
    """The index of the first sample giving the most common answer, and that answer's share."""
    top, count = Counter(answers).most_common(1)[0]
    return answers.index(top), count / len(answers)


def longest(thinking: list[int], cut: list[bool], budget: int) -> int:
    """The longest thinking of a stage's samples, a thinking the budget cut counted as budget + 1."""
    return max(budget + 1 if c else t for t, c in zip(thinking, cut))


def least_sure(logprobs: list[float | None]) -> float:
    """The lowest mean answer log-probability of a stage's samples (a sample without one: -inf)."""
    return min(float("-inf") if lp is None else lp for lp in logprobs)


def escalates(answers: list, thinking: list[int], cut: list[bool], budget: int, min_agreement: float = 0.0,
              max_thinking: int | None = None, logprobs: list[float | None] | None = None,
              min_logprob: float | None = None) -> bool:
    """The rule: the k samples of one stage (their extracted answers, thinking lengths, whether the budget
    cut each thinking, their answers' mean token log-probabilities) send the problem on to the next stage."""
    if majority(answers)[1] < min_agreement:
        return True
    if min_logprob is not None and least_sure(logprobs or [None]) < min_logprob:
        return True
    return max_thinking is not None and longest(thinking, cut, budget) > max_thinking


def index(samples: list[dict]) -> dict[tuple, list[dict]]:
    """eval's samples.jsonl rows by (model, budget, problem), in sample order."""
    out: dict[tuple, list[dict]] = {}
    for r in sorted(samples, key=lambda r: r["sample"]):
        out.setdefault((r["model"], r["budget"], r["problem_id"]), []).append(r)
    return out


def replay(by_key: dict, problems: list[str], stages: list[Stage], thresholds: list[dict],
           s_per_token: dict[str, float], price_per_hour: float) -> dict:
    """Accuracy, cost per correct answer and the share of problems each stage answered, over `problems`.
    thresholds[i]: stage i's {min_agreement, max_thinking[, min_logprob]} (the last stage's are not used)."""
    answered, correct, seconds = Counter(), 0, 0.0
    for pid in problems:
        for i, st in enumerate(stages):
            rows = by_key[(st.model, st.budget, pid)][:st.k]
            if len(rows) < st.k:
                raise ValueError(f"{st.model} at B={st.budget} has {len(rows)} samples of {pid}, "
                                 f"the stage asks {st.k}")
            seconds += sum(r["thinking_tokens"] + r["answer_tokens"] for r in rows) * s_per_token[st.model]
            answers = [r.get("extracted") for r in rows]
            if i == len(stages) - 1 or not escalates(
                    answers, [r["thinking_tokens"] for r in rows], [not r["within_budget"] for r in rows],
                    st.budget, logprobs=[r.get("answer_logprob") for r in rows], **thresholds[i]):
                answered[i] += 1
                correct += bool(rows[majority(answers)[0]]["correct"])
                break
    dollars = seconds * price_per_hour / 3600
    return {"accuracy": correct / len(problems), "cost_per_correct": dollars / correct if correct else None,
            "answered": [answered[i] / len(problems) for i in range(len(stages))], "problems": len(problems)}


def costs(results: dict) -> tuple[dict[str, float], float]:
    """Seconds per generated token of every model, and the price per hour, as results.json measured them."""
    return ({m["name"]: 1 / m["cost"]["tokens_per_s"] for m in results["models"]},
            results["models"][0]["cost"]["price_per_hour"])


def split(samples: list[dict], share: float) -> tuple[list[str], list[str]]:
    """(calibration, test) problem ids: within each task and level, problems ordered by a hash of their id,
    the first `share` of them to calibration. The same split on every machine."""
    groups: dict[tuple, set] = {}
    for r in samples:
        groups.setdefault((str(r.get("task")), str(r.get("level"))), set()).add(r["problem_id"])
    cal, test = [], []
    for key in sorted(groups):
        ids = sorted(groups[key], key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())
        cut = round(len(ids) * share)
        cal += ids[:cut]
        test += ids[cut:]
    return sorted(cal), sorted(test)


def _candidates(by_key: dict, problems: list[str], st: Stage, rule: str) -> list[dict]:
    """Every threshold setting worth trying for one stage: agreement levels its k samples can take, the
    thinking lengths it produced on the calibration problems (deciles, the budget, never) and, for the
    logprob rule, its answers' least mean log-probabilities there (deciles, never)."""
    agree = [0.0] + [j / st.k for j in range(2, st.k + 1)] if rule in ("agreement", "both", "all") else [0.0]
    stage_rows = [by_key[(st.model, st.budget, p)][:st.k] for p in problems]
    lengths = sorted(longest([r["thinking_tokens"] for r in rows], [not r["within_budget"] for r in rows], st.budget)
                     for rows in stage_rows)
    think: list[int | None] = [None]
    if rule in ("thinking", "both", "all"):
        think += sorted({min(lengths[int(q * (len(lengths) - 1) / 10)], st.budget) for q in range(10)}
                        | {st.budget})
    sure: list[float | None] = [None]
    if rule in ("logprob", "all"):
        if any(r.get("answer_logprob") is None for rows in stage_rows for r in rows):
            raise ValueError(f"rule {rule}: {st.model}'s samples have no answer log-probabilities (its backend "
                             "gives none: transformers and vllm do)")
        least = sorted(least_sure([r["answer_logprob"] for r in rows]) for rows in stage_rows)
        sure += sorted({least[int(q * (len(least) - 1) / 10)] for q in range(1, 10)})
    return [{"min_agreement": a, "max_thinking": t} | ({"min_logprob": lp} if lp is not None else {})
            for a in agree for t in think for lp in sure]


def _pareto(points: list[tuple[dict, list]]) -> list[tuple[dict, list]]:
    """The settings no other beats on both accuracy and cost (calibration numbers), cheapest first."""
    ranked = sorted(points, key=lambda p: (p[0]["cost_per_correct"] or float("inf"), -p[0]["accuracy"]))
    out, best = [], -1.0
    for p in ranked:
        if p[0]["accuracy"] > best:
            out.append(p)
            best = p[0]["accuracy"]
    return out


def _best_single(by_key: dict, problems: list[str], results: dict, spt: dict, price: float) -> dict:
    """The most accurate model alone at one budget over `problems`, any budget (ties: the cheaper): past a
    model's plateau a larger budget adds cost, not accuracy, and must not flatter the cascades."""
    runs = {(m["name"], b): replay(by_key, problems, [Stage(m["name"], b)], [{}], spt, price)
            for m in results["models"] for b in results["budgets"]}
    key = max(runs, key=lambda k: (runs[k]["accuracy"], -(runs[k]["cost_per_correct"] or float("inf"))))
    return {"model": key[0], "budget": key[1]} | runs[key]


def _evaluate(spec: dict, by_key: dict, cal: list[str], test: list[str], ref: dict, single: dict, spt: dict,
              price: float, tolerance: float) -> dict:
    """One cascade of eval's `cascades:`: thresholds calibrated on `cal` against the best single model there
    (`ref`), the cascade on `test` against the best single model there (`single`), and its frontier (its
    calibration Pareto settings, measured on the test split)."""
    stages = [Stage(s["model"], int(s["budget"]), int(s.get("k", 1))) for s in spec["stages"]]
    rule = spec.get("rule", "both")
    settings = [list(c) + [{}] for c in itertools.product(
        *(_candidates(by_key, cal, st, rule) for st in stages[:-1]))]
    tried = [(replay(by_key, cal, stages, t, spt, price), t) for t in settings]
    within = [p for p in tried if p[0]["accuracy"] >= ref["accuracy"] - tolerance - 1e-9]
    chosen = (min(within, key=lambda p: p[0]["cost_per_correct"] or float("inf")) if within else
              max(tried, key=lambda p: (p[0]["accuracy"], -(p[0]["cost_per_correct"] or float("inf")))))
    on_test = replay(by_key, test, stages, chosen[1], spt, price)
    rel = (on_test["cost_per_correct"] / single["cost_per_correct"]
           if on_test["cost_per_correct"] and single["cost_per_correct"] else None)
    return {"name": spec["name"], "rule": rule, "stages": [vars(s) for s in stages],
            "thresholds": chosen[1][:-1], "calibration": chosen[0] | {"best_single": ref},
            "test": on_test, "best_single": single,
            "accuracy_gap": on_test["accuracy"] - single["accuracy"], "relative_cost": rel,
            "frontier": [replay(by_key, test, stages, t, spt, price) | {"thresholds": t[:-1]}
                         for _, t in _pareto(tried)],
            "calibration_problems": len(cal), "test_problems": len(test), "tolerance": tolerance}


def evaluate_all(specs: list[dict], results: dict, samples: list[dict], share: float = 0.5,
                 tolerance: float = 0.01) -> dict:
    """results.json's `cascades`: every cascade (thresholds calibrated on a split of the problems, reported
    on the rest), and every model alone at every budget on the same test split (the frontier's other
    points)."""
    by_key, (spt, price) = index(samples), costs(results)
    cal, test = split(samples, share)
    if specs and (not cal or not test):
        raise ValueError(f"cascades: {len(cal)} calibration and {len(test)} test problems; both need some "
                         "(calibration_share)")
    singles = [{"model": m["name"], "budget": b} | replay(by_key, test, [Stage(m["name"], b)], [{}], spt, price)
               for m in results["models"] for b in results["budgets"]] if test else []
    best = max((s["accuracy"] for s in singles), default=0.0)
    # the honest comparator: a cascade pays only if it is cheaper than this one model at one budget
    cheapest = min((s for s in singles if s["accuracy"] >= best - tolerance - 1e-9 and s["cost_per_correct"]),
                   key=lambda s: s["cost_per_correct"], default=None)
    if specs:
        ref, single = _best_single(by_key, cal, results, spt, price), _best_single(by_key, test, results, spt, price)
    return {"calibration_share": share, "tolerance": tolerance, "singles": singles, "cheapest_single": cheapest,
            "cascades": [_evaluate(s, by_key, cal, test, ref, single, spt, price, tolerance) for s in specs]}
