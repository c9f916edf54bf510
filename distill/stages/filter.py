"""Stage `filter`: score every trace and keep the good ones as an SFT dataset.

Drops, in this order: contaminated (only when `decontaminate_against` lists eval sets: the problem shares
a word 8-gram with one of them, see distill/stages/decontaminate.py; the overlaps go to overlaps.jsonl), truncated
(thinking never closed, or the answer hit its token limit), wrong (a built-in task's checker says so; any
other problem, e.g. a benchmark's, is graded like `eval` grades it: math-verify against its `answer` by its
`answer_type`, in worker processes under a per-answer timeout, distill/verify.py), over-long
(thinking above `max_thinking_tokens`), duplicate (same thinking and answer as a kept sample of the same
problem), surplus (more than `keep_per_problem`); then, with `keep_rows`, keeps that many rows chosen
`keep_by` (random; pass_rate: the problems the teacher solved least often first, hard but solved, as s1 and
open-r1 select; thinking_length: the longest thinking first). The teacher's pass rate per problem over its
samples goes to pass_rates.jsonl, its summary and the problems it never solved to stats.json; every
sample's verdict (correct by the checker, and why it was dropped) to verdicts.jsonl (`distill verifier`
learns from them). Writes
train.jsonl as chat
`messages` (the assistant turn is "<think>\\n…\\n</think>\\n" + answer, loadable with `datasets` and
trainable by TRL as it is) and stats.json. Output: runs/<run>/filter/<name>/.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill import tasks, verify
from distill.reward import assistant_text
from distill.artifacts import (
    UserError,
    atomic_write_json,
    finish,
    read_jsonl,
    stage_dir,
    staging,
    write_jsonl,
)
from distill.config import NonNeg, Pos, PosFloat, check_literals, check_positive, opt
from distill.stages import decontaminate

REASONS = ("truncated", "wrong", "overlong", "duplicate", "surplus")


@dataclass
class FilterConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("teacher", "the traces to filter, runs/<run>/traces/<name>/, and the output's name")
    traces: str = opt("", "default: runs/<run>/traces/<name>/traces.jsonl")
    problems: str = opt("", "default: runs/<run>/problems/train.jsonl")
    keep_per_problem: Pos = opt(2, "traces kept per problem at most (of those that pass)")
    max_thinking_tokens: Pos = opt(4096, "a trace thinking longer than this is dropped (overlong)")
    select: Literal["random", "shortest"] = opt(
        "random", "which passing traces of a problem are kept when there are more: random or the shortest")
    keep_rows: NonNeg = opt(0, "training rows kept at most, chosen `keep_by` (0: every row that passes)")
    keep_by: Literal["random", "pass_rate", "thinking_length"] = opt(
        "random", "which rows `keep_rows` keeps: random; pass_rate: lowest teacher pass rate first (hard but "
                  "solved); thinking_length: longest thinking first")
    seed: int = opt(
        0, "seeds every random choice of the stage: the same settings and inputs give the same outputs")
    decontaminate_against: list[str] = opt(
        list, "eval.jsonl files or eval/*.yaml recipes")
    # the checks that drop a sample; fewer keeps what they would have dropped (`drop=[]`: every trace as the
    # teacher wrote it, the demo's unfiltered ablation), counted in stats.json's `kept_anyway`
    drop: list[Literal["truncated", "wrong", "overlong", "duplicate", "surplus"]] = field(
        default_factory=lambda: list(REASONS))
    grade_processes: Pos = opt(2, "math-verify worker processes (problems that are not built-in tasks)")
    grade_timeout: PosFloat = opt(5.0, "seconds per answer; an answer that takes longer is wrong")

    def __post_init__(self):
        check_literals(self)
        self.decontaminate_against = decontaminate.as_paths("decontaminate_against", self.decontaminate_against)
        check_positive("keep_per_problem", self.keep_per_problem)
        check_positive("max_thinking_tokens", self.max_thinking_tokens)
        check_positive("grade_processes", self.grade_processes)
        check_positive("grade_timeout", self.grade_timeout)


def _truncated(r: dict) -> bool:
    return r["finish_reason"] != "stop" or not r["answer"]


def _grade(cfg, traces: list[dict], problems: dict, contaminated: set) -> tuple[list[bool | None], Counter, dict]:
    """Correct or not for every sample that reaches the check (None for the others), all graded in one
    batch; how many each grader judged (`task`: a built-in task's checker, `math-verify`: the rest); and how
    many gradings timed out or failed (those samples count as wrong)."""
    todo = [i for i, r in enumerate(traces) if r["problem_id"] not in contaminated and not _truncated(r)]
    items = [(problems[traces[i]["problem_id"]], traces[i]["answer"]) for i in todo]
    graders = Counter("task" if p.get("task") in tasks.FAMILIES else "math-verify" for p, _ in items)
    correct: list[bool | None] = [None] * len(traces)
    results = verify.grade_problems(items, processes=cfg.grade_processes, timeout_s=cfg.grade_timeout)
    for i, (ok, _, _) in zip(todo, results, strict=True):
        correct[i] = bool(ok)
    return correct, graders, verify.grading_errors([e for _, _, e in results])


def _verdict(cfg, r: dict, correct: bool | None) -> str | None:
    if _truncated(r):
        return "truncated"
    if not correct:
        return "wrong"
    if r["thinking_tokens"] > cfg.max_thinking_tokens:
        return "overlong"
    return None


def _contaminated(cfg: FilterConfig, problems: dict, traces: list[dict]) -> tuple[set, list[dict]]:
    """Ids of the traced problems that overlap an eval set, and the overlaps (same check as the stage)."""
    if not cfg.decontaminate_against:
        return set(), []
    traced = dict.fromkeys(r["problem_id"] for r in traces)
    overlaps = decontaminate.find_overlaps([(pid, problems[pid]["problem"]) for pid in traced],
                                           decontaminate.load_eval_sets(cfg.decontaminate_against))
    return {o["train_id"] for o in overlaps}, overlaps


def _histogram(values: list[int], bins: int = 10) -> dict:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values) + 1
    width = max(1, -(-(hi - lo) // bins))
    counts = Counter((v - lo) // width for v in values)
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": [counts.get(i, 0) for i in range(bins)]}


def _pass_rates(traces: list[dict], correct: list[bool | None], contaminated: set) -> dict:
    """{problem: (correct, samples)} of every traced problem that was checked (a truncated sample counts as
    not solved)."""
    rates: dict[str, list[int]] = {}
    for r, ok in zip(traces, correct, strict=True):
        if r["problem_id"] not in contaminated:
            c = rates.setdefault(r["problem_id"], [0, 0])
            c[0], c[1] = c[0] + bool(ok), c[1] + 1
    return {pid: (c[0], c[1]) for pid, c in rates.items()}


def _keep_rows(cfg: FilterConfig, kept: list[dict], rates: dict, rng: random.Random) -> list[dict]:
    """`keep_rows` of the kept rows, chosen `keep_by`; ties (and `random`) in a seeded random order."""
    if not cfg.keep_rows or len(kept) <= cfg.keep_rows:
        return kept
    order = rng.sample(kept, len(kept))
    if cfg.keep_by == "pass_rate":  # hard but solved first; one never solved (kept by drop=[]) goes last
        rate = {pid: c / n for pid, (c, n) in rates.items()}
        order.sort(key=lambda r: (rate.get(r["problem_id"], 0.0) == 0, rate.get(r["problem_id"], 0.0)))
    elif cfg.keep_by == "thinking_length":
        order.sort(key=lambda r: -r["thinking_tokens"])
    return order[:cfg.keep_rows]


def _rate_summary(rates: dict) -> dict:
    values = [c / n for c, n in rates.values()]
    never = [pid for pid, (c, _) in rates.items() if c == 0]
    return {"mean": round(sum(values) / max(len(values), 1), 4),
            "problems_by_rate": {f"{k:.2f}": v
                                 for k, v in sorted(Counter(round(x, 2) for x in values).items())},
            "never_solved": len(never), "never_solved_ids": never}


def run(cfg: FilterConfig) -> Path:
    started = time.time()
    tr_path = Path(cfg.traces or stage_dir(cfg.runs_dir, cfg.run, "traces", cfg.name) / "traces.jsonl")
    pr_path = Path(cfg.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
    if (tr_path.parent / ".identity.json").is_file() and not (tr_path.parent / "manifest.json").is_file():
        # a log `traces` is still writing, or was killed in: filtering it would silently drop the rest
        raise UserError(f"{tr_path}: unfinished (no manifest.json beside it): run the traces stage to the end "
                        "first (it resumes where it stopped)")
    traces = read_jsonl(tr_path, required=("problem_id", "sample", "thinking", "answer", "finish_reason",
                                           "thinking_tokens"))
    problems = {p["id"]: p for p in read_jsonl(pr_path, required=("id", "problem", "answer"))}
    if not traces:
        raise UserError(f"{tr_path}: no traces to filter")
    orphans = [r["problem_id"] for r in traces if r["problem_id"] not in problems]
    if orphans:
        raise UserError(f"{tr_path}: problem {orphans[0]!r} is not in {pr_path} ({len(orphans)} such samples)")

    contaminated, overlaps = _contaminated(cfg, problems, traces)
    correct, graders, grading = _grade(cfg, traces, problems, contaminated)
    dropped, anyway, by_problem = Counter(), Counter(), {}

    def drops(reason: str, n: int = 1) -> bool:
        """Count n samples a check finds; True when the check drops them (contaminated ones always go)."""
        on = reason == "contaminated" or reason in cfg.drop
        (dropped if on else anyway)[reason] += n
        return on

    for r, ok in zip(traces, correct, strict=True):
        reason = "contaminated" if r["problem_id"] in contaminated else _verdict(cfg, r, ok)
        if not (reason and drops(reason)):
            by_problem.setdefault(r["problem_id"], []).append(r)
    rng, kept = random.Random(cfg.seed), []
    for pid, rows in by_problem.items():
        seen, unique = set(), []
        for r in rows:
            key = (r["thinking"], r["answer"])
            if not (key in seen and drops("duplicate")):
                seen.add(key)
                unique.append(r)
        unique = sorted(unique, key=lambda r: r["thinking_tokens"]) if cfg.select == "shortest" else \
            rng.sample(unique, len(unique))
        surplus = max(0, len(unique) - cfg.keep_per_problem)
        kept += unique[:len(unique) - surplus] if drops("surplus", surplus) else unique
    rates = _pass_rates(traces, correct, contaminated)
    selected = _keep_rows(cfg, kept, rates, rng)
    not_selected, kept = len(kept) - len(selected), selected
    if not kept:
        raise UserError(f"{tr_path}: every sample was dropped ({dict(dropped)}); nothing to train on")

    rank = {pid: i for i, pid in enumerate(problems)}
    kept.sort(key=lambda r: (rank[r["problem_id"]], r["sample"]))
    # the user turn is what the teacher was asked (traces.jsonl's `prompt`: a benchmark's rendered prompt)
    rows = [{"messages": [{"role": "user", "content": r.get("prompt") or problems[r["problem_id"]]["problem"]},
                          {"role": "assistant", "content": assistant_text(r["thinking"], r["answer"])}]}
            for r in kept]
    traced = {r["problem_id"] for r in traces}
    per_problem = Counter(r["problem_id"] for r in kept)
    # "contaminated" appears only when the step is on, so the stats of a plain run keep their shape
    reasons = ("contaminated", *REASONS) if cfg.decontaminate_against else REASONS
    judged = len(traces) - dropped["contaminated"]  # contaminated samples are never checked
    stats = {
        "samples": len(traces), "problems": len(traced), "kept": len(kept),
        "dropped": {k: dropped.get(k, 0) for k in reasons},
        "kept_anyway": {k: anyway.get(k, 0) for k in REASONS if k not in cfg.drop},
        "not_selected": not_selected,  # rows that passed every check, left out by keep_rows
        "correct_rate": round(1 - sum(dropped[k] + anyway[k] for k in ("truncated", "wrong")) / max(judged, 1), 4),
        "graded_by": dict(sorted(graders.items())),  # samples each grader judged (truncated ones are not)
        "grading_failed": grading,  # gradings that timed out or failed: those samples were dropped as wrong
        "problems_with_a_kept_sample": len(per_problem),
        "yield_per_problem": dict(sorted(Counter(per_problem.get(p, 0) for p in traced).items())),
        "kept_thinking_tokens": _histogram([r["thinking_tokens"] for r in kept]),
        "pass_rate": _rate_summary(rates),  # the teacher's, per problem over its samples (pass_rates.jsonl)
    }
    out = stage_dir(cfg.runs_dir, cfg.run, "filter", cfg.name)
    with staging(out) as tmp:
        write_jsonl(tmp / "train.jsonl", rows)
        atomic_write_json(tmp / "stats.json", stats)
        write_jsonl(tmp / "pass_rates.jsonl", [{"problem_id": pid, "correct": c, "samples": n,
                                                "pass_rate": c / n} for pid, (c, n) in rates.items()])
        write_jsonl(tmp / "verdicts.jsonl", [
            {"problem_id": r["problem_id"], "sample": r["sample"], "correct": bool(ok),
             "reason": "contaminated" if r["problem_id"] in contaminated else _verdict(cfg, r, ok)}
            for r, ok in zip(traces, correct, strict=True)])
        if cfg.decontaminate_against:
            write_jsonl(tmp / "overlaps.jsonl", overlaps)
        finish(tmp, "filter", cfg, {"traces": tr_path, "problems": pr_path},
               {"samples": len(traces), "kept": len(kept), **stats["dropped"], "not_selected": not_selected},
               started)
    chosen = f"; {not_selected} passing rows left out by keep_rows={cfg.keep_rows}" if not_selected else ""
    print(f"filter: kept {len(kept)} of {len(traces)} samples; dropped {stats['dropped']}{chosen} -> {out}")
    return out
