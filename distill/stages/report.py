"""Stage `report`: runs/<run>/report.md, the pipeline's numbers at each stage for a reader who has never
seen the code: problems, traces, filter, training, the eval table, the serving cost table, the plots, and
an honest check of the demo's targets. Reads only the other stages' artifacts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from distill import effort
from distill.artifacts import UserError, atomic_write_text, finish, read_jsonl, stage_dir
from distill.config import opt


@dataclass
class ReportConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    title: str = opt("distill report", "the report's title")


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _size(p: int) -> str:
    return f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p / 1e3:.0f}k"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _data_sections(root: Path) -> list[str]:
    out = []
    probs = _load(root / "problems" / "manifest.json")
    if probs:
        rows = read_jsonl(root / "problems" / "train.jsonl")
        tasks = sorted({r.get("task", "?") for r in rows})
        out += ["## 1. Problems", f"{probs['counts']['train']} training problems and {probs['counts']['eval']} "
                f"held-out evaluation problems (disjoint by construction), tasks: {', '.join(tasks)}.", ""]
    traces = sorted((root / "traces").glob("*/manifest.json"))
    if traces:
        rows = []
        for path in traces:
            m = _load(path)
            c = m["counts"]
            rows.append([path.parent.name,
                         c["problems"], c["samples"], c["finish_reasons"]["stop"], c["finish_reasons"]["length"],
                         c["thinking_tokens_mean"], m["timings"].get("generate_s")])
        out += ["## 2. Traces", *_table(["teacher", "problems", "samples", "finished", "truncated",
                                         "mean thinking tokens", "generation s"], rows), ""]
    filters = sorted((root / "filter").glob("*/stats.json"))
    if filters:
        rows = []
        for p in filters:
            s = _load(p)
            d = s["dropped"]
            rows.append([p.parent.name, s["samples"], f"{s['correct_rate']:.3f}", s["kept"], d["truncated"],
                         d["wrong"], d["overlong"], d["duplicate"], d["surplus"],
                         s["problems_with_a_kept_sample"]])
        out += ["## 3. Filter", "Samples are checked by the task's own checker; only correct, complete, unique "
                "traces are kept.", "", *_table(["traces", "samples", "correct rate", "kept", "truncated",
                                                 "wrong", "over-long", "duplicate", "surplus",
                                                 "problems kept"], rows), ""]
    sfts = sorted((root / "sft").glob("*/manifest.json"))
    if sfts:
        rows, imgs, targets = [], [], []
        for path in sfts:
            m, d = _load(path), path.parent.name
            c, t = m["counts"], m["timings"]
            name = Path(m["inputs"]["data"]["path"]).parent.name
            loss = ["-" if c[k] is None else f"{c[k]:.3f}" for k in ("first_loss", "final_loss")]
            rows.append([d, _size(c["params"]), name, c["rows"], c["steps"], *loss,
                         f"{t['tokens_per_s']:,.0f}", f"{t['train_s']:.0f}",
                         m["optimizer"], "; ".join(f"{f['wanted']}→{f['used']}" for f in m["fallbacks"]) or "-"])
            imgs.append(f"![{d} loss](sft/{d}/loss.png)")
            if u := m.get("until"):  # trained to a target: where it got and when
                ended = (f"reached {u['target']:g} at step {u['met_at_step']}" if u["met_at_step"] is not None
                         else f"did **not** reach {u['target']:g} in {u['steps']} steps; kept step {u['kept_step']}")
                targets.append(f"- {d}: dev accuracy on {u['dev_problems']} held-out training problems "
                               f"{ended} ({u['kept_accuracy']:.2f}); checks: "
                               + ", ".join(f"{a:.2f}@{s}" for s, a in u["curve"]))
        out += ["## 4. Training (SFT, loss on assistant tokens only)",
                *_table(["model", "params", "data", "rows", "steps", "first loss", "final loss", "tokens/s",
                         "train s", "optimizer", "fallbacks"], rows), "", *targets, *([""] if targets else []),
                " ".join(imgs), ""]
    return out


def _eval_sections(res: dict) -> list[str]:
    models, budgets = res["models"], res["budgets"]
    acc = [[m["name"], m["role"], _size(m["params"])] +
           [f"{b['accuracy']:.3f} ± {b['accuracy_std']:.3f}" for b in m["budgets"]] for m in models]
    think = [[m["name"]] + [f"{b['mean_thinking_tokens']:.1f} / {b['self_closed']:.2f}" for b in m["budgets"]]
             for m in models]
    cost = [[m["name"], _size(m["params"]), f"{m['cost']['tokens_per_s']:,.0f}",
             f"{m['cost']['latency_p50_s']:.2f}", f"{m['cost']['latency_p95_s']:.2f}",
             f"{m['cost']['peak_mem_mb']:.0f}", f"{m['cost']['flops_per_problem']:.2e}",
             *(["-"] * 3 if not (best := m["cost"].get("best")) else
               [best["budget"], f"{best['cost_per_correct']:.2e}", f"{best['flops_per_correct']:.2e}"])]
            for m in models]
    keys = sorted({k for m in models for k in m.get("accuracy_by_task_level", {})})
    by_task = [[m["name"]] + [f"{m['accuracy_by_task_level'].get(k, 0):.2f}" for k in keys] for m in models]
    return [
        "## 5. Evaluation on held-out problems",
        f"{res['n_problems']} problems, {res['n']} samples each at temperature {res['temperature']}; budget "
        "forcing caps the thinking at B tokens, then closes it and forces the answer.", "",
        "Accuracy (mean ± std over samples) by thinking budget B:", "",
        *_table(["model", "role", "params"] + [f"B={b}" for b in budgets], acc), "",
        "Mean thinking tokens used / self-closed (share of samples that closed their thinking by themselves "
        "within B; the rest were cut at B and their answer forced):", "",
        *_table(["model"] + [f"B={b}" for b in budgets], think), "",
        "![accuracy vs thinking tokens](eval/accuracy_vs_thinking.png)", "",
        f"Accuracy by task and level at B={budgets[-1]}:", "", *_table(["model"] + keys, by_task), "",
        *_scaling_section(models, budgets),
        "## 6. Serving cost (measured in the same run, batched generation)",
        "Cost per correct answer at each model's best budget (where a correct answer is cheapest): measured "
        "(wall time on this machine at the eval's price per hour) and in FLOPs (2 x params x tokens). Measured "
        "cost follows FLOPs only where a model's tokens/s grows as its size shrinks.", "",
        *_table(["model", "params", "tokens/s", "latency p50 s", "latency p95 s", "peak memory MB",
                 "FLOPs/problem", "best B", "$ per correct", "FLOPs per correct"], cost), "",
        "![accuracy vs cost](eval/accuracy_vs_cost.png)", "", *_effort_lines(models), *_speculative_lines(models),
        *_cascade_lines(res.get("cascades"))]


def _effort_lines(models: list[dict]) -> list[str]:
    """What `distill serve results=...` would calibrate as reasoning_effort (distill/effort.py) for each model,
    and what a correct answer costs at each level: levels on the same budget cost the same."""
    rows = []
    for m in models:
        cal = effort.from_curve(m["budgets"])
        at = {b["budget"]: b for b in m["budgets"]}
        cells = []
        for b in cal["efforts"].values():
            cost = at[b]["cost_per_correct"]
            cells.append(f"B={b} ({at[b]['accuracy']:.3f}, {at[b]['mean_thinking_tokens']:.0f}, "
                         f"{'-' if cost is None else f'{cost:.2e}'})")
        rows.append([m["name"], *cells])
    return ["Reasoning effort as `distill serve` calibrates it from these curves (the smallest budget reaching "
            f"{effort.shares_text()} of the model's best accuracy): budget (accuracy, mean thinking tokens, $ per correct). Levels "
            "that share a budget mean the curve rises too steeply between the budgets evaluated, or still at the "
            "largest:", "",
            *_table(["model", "low", "medium", "high"], rows), ""]


def _cascade_lines(cas: dict | None) -> list[str]:
    """eval's cascades (distill/cascade.py): each against the best single model (the most accurate model at
    one budget), on the problems their thresholds were not picked on."""
    if not cas or not cas["cascades"]:
        return []
    rows, verdicts = [], []
    for c in cas["cascades"]:
        stages = " → ".join(f"{s['model']}@{s['budget']}" + (f" ×{s['k']}" if s["k"] > 1 else "")
                            for s in c["stages"])
        thr = "; ".join(", ".join(x for x in (f"agreement < {t['min_agreement']:.2f}" if t["min_agreement"] else "",
                                              f"thinking > {t['max_thinking']}" if t["max_thinking"] is not None
                                              else "",
                                              f"answer log-prob < {t['min_logprob']:.3f}" if "min_logprob" in t
                                              else "") if x) or "never" for t in c["thresholds"])
        rel = c["relative_cost"]
        rows.append([c["name"], stages, thr, f"{c['test']['accuracy']:.3f}", "-" if rel is None else f"{rel:.2f}",
                     " / ".join(f"{a:.2f}" for a in c["test"]["answered"])])
        met = c["accuracy_gap"] >= -cas["tolerance"] - 1e-9 and rel is not None and rel <= 0.7
        verdicts.append(f"- {c['name']}: " + ("within {:.2f} of {} at ≤ 0.7 of its cost: met".format(
            cas["tolerance"], c["best_single"]["model"]) if met else
            f"misses: accuracy {c['accuracy_gap']:+.3f} against {c['best_single']['model']} alone, at "
            f"{'-' if rel is None else f'{rel:.2f}'} of its cost per correct (target: within "
            f"{cas['tolerance']:.2f}, ≤ 0.7)"))
    c0, cheap = cas["cascades"][0], cas.get("cheapest_single")
    b = c0["best_single"]
    return ["### Adaptive compute: cascades",
            f"Each problem goes to the first stage and on when that stage's samples disagree, think too long or are "
            f"unsure of their answer (a low log-probability; thresholds picked on {c0['calibration_problems']} "
            f"problems, reported on the other "
            f"{c0['test_problems']}); every stage a problem passed through is paid at its model's measured "
            f"tokens/s. Best single model at B={b['budget']}: {b['model']} ({b['accuracy']:.3f})" +
            (f"; the cheapest single model within {cas['tolerance']:.2f} of it: {cheap['model']} at "
             f"B={cheap['budget']} ({cheap['accuracy']:.3f}, {cheap['cost_per_correct'] / b['cost_per_correct']:.2f} "
             f"of its cost per correct)." if cheap and b["cost_per_correct"] else "."), "",
            *_table(["cascade", "stages", "escalates when", "accuracy", "$ per correct ÷ best single",
                     "answered by each stage"], rows), "", *verdicts, "",
            "![cascades against every model alone](eval/cascades.png)", ""]


def _speculative_lines(models: list[dict]) -> list[str]:
    """Models evaluated with a draft (eval's `draft:` key): how often the draft's tokens were accepted and what
    it did to speed, against the same model alone on the same prompts."""
    rows = [[m["name"], s["draft"], f"{s['acceptance_rate']:.3f}", f"{s['tokens_per_s']:,.0f}",
             f"{s['target_alone_tokens_per_s']:,.0f}", f"{s['speedup_vs_target_alone']:.2f}x",
             "yes" if s.get("identical_to_target_alone") else "no"]
            for m in models if (s := m["cost"].get("speculative"))]
    if not rows:
        return []
    return ["Speculative decoding (a draft model proposes, the model verifies; one prompt at a time):", "",
            *_table(["model", "draft", "acceptance", "tokens/s", "alone tokens/s", "speed-up",
                     "identical at T=0"], rows), ""]


def _scaling_section(models: list[dict], budgets: list[int], folder: str = "eval") -> list[str]:
    """Thinking longer (budget forcing) against sampling more (maj@k / pass@k at the largest budget; with a
    verifier, best-of-k and what it adds over maj@k at the largest k)."""
    if not any(m.get("parallel") for m in models):
        return []
    ks = [r["k"] for r in models[0]["parallel"]]
    bo = all("best_of_k" in r for m in models for r in m["parallel"])
    par = [[m["name"]] + [f"{r['maj_at_k']:.3f} / {r['pass_at_k']:.3f}"
                          + (f" / {r['best_of_k']:.3f}" if bo else "") + f" ({r['tokens_per_problem']:,.0f})"
                          for r in m["parallel"]] for m in models]
    gains = [f"- {m['name']}: best-of-{r['k']} {r['best_of_k']:.3f} vs maj@{r['k']} {r['maj_at_k']:.3f} "
             f"({r['best_of_k'] - r['maj_at_k']:+.3f}: {'beats' if r['best_of_k'] > r['maj_at_k'] else 'does not beat'} "
             f"it)" for m in models if bo for r in m["parallel"][-1:]]
    s1 = [[m["name"], f"{m['s1']['control']:.2f}",
           "-" if m["s1"]["scaling"] is None else f"{m['s1']['scaling']:+.3f}", f"{m['s1']['performance']:.3f}"]
          for m in models]
    return [f"Sampling more at B={budgets[-1]}: maj@k / pass@k{' / best-of-k by the verifier' if bo else ''} "
            "(generated tokens per problem):", "",
            *_table(["model"] + [f"k={k}" for k in ks], par), "", *gains, *([""] if gains else []),
            "s1's metrics for budget forcing: control (share of samples whose thinking stayed within the "
            "forced bounds), scaling (mean slope of accuracy per 1,000 thinking tokens over budget pairs), "
            "performance (best accuracy):", "",
            *_table(["model", "s1 control", "scaling", "performance"], s1), "",
            f"![thinking longer vs sampling more]({folder}/scaling_axes.png)", ""]


def _verifier_section(root: Path) -> list[str]:
    """`make ablation-verifier`: the demo's models sampled n times, best-of-k by a verifier trained on the
    teacher's verdicts against maj@k."""
    res = _load(root / "ablation-verifier" / "eval" / "results.json")
    if res is None:
        return []
    v = (_load(root / "ablation-verifier" / "verifier" / "verifier" / "manifest.json") or {}).get("counts", {})
    held = v.get("held_out_ordered")
    return ["## 7e. Ablation: best-of-k by a verifier trained on the teacher's verdicts, against maj@k",
            f"The verifier (the teacher's body with a scalar head, TRL's RewardTrainer on {v.get('pairs')} pairs of a "
            f"correct and a wrong teacher sample; {v.get('wrong')} of {v.get('samples')} samples wrong) orders "
            f"{'-' if held is None else f'{held:.3f}'} of {v.get('held_out_pairs')} held-out pairs right. Every "
            f"model sampled {res['n']} times per problem on the same {res['n_problems']} held-out problems.", "",
            *_scaling_section(res["models"], res["budgets"], "ablation-verifier/eval")]


# runs/<run>/<folder>/ of each training ablation (Makefile targets ablation-gkd, -opd, -select): its section's
# title and what it compares
ABLATIONS = (
    ("ablation", "7b. Ablation: SFT vs logit distillation (GKD) at equal training wall time",
     "The same student (init, data, optimizer settings) trained on the teacher's filtered traces by SFT, and "
     "by GKD (generalized JSD to the teacher's next-token distributions, partly on the student's own "
     "samples), each for the same training time."),
    ("ablation-opd", "7c. Ablation: on-policy distillation after SFT vs SFT continued, at equal wall time",
     "The SFT'd student (as evaluated above) trained on for the same training time, by SFT on the same "
     "traces, or by on-policy distillation (it samples, the teacher scores every token of its samples: "
     "reverse KL)."),
    ("ablation-select",
     "7d. Ablation: half the training rows, selected by the teacher's pass rate vs at random",
     "The same student from the same init and for the same steps, trained on half the filtered rows: the "
     "problems the teacher solved least often first (hard but solved), or a random half."),
)


def _ablation_section(root: Path, folder: str, title: str, text: str) -> list[str]:
    """A training ablation's models side by side, when runs/<run>/<folder>/ holds its eval."""
    res = _load(root / folder / "eval" / "results.json")
    if res is None:
        return []
    rows, own = [], []
    for m in res["models"]:
        # the ablation's own models, or the demo's (a baseline it starts from)
        s = (_load(root / folder / "sft" / m["name"] / "manifest.json")
             or _load(root / "sft" / m["name"] / "manifest.json") or {"counts": {}, "timings": {}})
        steps, train_s = s["counts"].get("steps"), s["timings"].get("train_s")
        if (root / folder / "sft" / m["name"]).is_dir() and steps and train_s:
            own.append((m["name"], s.get("method"), steps, train_s, m["budgets"][-1]["accuracy"]))
        rows.append([m["name"], s.get("method", "-"), s["counts"].get("rows", "-"), steps or "-",
                     f"{train_s:.0f}" if train_s else "-",
                     f"{train_s / steps:.3f}" if train_s and steps else "-"]
                    + [f"{b['accuracy']:.3f} ± {b['accuracy_std']:.3f}" for b in m["budgets"]])
    return [f"## {title}", f"{text} Accuracy on the same {res['n_problems']} held-out problems.", "",
            *_table(["model", "method", "rows", "steps", "train s", "s/step"]
                    + [f"B={b}" for b in res["budgets"]], rows), "", *_per_step(own, res["budgets"][-1])]


def _per_step(own: list[tuple], budget: int) -> list[str]:
    """When the ablation trained by two methods: what a step of each cost and where each got (the why of an
    equal-time comparison: the costlier step gets fewer of them)."""
    if len({o[1] for o in own}) < 2:
        return []
    cheap, dear = min(own, key=lambda o: o[3] / o[2]), max(own, key=lambda o: o[3] / o[2])
    ratio = (dear[3] / dear[2]) / (cheap[3] / cheap[2])
    lead = dear[4] - cheap[4]
    return [f"One {dear[1]} step cost {ratio:.1f}x one {cheap[1]} step here, so {dear[0]} took {dear[2]} "
            f"steps in {dear[3]:.0f} s where {cheap[0]} took {cheap[2]} in {cheap[3]:.0f} s; at B={budget} "
            f"{dear[0]} is {abs(lead):.3f} {'ahead' if lead >= 0 else 'behind'}.", ""]


def _filter_ablation_section(root: Path, res: dict) -> list[str]:
    """The largest student trained on the teacher's unfiltered traces (every sample as written, `filter
    drop=[]`) against the same student on the filtered set, same init and steps (`make demo`)."""
    abl = _load(root / "ablation-filter" / "eval" / "results.json")
    if abl is None:
        return []
    rows = []
    for m in [*(m for m in res["models"] if m["name"] + "-unfiltered" in {a["name"] for a in abl["models"]}),
              *abl["models"]]:
        s = _load(root / "sft" / m["name"] / "manifest.json") or {"counts": {}, "inputs": {}}
        data = Path(s["inputs"].get("data", {}).get("path", "?")).parent.name
        f = _load(root / "filter" / data / "stats.json") or {}
        wrong = sum(f.get("kept_anyway", {}).get(k, 0) for k in ("wrong", "truncated"))
        rows.append([m["name"], data, f.get("kept", "-"), wrong, s["counts"].get("steps", "-")]
                    + [f"{b['accuracy']:.3f} ± {b['accuracy_std']:.3f}" for b in m["budgets"]
                       if b["budget"] in abl["budgets"]])
    return ["## 7. Ablation: filtered vs unfiltered traces",
            ("The largest student from the same init and for the same steps, trained on the filtered set and on "
             "every trace the teacher wrote (wrong, truncated and duplicate ones included); both evaluated on "
             f"the same {abl['n_problems']} held-out problems and samples."), "",
            *_table(["model", "data", "rows", "wrong or truncated rows", "steps"]
                    + [f"B={b}" for b in abl["budgets"]], rows), ""]


def _greedy(root: Path) -> dict:
    """Per model of the greedy eval (runs/<run>/quantized-greedy): accuracy at the largest budget and its
    (problem, budget) -> (thinking tokens, answer), to compare a quantized model's outputs with its source's."""
    res = _load(root / "quantized-greedy" / "eval" / "results.json")
    if res is None:
        return {}
    out = {m["name"]: {"accuracy": m["budgets"][-1]["accuracy"], "outputs": {}} for m in res["models"]}
    for line in (root / "quantized-greedy" / "eval" / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["model"]]["outputs"][(r["problem_id"], r["budget"], r["sample"])] = (r["thinking_tokens"], r["answer"])
    return out


def _quantized_section(root: Path) -> list[str]:
    """Quantized models against their fp32 source (`make demo-quantized`), when runs/<run>/quantized/ holds
    their eval: accuracy change and generation speed, each measured in the same eval run; and, from the
    greedy eval beside it, how many outputs are token for token the fp32 model's."""
    res = _load(root / "quantized" / "eval" / "results.json")
    if res is None:
        return []
    greedy = _greedy(root)
    by_path = {str(Path(m["path"]).resolve()): m for m in res["models"] if "quantized_from" not in m}
    rows = []
    for m in res["models"]:
        src = by_path.get(str(Path(m["quantized_from"]["source"]).resolve())) if "quantized_from" in m else m
        if src is None:
            continue
        q = _load(Path(m["path"]).parent / "manifest.json") or {"counts": {}}
        if m is src and (Path(m["path"]) / "model.safetensors").is_file():
            q["counts"]["quantized_mb"] = round((Path(m["path"]) / "model.safetensors").stat().st_size / 1e6, 3)
        acc, base = m["budgets"][-1]["accuracy"], src["budgets"][-1]["accuracy"]
        tps = m["cost"]["tokens_per_s"]
        g, gs = greedy.get(m["name"]), greedy.get(src["name"])
        same = (sum(g["outputs"].get(k) == v for k, v in gs["outputs"].items()) / max(len(gs["outputs"]), 1)
                if g and gs else None)
        rows.append([m["name"], m.get("quantized_from", {}).get("format", "fp32"), m["backend"]["backend"],
                     q["counts"].get("quantized_mb", "-"), f"{acc:.3f}", f"{acc - base:+.3f}" if m is not src else "-",
                     f"{g['accuracy']:.3f}" if g else "-", f"{same:.3f}" if same is not None else "-",
                     f"{tps:,.0f}", f"{tps / src['cost']['tokens_per_s']:.2f}", f"{m['cost']['latency_p50_s']:.3f}"])
    b = res["budgets"][-1]
    return ["## 8. Quantized models: accuracy change and speed",
            (f"Each model quantized by `distill quantize` and evaluated by `distill eval` on the same "
             f"{res['n_problems']} held-out problems as its fp32 source: sampled ({res['n']} samples, temperature "
             f"{res['temperature']}; a difference within about two standard errors is sampling noise, the "
             "quantized and fp32 models drawing different random numbers) and greedy (temperature 0: the share "
             "of (problem, budget) outputs identical to the fp32 model's, thinking and answer). GGUF runs through "
             "llama.cpp one sample at a time (single stream, 1 thread); fp32 and bitsandbytes run batched through "
             "transformers, so tokens/s compares serving modes; `bench/local_inference.py` compares single "
             "streams."), "",
            *_table(["model", "format", "backend", "file MB", f"accuracy B={b}", "Δ vs fp32", f"greedy B={b}",
                     "greedy = fp32", "tokens/s", "÷ fp32", "latency p50 s"], rows), ""]


def checks(res: dict) -> list[tuple[str, bool, str]]:
    """The demo's targets (issue 12), checked on what came out (nothing here feeds back into training)."""
    models = res["models"]
    top = {m["name"]: m["budgets"][-1]["accuracy"] for m in models}
    teacher = next((m for m in models if m["role"] == "teacher"), None)
    students = sorted((m for m in models if m["role"] == "student"), key=lambda m: m["params"])
    out = []
    if teacher:
        out.append(("teacher accuracy at the largest budget >= 0.9", top[teacher["name"]] >= 0.9,
                    f"{top[teacher['name']]:.3f}"))
    for m in models:
        accs = [b["accuracy"] for b in m["budgets"]]
        rising = all(b >= a - 0.02 for a, b in zip(accs, accs[1:]))
        out.append((f"{m['name']}: accuracy never drops with the budget (by > 0.02)", rising,
                    " → ".join(f"{a:.2f}" for a in accs)))
    controls = {m["name"]: m["s1"]["control"] for m in models}
    out.append(("s1 control 1.0 for every model", all(c == 1.0 for c in controls.values()),
                ", ".join(f"{k} {v:.2f}" for k, v in controls.items())))
    for s in students:
        out.append((f"{s['name']} learns: >= 0.3 at the largest budget", top[s["name"]] >= 0.3,
                    f"{top[s['name']]:.3f}"))
    if len(students) > 1:
        accs = [top[s["name"]] for s in students]
        out.append(("accuracy rises with student size by >= 0.05 between neighbours",
                    all(b - a >= 0.05 for a, b in zip(accs, accs[1:])),
                    " < ".join(f"{s['name']} {top[s['name']]:.2f}" for s in students)))
    if teacher and students:
        big = students[-1]
        ratio = top[big["name"]] / max(top[teacher["name"]], 1e-9)
        out.append((f"{big['name']} keeps >= 0.9 of the teacher's accuracy", ratio >= 0.9, f"{ratio:.2f}"))
        t, b = teacher["cost"].get("best"), big["cost"].get("best")
        if t and b:
            r = b["cost_per_correct"] / t["cost_per_correct"]
            out.append((f"{big['name']}'s cost per correct answer at its best budget <= 0.7 of the teacher's",
                        r <= 0.7, f"{r:.2f} (FLOPs: {b['flops_per_correct'] / t['flops_per_correct']:.2f})"))
    return out


def run(cfg: ReportConfig) -> Path:
    started = time.time()
    root = Path(cfg.runs_dir) / cfg.run
    res = _load(root / "eval" / "results.json")
    if res is None:
        raise UserError(f"report: {root / 'eval' / 'results.json'} not found (run `distill eval` first)")
    lines = [f"# {cfg.title}", "", f"Run `{cfg.run}`, written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
             " Every number below is read from the stages' artifacts under this folder.", ""]
    results = checks(res)
    lines += ["## Summary", *_table(["target", "met", "measured"],
                                    [[t, "yes" if ok else "**no**", v] for t, ok, v in results]), ""]
    lines += (_data_sections(root) + _eval_sections(res) + _filter_ablation_section(root, res)
              + [x for a in ABLATIONS for x in _ablation_section(root, *a)] + _verifier_section(root)
              + _quantized_section(root))
    atomic_write_text(root / "report.md", "\n".join(lines) + "\n")
    out = stage_dir(cfg.runs_dir, cfg.run, "report")
    finish(out, "report", cfg, {"results": root / "eval" / "results.json"},
           {"targets_met": sum(ok for _, ok, _ in results), "targets": len(results)}, started)
    print(f"report: {sum(ok for _, ok, _ in results)}/{len(results)} targets met -> {root / 'report.md'}")
    return root / "report.md"
