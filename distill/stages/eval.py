"""Stage `eval`: the teacher and every student on held-out problems, across thinking budgets.

Budget forcing (s1): a sample's thinking is capped at B tokens; if the model has not closed it by then we
close it (`</think>`), add the answer cue and generate the answer. Each sample's thinking is generated once
at the largest budget and cut at each smaller B: a thinking capped at B is exactly the first B tokens of
an uncapped one, so this equals separate runs per budget (budgets share their samples, which makes the
curve's steps less noisy) at a fraction of the cost. Each cut gets its own forced answer.

Any backend (distill/backends/: transformers, vllm, openai) samples through the same code
(distill/generate.py); `backend:` picks it for every model, a model's own `backend` key overrides it.

Serving cost is measured in the same run, per model: generated tokens/s, latency per answer (p50/p95,
batched at `batch_size`), peak memory, parameter count, FLOPs per problem (2 x params x tokens) and cost
per correct answer (measured seconds x `price_per_hour`).
A model with `draft: <path>` (transformers) is sampled with that draft (speculative decoding); its cost then
has `speculative`: acceptance rate and speed-up against the same model alone (see `_speculative`).
With `verifier:` (a `distill verifier` model) every sample at the largest budget is scored, and the parallel
axis has best-of-k (the sample it scores highest) beside maj@k and pass@k.
Cascades (`cascades:`, distill/cascade.py) are replayed over the samples once every model is evaluated: their
thresholds picked on a calibration split of the problems, their accuracy and cost reported on the rest.
Output: runs/<run>/eval/{results.json, results.csv, samples.jsonl, accuracy_vs_thinking.png,
accuracy_vs_cost.png, scaling_axes.png[, cascades.png]}.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict
from typing_extensions import NotRequired, TypedDict

from distill import generate as G
from distill import cascade, metrics, reward, verify
from distill.artifacts import (
    Fallbacks,
    UserError,
    atomic_write_json,
    atomic_write_text,
    finish,
    read_jsonl,
    stage_dir,
    staging,
    write_jsonl,
)
from distill.config import NonNeg, NonNegFloat, Pos, PosFloat, Share, check_positive, opt
from distill.memory import PeakMemory
from distill.sampling import Engine, Sampling, group, open_backend


class ModelSpec(TypedDict):
    """One entry of `models:`; pydantic checks each (a missing or unknown key names its index)."""
    __pydantic_config__ = ConfigDict(extra="forbid")  # noqa: RUF012 (pydantic reads it from the class)
    name: str
    role: Literal["teacher", "student"]
    path: str
    backend: NotRequired[Literal["transformers", "vllm", "openai", "llama_cpp"]]
    draft: NotRequired[str]  # transformers: a smaller model with the same tokenizer (speculative decoding)
    revision: NotRequired[str]  # a Hub model pinned to a tag, branch or commit


class StageSpec(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # noqa: RUF012
    model: str  # a `models:` name
    budget: int  # one of `budgets`
    k: NotRequired[int]  # samples the stage draws (majority answer), <= n


class CascadeSpec(TypedDict):
    """One entry of `cascades:` (distill/cascade.py): replayed over this eval's own samples."""
    __pydantic_config__ = ConfigDict(extra="forbid")  # noqa: RUF012
    name: str
    stages: list[StageSpec]
    rule: NotRequired[Literal["agreement", "thinking", "logprob", "both", "all"]]  # the signals its thresholds use


@dataclass
class EvalConfig:
    run: str = opt("demo", "the run: outputs go to runs_dir/run/eval/")
    runs_dir: str = opt("runs", "where runs live")
    problems: str = opt("", "problems JSONL (default runs/<run>/problems/eval.jsonl: held out)")
    models: list[ModelSpec] = opt(list, "[{name, role: teacher|student, path[, backend, draft, revision]}]")
    budgets: list[Pos] = opt(
        lambda: [16, 64, 256], "thinking budgets, increasing: each sample thinks up to the "
                                                     "largest, then is cut and answered at each")
    grade_processes: Pos = opt(2, "math-verify worker processes (problems that are not built-in tasks)")
    grade_timeout: PosFloat = opt(5.0, "seconds per answer; a grading that takes longer counts wrong (and is "
                                       "counted)")
    price_per_hour: NonNegFloat = opt(0.10, "$ per hour of the machine the models are served on")
    limit: NonNeg = opt(0, "use only the first `limit` problems (0: all)")
    # one untimed pass over the first batch of problems before the timed one, for transformers on CPU without
    # a draft: there a process's first pass page-faults in its buffers and was 10-18% slower, so the first
    # model evaluated looked slower than it serves (bench/RESULTS.md, "the order bias"). Not measured
    # elsewhere; vLLM warms its engine at start, and a draft's one-prompt-at-a-time run would count the
    # warm-up's draft tokens
    warmup: bool = opt(True, "transformers on CPU: an untimed pass first (a first pass runs 10-18% slow)")
    cascades: list[CascadeSpec] = opt(
        list, "[{name, stages: [{model, budget[, k]}, ...][, rule: agreement|thinking|logprob|both|all]}]: replayed over "
              "the samples, thresholds picked on a calibration split (distill/cascade.py)")
    verifier: str = opt("", "a `distill verifier` model: scores every sample at the largest budget for "
                            "best-of-k beside maj@k and pass@k")
    calibration_share: Share = opt(0.5, "cascades: the share of the problems their thresholds are picked on")
    cascade_tolerance: Share = opt(0.01, "cascades: the accuracy a cascade may give up against the best "
                                         "single model (on the calibration split)")
    sampling: Sampling = group(Sampling, n=4)
    engine: Engine = group(Engine)  # a model's own `backend` wins

    def __post_init__(self):
        check_positive("budgets", self.budgets)
        if not self.budgets or self.budgets != sorted(set(self.budgets)):  # a typo, not an order to fix silently
            raise ValueError(f"budgets must be increasing, without repeats, got {self.budgets}")
        if self.sampling.max_thinking != Sampling().max_thinking:
            raise ValueError("max_thinking is not an eval setting: eval thinks up to its largest budget (budgets)")
        if not 0 <= self.sampling.min_thinking <= self.budgets[-1]:
            raise ValueError(f"min_thinking must be in [0, largest budget {self.budgets[-1]}], "
                             f"got {self.sampling.min_thinking}")
        if not self.models:
            raise ValueError("models is empty: list {name, role, path} for the teacher and the students")
        names = [m.get("name") for m in self.models]
        for m in self.models:  # keys, roles and backends are checked by pydantic (ModelSpec)
            kind = m.get("backend", self.engine.backend)
            if kind == "solver":
                raise ValueError(f"model {m['name']}: backend solver writes traces only; eval samples a model")
            if m.get("draft") and kind != "transformers":
                raise ValueError(f"model {m['name']}: `draft` is a transformers-backend setting; with vLLM use "
                                 "vllm.speculative_config")
        if any(m.get("backend", self.engine.backend) == "openai" for m in self.models) and \
                self.engine.openai.get("api") == "chat":
            raise ValueError("budget forcing is unavailable through a chat endpoint (it cannot continue a cut "
                             "thinking): eval needs openai.api=completions")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        for c in self.cascades:
            if len(c["stages"]) < 2:
                raise ValueError(f"cascade {c['name']}: a cascade needs at least 2 stages")
            for st in c["stages"]:
                if st["model"] not in names:
                    raise ValueError(f"cascade {c['name']}: model {st['model']!r} is not one of models {names} "
                                     "(cascades=[] evaluates without cascades)")
                if st["budget"] not in self.budgets:
                    raise ValueError(f"cascade {c['name']}: budget {st['budget']} is not one of budgets "
                                     f"{self.budgets}")
                if not 1 <= st.get("k", 1) <= self.sampling.n:
                    raise ValueError(f"cascade {c['name']}: k={st.get('k')} must be in [1, n={self.sampling.n}]")


def _generate_all(cfg: EvalConfig, backend, problems: list[dict]):
    """Thinking at the largest budget, the natural answers, then one forced answer per (sample, cut)."""
    gen_kw = dict(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k)
    prompts = [G.think_prompt(backend.tok, p.get("prompt") or p["problem"]) for p in problems for _ in range(cfg.sampling.n)]
    results = G.think_and_answer(backend, prompts, max_thinking=cfg.budgets[-1],
                                 max_answer=cfg.sampling.max_answer_tokens, seed=cfg.sampling.seed, desc="eval",
                                 min_thinking=cfg.sampling.min_thinking, wait=cfg.sampling.wait, max_waits=cfg.sampling.max_waits,
                                 **gen_kw)
    thinking = [t.ids[:-1] if t.stopped else t.ids for t, _ in results]
    natural = [ans is not None for _, ans in results]  # closed its thinking itself
    # one forced answer per distinct cut: a thinking shorter than b that never closed is cut at its length
    cuts = sorted({(i, min(len(thinking[i]), b)) for i in range(len(prompts)) for b in cfg.budgets
                   if not (natural[i] and len(thinking[i]) <= b)})
    forced = G.forced_answers(backend, [prompts[i] for i, _ in cuts], [thinking[i][:b] for i, b in cuts],
                              cfg.sampling.answer_cue, max_answer=cfg.sampling.max_answer_tokens, seed=cfg.sampling.seed + 1, desc="forced",
                              **gen_kw)
    return prompts, results, thinking, natural, dict(zip(cuts, forced))


def generated_tokens(results, forced) -> int:
    """Every token `_generate_all` generated (thinking, natural answers, forced answers): what tokens/s
    counts."""
    return (sum(len(t.ids) + (len(a.ids) if a else 0) for t, a in results)
            + sum(len(g.ids) for g in forced.values()))


def _score(cfg, name, problems, prompts, results, thinking, natural, forced, tok):
    """Per-sample rows for every budget, graded (in parallel processes, each answer under a timeout)."""
    rows, items = [], []
    for i, (think, ans) in enumerate(results):
        p, k = problems[i // cfg.sampling.n], i % cfg.sampling.n
        for b in cfg.budgets:
            used = min(len(thinking[i]), b)
            gen = ans if natural[i] and len(thinking[i]) <= b else forced[(i, used)]
            was_forced = gen is not ans
            text = (cfg.sampling.answer_cue + " " if was_forced else "") + G.decode(tok, gen.ids)
            items.append((p, text))
            rows.append({"model": name, "problem_id": p["id"], "task": p.get("task"), "level": p.get("level"),
                         "sample": k, "budget": b, "thinking_tokens": used, "waits": think.waits,
                         "forced": was_forced, "within_budget": natural[i] and len(thinking[i]) <= b,
                         "answer": text, "answer_tokens": len(gen.ids), "prompt_tokens": len(prompts[i]),
                         "answer_logprob": None if gen.logprob is None else round(gen.logprob, 5),
                         "latency_s": think.seconds + gen.seconds})
    graded = verify.grade_problems(items, processes=cfg.grade_processes, timeout_s=cfg.grade_timeout)
    for row, (correct, extracted, error) in zip(rows, graded, strict=True):
        row["correct"], row["extracted"] = correct, extracted
        if error:  # a timeout or a failure of the grader: counted wrong, and counted (summary "grading")
            row["grade_error"] = error
    return rows


def _summarise(cfg, spec, rows, params, gen_seconds, gen_tokens, peak_mb) -> dict:
    s_per_token = gen_seconds / max(gen_tokens, 1)
    budgets = []
    for b in cfg.budgets:
        rb = [r for r in rows if r["budget"] == b]
        per_sample = [statistics.mean(r["correct"] for r in rb if r["sample"] == k) for k in range(cfg.sampling.n)]
        tokens = sum(r["thinking_tokens"] + r["answer_tokens"] for r in rb)
        correct = sum(r["correct"] for r in rb)
        dollars = tokens * s_per_token * cfg.price_per_hour / 3600
        flops = 2 * params * sum(r["prompt_tokens"] + r["thinking_tokens"] + r["answer_tokens"] for r in rb)
        budgets.append({"budget": b, "accuracy": statistics.mean(per_sample),
                        "accuracy_std": statistics.pstdev(per_sample) if cfg.sampling.n > 1 else 0.0,
                        "mean_thinking_tokens": statistics.mean(r["thinking_tokens"] for r in rb),
                        # the share of samples that closed </think> by themselves within B (not cut and forced);
                        # not s1's "control" (model["s1"]["control"]: thinking kept within the forced bounds)
                        "self_closed": statistics.mean(r["within_budget"] for r in rb),
                        "tokens_per_sample": tokens / len(rb),
                        "cost_per_correct": dollars / correct if correct else None,
                        "flops_per_correct": flops / correct if correct else None})
    top = [r for r in rows if r["budget"] == cfg.budgets[-1]]
    per_problem: dict[str, list] = {}
    scores: dict[str, list] = {}
    for r in top:
        per_problem.setdefault(r["problem_id"], []).append((r["extracted"], r["correct"]))
        scores.setdefault(r["problem_id"], []).append(r.get("verifier_score"))
    lat = sorted(r["latency_s"] for r in top)
    by_task = {}
    for r in top:
        by_task.setdefault(f"{r['task']}/L{r['level']}", []).append(r["correct"])
    return {"name": spec["name"], "role": spec["role"], "path": spec["path"], "params": params,
            "budgets": budgets,
            # the parallel axis at the largest budget: k samples per problem cost k x the tokens of one
            "parallel": metrics.parallel_axis(list(per_problem.values()), budgets[-1]["tokens_per_sample"],
                                              cfg.sampling.seed, list(scores.values()) if cfg.verifier else None),
            "s1": {"control": statistics.mean(r["thinking_tokens"] >= min(cfg.sampling.min_thinking, r["budget"])
                                              for r in rows),
                   "scaling": metrics.s1_scaling([(b["mean_thinking_tokens"], b["accuracy"]) for b in budgets]),
                   "performance": max(b["accuracy"] for b in budgets)},
            "accuracy_by_task_level": {k: statistics.mean(v) for k, v in sorted(by_task.items())},
            # gradings that timed out or failed, over every budget (each such answer counted wrong)
            "grading": verify.grading_errors([r.get("grade_error") for r in rows]),
            "cost": {"tokens_per_s": gen_tokens / max(gen_seconds, 1e-9),
                     "latency_p50_s": lat[len(lat) // 2], "latency_p95_s": lat[min(len(lat) - 1,
                                                                                     int(0.95 * len(lat)))],
                     "peak_mem_mb": peak_mb,
                     "flops_per_problem": 2 * params * statistics.mean(
                         r["prompt_tokens"] + r["thinking_tokens"] + r["answer_tokens"] for r in top),
                     "cost_per_correct": budgets[-1]["cost_per_correct"],
                     # the budget where a correct answer is cheapest: what serving this model at its best costs
                     "best": min(({"budget": b["budget"], "cost_per_correct": b["cost_per_correct"],
                                   "flops_per_correct": b["flops_per_correct"], "accuracy": b["accuracy"]}
                                  for b in budgets if b["cost_per_correct"] is not None),
                                 key=lambda b: b["cost_per_correct"], default=None),
                     "price_per_hour": cfg.price_per_hour}}


def _verifier_scores(cfg: EvalConfig, verifier, problems: list[dict], thinking: list, rows: list[dict], tok):
    """The verifier's score of every sample at the largest budget (distill/reward.py: the same text it was
    trained on), into its row. _score wrote a row per (sample, budget), budgets innermost."""
    model, rm_tok = verifier
    top = [(i, rows[i * len(cfg.budgets) + len(cfg.budgets) - 1]) for i in range(len(thinking))]
    texts = [reward.text(rm_tok, (p := problems[i // cfg.sampling.n]).get("prompt") or p["problem"],
                         G.decode(tok, thinking[i][:cfg.budgets[-1]]), r["answer"]) for i, r in top]
    for (_, r), s in zip(top, reward.score(model, rm_tok, texts), strict=True):
        r["verifier_score"] = s


def _eval_model(cfg: EvalConfig, spec: dict, problems: list[dict], fallbacks: Fallbacks, verifier=None):
    kind = spec.get("backend", cfg.engine.backend)
    with PeakMemory() as mem:  # this process only: vLLM's engine and a remote server are not counted
        backend = open_backend(cfg.engine, spec["path"], runs_dir=cfg.runs_dir, run=cfg.run, fallbacks=fallbacks,
                               kind=kind, revision=spec.get("revision", ""),
                               extra={"draft": spec["draft"]} if spec.get("draft") else None)
        G.stop_tokens(backend.tok)
        cpu = kind == "transformers" and backend.info["device"] == "cpu"
        if cfg.warmup and cpu and not spec.get("draft"):
            # each generation is seeded itself: the timed pass samples the same tokens
            _generate_all(cfg, backend, problems[:max(1, cfg.engine.batch_size // cfg.sampling.n)])
        started = time.perf_counter()
        prompts, results, thinking, natural, forced = _generate_all(cfg, backend, problems)
        gen_seconds = time.perf_counter() - started
    gen_tokens = generated_tokens(results, forced)
    rows = _score(cfg, spec["name"], problems, prompts, results, thinking, natural, forced, backend.tok)
    if verifier is not None:
        _verifier_scores(cfg, verifier, problems, thinking, rows, backend.tok)
    summary = _summarise(cfg, spec, rows, backend.params or 0, gen_seconds, gen_tokens, mem.mb)
    summary["backend"] = backend.info
    origin = Path(spec["path"]) / "quantized_from.json"  # a `distill quantize` output: the report compares it
    if origin.is_file():
        summary["quantized_from"] = json.loads(origin.read_text())
    if spec.get("draft"):
        summary["cost"]["speculative"] = _speculative(cfg, spec, backend, prompts)
    backend.close()
    return summary, rows


def _speculative(cfg: EvalConfig, spec: dict, backend, prompts: list[list[int]], k: int = 8) -> dict:
    """Speculative decoding with `spec["draft"]` as the draft: the acceptance rate over the whole eval run
    (draft tokens the target kept / draft tokens proposed), and the speed-up against the same model without
    the draft, measured here on a subset: the thinking prompts of the first `k` problems at the largest
    budget, run once with the draft and once without, both one prompt at a time (assisted generation only
    runs at batch size 1; the batched throughput of the model alone is another regime, not this baseline).
    At temperature 0 the two runs must give identical tokens."""
    s = dict(backend.spec)  # the eval run's counts, before the timing runs below
    sub = prompts[::cfg.sampling.n][:k]
    kw = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p, "top_k": cfg.sampling.top_k, "seed": cfg.sampling.seed}
    stop = list(G.stop_tokens(backend.tok))
    runs = {}
    for label in ("target_alone", "with_draft"):
        with backend.without_draft() if label == "target_alone" else contextlib.nullcontext():
            started = time.perf_counter()
            gens = backend.generate(sub, cfg.budgets[-1], stop, desc=f"speculative {label}", **kw)
            seconds = time.perf_counter() - started
        runs[label] = (gens, sum(len(g.ids) for g in gens) / max(seconds, 1e-9))
    return {"draft": spec["draft"], "acceptance_rate": s["accepted"] / s["proposed"] if s["proposed"] else None,
            "proposed_tokens": s["proposed"], "accepted_tokens": s["accepted"],
            "tokens_per_target_pass": (s["accepted"] + s["target_passes"]) / max(s["target_passes"], 1),
            "tokens_per_s": runs["with_draft"][1], "target_alone_tokens_per_s": runs["target_alone"][1],
            "speedup_vs_target_alone": runs["with_draft"][1] / max(runs["target_alone"][1], 1e-9),
            "speedup_prompts": len(sub),
            "identical_to_target_alone": ([g.ids for g in runs["with_draft"][0]] ==
                                          [g.ids for g in runs["target_alone"][0]]) if cfg.sampling.temperature == 0 else None}


def _csv(models: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "role", "params", "budget", "accuracy", "accuracy_std", "mean_thinking_tokens",
                "self_closed", "cost_per_correct", "flops_per_correct"])
    for m in models:
        for b in m["budgets"]:
            w.writerow([m["name"], m["role"], m["params"], b["budget"], f"{b['accuracy']:.4f}",
                        f"{b['accuracy_std']:.4f}", f"{b['mean_thinking_tokens']:.2f}", f"{b['self_closed']:.4f}",
                        "" if b["cost_per_correct"] is None else f"{b['cost_per_correct']:.3e}",
                        "" if b["flops_per_correct"] is None else f"{b['flops_per_correct']:.3e}"])
    return buf.getvalue()


def run(cfg: EvalConfig) -> Path:
    from tqdm.auto import tqdm

    from distill import plots

    started = time.time()
    for spec in cfg.models:
        if not Path(spec["path"]).is_dir() and spec["path"].startswith((".", "/", "runs/")):
            raise UserError(f"eval: model {spec['name']!r} not found at {spec['path']}")
    src = Path(cfg.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "eval.jsonl")
    problems = read_jsonl(src, required=("id", "problem", "answer"))
    problems = problems[:cfg.limit] if cfg.limit else problems
    if not problems:
        raise UserError(f"{src}: no problems to evaluate")
    seen: dict[str, int] = {}
    for i, p in enumerate(problems, 1):  # samples are grouped by id: two problems sharing one would merge
        if seen.setdefault(str(p["id"]), i) != i:
            raise UserError(f"{src}: duplicate id {p['id']!r} (rows {seen[str(p['id'])]} and {i})")
    for spec in cfg.models:
        G.check_tokenizer(spec["path"])  # every model's tokenizer before any model's weights
    G.set_threads(cfg.engine.threads)
    fallbacks, models, samples = Fallbacks(), [], []
    verifier = reward.load(cfg.verifier) if cfg.verifier else None
    for spec in tqdm(cfg.models, desc="models", unit="model"):
        summary, rows = _eval_model(cfg, spec, problems, fallbacks, verifier)
        models.append(summary)
        samples += rows
        top = summary["budgets"][-1]
        print(f"eval: {spec['name']}: accuracy {top['accuracy']:.3f} at budget {top['budget']}, "
              f"{summary['cost']['tokens_per_s']:.0f} tokens/s")
    out = stage_dir(cfg.runs_dir, cfg.run, "eval")
    results = {"problems": str(src), "n_problems": len(problems), "n": cfg.sampling.n, "budgets": cfg.budgets,
               "temperature": cfg.sampling.temperature, "models": models}
    if cfg.cascades:
        results["cascades"] = cascade.evaluate_all(cfg.cascades, results, samples, cfg.calibration_share,
                                                   cfg.cascade_tolerance)
        for c in results["cascades"]["cascades"]:
            b = c["best_single"]
            rel = "n/a" if c["relative_cost"] is None else f"{c['relative_cost']:.2f}x"
            print(f"eval: cascade {c['name']}: accuracy {c['test']['accuracy']:.3f} at "
                  f"{rel} the cost per correct of {b['model']} alone "
                  f"({b['accuracy']:.3f}), on {c['test_problems']} test problems")
    with staging(out) as tmp:
        atomic_write_json(tmp / "results.json", results)
        atomic_write_text(tmp / "results.csv", _csv(models))
        write_jsonl(tmp / "samples.jsonl", samples)
        plots.accuracy_vs_thinking(models, tmp / "accuracy_vs_thinking.png")
        plots.accuracy_vs_cost(models, tmp / "accuracy_vs_cost.png")
        plots.scaling_axes(models, tmp / "scaling_axes.png")
        if cfg.cascades:
            plots.cascades(results["cascades"], tmp / "cascades.png")
        inputs = {"problems": src} | {m["name"]: Path(m["path"]) for m in cfg.models if Path(m["path"]).is_dir()}
        inputs |= {"verifier": Path(cfg.verifier)} if cfg.verifier else {}
        finish(tmp, "eval", cfg, inputs, {"problems": len(problems), "samples": len(samples)}, started,
               fallbacks=fallbacks.items)
    print(f"eval: {len(cfg.models)} models x {len(problems)} problems x {cfg.sampling.n} samples x "
          f"{len(cfg.budgets)} budgets -> {out}")
    return out
