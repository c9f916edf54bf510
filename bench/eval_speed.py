"""Generation tokens/s of the demo's models the way `distill eval` generates, and where the time goes.

    .venv/bin/python bench/eval_speed.py [--models teacher,student-s,student-l] [--threads 1,2]
        [--variants base,dynamic+hf_sampling] [--phase thinking|eval] [--repeat 2] [--fresh]
    .venv/bin/python bench/eval_speed.py --profile student-s [--warm] [--ops] [--variants dynamic+hf_sampling]

Each model is loaded through distill.backends.transformers.load (as `eval` loads it: dtype auto, sdpa, batch
size 200) and driven through the backend's primitive `backend.generate(prompts, max_new, stop, ...)` with
eval's prompts: the 200 held-out problems of runs/demo/problems/eval.jsonl x n=2, rendered by
distill.generate.think_prompt, temperature 0.6, top_p 0.95, seed 0.

  --phase thinking  the thinking phase at the largest budget (max_new 256, stop </think> or eos): the bulk of
                    eval's generated tokens;
  --phase eval      everything eval generates for one model (distill.eval._generate_all: thinking, natural
                    answers, one forced answer per cut), i.e. what eval's tokens/s counts; printed per phase too.

tokens/s = generated tokens (the Gen ids: non-pad, up to and including the stop token) / wall seconds of the
call, after a 16-token warm-up call. `page_faults` are the process's minor page faults during the call;
`outputs` a hash of every generated token id (equal hashes: identical outputs).
Repeat 0 of a variant is the first long generation of its process (the state `eval`'s first model meets);
later repeats run in the steady state. `--fresh` runs every (model, threads, variant) in its own process.

Variants, `+`-joined (e.g. dynamic+hf_sampling+b100):
  base            what distill/backends/transformers.py does: on CPU a static KV cache and top-p without
                  torch.sort (see the note above its _cpu_warpers); the same tokens as dynamic+hf_sampling
  dynamic/static  cache_implementation="dynamic" (the cache grows by torch.cat every step) / "static"
  hf_sampling     transformers' own temperature and TopPLogitsWarper
  draw            the token drawn by a logits processor (inverse CDF on one uniform per row, InverseCdfDraw)
                  instead of torch.multinomial (an exponential per vocabulary entry), generate in greedy mode
                  keeping it: the same distribution, another random stream (not in the backend)
  eager           attn_implementation="eager" instead of sdpa (reloads the model)
  topp1           top_p=1.0: NOT the same distribution, a probe of what top-p filtering costs
  b50/b100/b400   batch size 50/100/400 instead of 200 (rows land in other batches: other random streams)

--profile MODEL times the decoding loop of that model's thinking phase (one run, the first --threads value,
the first --variants value) per decoding step: model forward (and inside it: KV-cache update, attention, MLP,
norms, lm_head, causal mask), logits processors (temperature, top-p; with `draw`, the draw), transformers'
draw (softmax + multinomial), stopping criteria, generate's bookkeeping (prepare_inputs_for_generation,
_update_model_kwargs_for_generation) and the rest of the loop (torch.cat of input_ids, pad masking, Python).
Timers are wrappers around those functions (CPU ops are synchronous, so the wall time between is theirs).
--warm profiles after one whole thinking phase (steady state); --ops adds torch.profiler's top operators (the
profiler slows the run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from distill.config import make

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "student-s", "student-l")
TEMPERATURE, TOP_P, SEED, N, BATCH, MAX_NEW = 0.6, 0.95, 0, 2, 200, 256
ARGS = argparse.Namespace(models_dir=str(ROOT / "runs/demo/sft"), problems=str(ROOT / "runs/demo/problems/eval.jsonl"))


def _load(name: str, attn: str = "sdpa", batch_size: int = BATCH):
    from distill import backends
    from distill.artifacts import Fallbacks

    path = Path(ARGS.models_dir) / name
    path = path / "model" if (path / "model").is_dir() else path
    return backends.load("transformers", str(path), settings={}, fallbacks=Fallbacks(), dtype="auto", attn=attn,
                         batch_size=batch_size)


def _problems() -> list[dict]:
    from distill.artifacts import read_jsonl

    return read_jsonl(ARGS.problems)


def _prompts(tok) -> list[list[int]]:
    from distill import generate as G

    return [G.think_prompt(tok, p.get("prompt") or p["problem"]) for p in _problems() for _ in range(N)]


def _stop(backend) -> list[int]:
    from distill import generate as G

    return list(G.stop_tokens(backend.tok))


class InverseCdfDraw:
    """Draws each row's token from softmax(scores) by the inverse CDF of one uniform from torch's generator,
    and returns scores that greedy decoding turns into that token (0 there, -inf elsewhere)."""

    def __call__(self, input_ids, scores):
        import torch

        cdf = scores.softmax(dim=-1, dtype=torch.float64).cumsum(dim=-1)
        u = torch.rand(scores.shape[0], 1, dtype=torch.float64) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, -float("inf")).scatter_(1, pick, 0.0)


def _variant(variant: str) -> tuple[dict, dict, dict]:
    """(load kwargs, model.generate kwargs overriding the backend's, backend.generate kwargs) of a variant."""
    from transformers import LogitsProcessorList

    from distill.backends.transformers import _cpu_warpers

    hf_sampling = {"logits_processor": None, "do_sample": True, "temperature": TEMPERATURE, "top_p": TOP_P, "top_k": 0}
    load_kw, model_kw, call_kw = {}, {}, {}
    for part in variant.split("+"):
        if part == "base":
            pass
        elif part in ("static", "dynamic"):
            model_kw["cache_implementation"] = part
        elif part == "hf_sampling":
            model_kw |= hf_sampling
        elif part == "draw":
            model_kw |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                         "logits_processor": LogitsProcessorList([*_cpu_warpers(TEMPERATURE, TOP_P, 0),
                                                                  InverseCdfDraw()])}
        elif part == "eager":
            load_kw["attn"] = "eager"
        elif part == "topp1":
            call_kw["top_p"] = 1.0
        elif part.startswith("b") and part[1:].isdigit():
            load_kw["batch_size"] = int(part[1:])
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    return load_kw, model_kw, call_kw


@contextlib.contextmanager
def _extra_generate_kwargs(backend, **extra):
    """Pass extra keyword arguments to every `model.generate` the backend makes (the variants' settings)."""
    if not extra:
        yield
        return
    original = backend.model.generate

    def generate(*a, **k):
        if "cache_implementation" in extra:  # generate refuses a cache object together with cache_implementation
            k.pop("cache", None)
        return original(*a, **(k | extra))
    backend.model.generate = generate
    try:
        yield
    finally:
        backend.model.generate = original


def _run_phase(backend, prompts, phase: str, **kw):
    """One timed generation: (generated tokens, seconds, per-call rows)."""
    gen_kw = {"temperature": TEMPERATURE, "top_p": TOP_P, "seed": SEED} | kw
    started = time.perf_counter()
    if phase == "thinking":
        gens = backend.generate(prompts, MAX_NEW, _stop(backend), desc="bench", **gen_kw)
        seconds = time.perf_counter() - started
        return sum(len(g.ids) for g in gens), seconds, [], _digest([g.ids for g in gens])
    from distill.stages.eval import EvalConfig, _generate_all, generated_tokens

    cfg = make(EvalConfig, models=[{"name": "m", "role": "student", "path": "m"}], budgets=[16, 32, 64, 128, 256], n=N,
                     temperature=gen_kw["temperature"], top_p=gen_kw["top_p"], max_answer_tokens=10,
                     batch_size=backend.batch_size, seed=SEED)
    calls, inner = [], backend.generate

    def generate(prompts, max_new, stop, **k):  # per phase: prompts, prompt tokens, generated tokens, seconds
        t0 = time.perf_counter()
        gens = inner(prompts, max_new, stop, **k)
        seconds = time.perf_counter() - t0
        tokens = sum(len(g.ids) for g in gens)
        calls.append({"call": k.get("desc", ""), "prompts": len(prompts), "max_new": max_new,
                      "prompt_tokens": sum(map(len, prompts)), "tokens": tokens, "seconds": round(seconds, 3),
                      "tokens_per_s": round(tokens / seconds)})
        return gens
    backend.generate = generate
    try:
        _, results, _, _, forced = _generate_all(cfg, backend, _problems())  # renders the same prompts itself
    finally:
        del backend.generate
    seconds = time.perf_counter() - started
    tokens = generated_tokens(results, forced)
    ids = [[t.ids, a.ids if a else None] for t, a in results] + [[k, g.ids] for k, g in sorted(forced.items())]
    return tokens, seconds, calls, _digest(ids)


def _digest(ids) -> str:
    """A short hash of every generated token id: equal digests, identical outputs."""
    import hashlib

    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]


def measure(name: str, threads: int, variants: list[str], phase: str, repeat: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    rows, loaded, warmed = [], {}, set()
    for r in range(repeat):
        for variant in variants:
            load_kw, model_kw, call_kw = _variant(variant)
            key = tuple(sorted(load_kw.items()))
            if key not in loaded:
                loaded[key] = _load(name, **load_kw)
            backend = loaded[key]
            prompts = _prompts(backend.tok)
            with _extra_generate_kwargs(backend, **model_kw):
                if variant not in warmed:  # 16 tokens: first-call allocations, lazy imports
                    warmed.add(variant)
                    backend.generate(prompts[-backend.batch_size:], 16, [backend.tok.eos_token_id],
                                     **({"temperature": TEMPERATURE, "top_p": TOP_P, "seed": 1} | call_kw))
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                tokens, seconds, calls, digest = _run_phase(backend, prompts, phase, **call_kw)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            row = {"model": name, "params": backend.params, "threads": threads, "variant": variant, "phase": phase,
                   "repeat": r, "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds),
                   "page_faults": faults, "outputs": digest}
            for c in calls:
                print("    " + json.dumps(c), flush=True)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


class _Timers:
    def __init__(self):
        self.total = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, owner, attr: str, label: str):
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.total[label] += time.perf_counter() - started
                self.calls[label] += 1
        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def hooks(self, module, label: str):
        """Forward pre/post hooks timing a module's calls."""
        starts: list[float] = []

        def pre(*_):
            starts.append(time.perf_counter())

        def post(*_):
            self.total[label] += time.perf_counter() - starts.pop()
            self.calls[label] += 1
        h1, h2 = module.register_forward_pre_hook(pre), module.register_forward_hook(post)
        return lambda: (h1.remove(), h2.remove())


def profile(name: str, threads: int, variant: str, ops: bool, warm: bool) -> dict:
    """Per-step wall time of the thinking phase's decoding loop, by part."""
    import torch
    import transformers.generation.utils as GU
    from transformers import cache_utils
    from transformers.generation import logits_process, stopping_criteria

    torch.set_num_threads(threads)
    load_kw, model_kw, call_kw = _variant(variant)
    backend = _load(name, **load_kw)
    batch = backend.batch_size
    prompts = _prompts(backend.tok)
    model = backend.model
    gen_kw = {"temperature": TEMPERATURE, "top_p": TOP_P} | call_kw
    with _extra_generate_kwargs(backend, **model_kw):
        if warm:  # the whole thinking phase once: the process's allocator is then in its steady state
            backend.generate(prompts, MAX_NEW, _stop(backend), seed=1, **gen_kw)
        else:
            backend.generate(prompts[-batch:], 16, [backend.tok.eos_token_id], seed=1, **gen_kw)
    t, undo = _Timers(), []
    # the model's forward: the first call of each generate is the prefill, timed apart
    state = {"prefill_s": 0.0, "first": True, "starts": [], "generate_s": 0.0}

    def pre(*_):
        state["starts"].append(time.perf_counter())

    def post(*_):
        dt = time.perf_counter() - state["starts"].pop()
        if state["first"]:
            state["prefill_s"] += dt
            state["first"] = False
        else:
            t.total["forward"] += dt
            t.calls["forward"] += 1
    h1, h2 = model.register_forward_pre_hook(pre), model.register_forward_hook(post)
    undo.append(lambda: (h1.remove(), h2.remove()))
    for layer in model.model.layers:
        undo.append(t.hooks(layer.self_attn, "fwd.attention (incl. cache update)"))
        undo.append(t.hooks(layer.mlp, "fwd.mlp"))
        undo.append(t.hooks(layer.input_layernorm, "fwd.norms"))
        undo.append(t.hooks(layer.post_attention_layernorm, "fwd.norms"))
    undo.append(t.hooks(model.model.norm, "fwd.norms"))
    undo.append(t.hooks(model.model.embed_tokens, "fwd.embedding"))
    undo.append(t.hooks(model.model.rotary_emb, "fwd.rotary"))
    undo.append(t.hooks(model.lm_head, "fwd.lm_head"))
    for cls in (cache_utils.DynamicLayer, cache_utils.StaticLayer):
        undo.append(t.wrap(cls, "update", "fwd.attention.cache_update"))
    modeling = importlib.import_module(type(model).__module__)  # the model's module imported create_causal_mask
    undo.append(t.wrap(modeling, "create_causal_mask", "fwd.causal_mask"))
    undo.append(t.wrap(logits_process.LogitsProcessorList, "__call__",
                       "logits processors (temperature, top-p[, draw])"))
    undo.append(t.wrap(stopping_criteria.StoppingCriteriaList, "__call__", "stopping criteria"))
    undo.append(t.wrap(torch, "multinomial", "transformers' draw (softmax + multinomial)"))
    undo.append(t.wrap(GU.nn.functional, "softmax", "transformers' draw (softmax + multinomial)"))
    undo.append(t.wrap(type(model), "prepare_inputs_for_generation", "generate: prepare_inputs"))
    undo.append(t.wrap(type(model), "_update_model_kwargs_for_generation", "generate: update_model_kwargs"))
    original_generate = model.generate

    def generate(*a, **k):
        state["first"] = True
        started = time.perf_counter()
        try:
            return original_generate(*a, **k)
        finally:
            state["generate_s"] += time.perf_counter() - started
    model.generate = generate
    undo.append(lambda: setattr(model, "generate", original_generate))
    prof = None
    if ops:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile
        prof = tprofile(activities=[ProfilerActivity.CPU])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with prof or contextlib.nullcontext(), _extra_generate_kwargs(backend, **model_kw):
        started = time.perf_counter()
        gens = backend.generate(prompts, MAX_NEW, _stop(backend), seed=SEED, **gen_kw)
        wall = time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    for u in reversed(undo):
        u()
    steps = t.calls["forward"]
    tokens = sum(len(g.ids) for g in gens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    longest = [max(len(gens[j].ids) for j in order[i:i + batch]) for i in range(0, len(order), batch)]
    slots = sum(len(order[i:i + batch]) * n for i, n in zip(range(0, len(order), batch), longest))
    loop_s = state["generate_s"] - state["prefill_s"]
    named = sum(v for k, v in t.total.items() if not k.startswith("fwd."))  # forward and the parts outside it
    out = {"model": name, "threads": threads, "batch": batch, "variant": variant, "warm": warm,
           "wall_s": round(wall, 3), "generate_s": round(state["generate_s"], 3),
           "prefill_s": round(state["prefill_s"], 3),
           "tokens": tokens, "tokens_per_s": round(tokens / wall), "page_faults": faults, "decode_steps": steps,
           "steps_per_batch": longest, "row_steps_decoded": slots,
           "useful_fraction (tokens / row-steps)": round(tokens / slots, 3),
           "ms_per_step": {k: round(1000 * v / steps, 3) for k, v in sorted(t.total.items())},
           "ms_per_step_rest (input_ids cat, pad masking, python)": round(1000 * (loop_s - named) / steps, 3),
           "ms_per_step_total (generate - prefill) / steps": round(1000 * loop_s / steps, 3)}
    print(json.dumps(out, indent=1), flush=True)
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--models-dir", default=ARGS.models_dir, help="folder of <model>/model (or <model>) folders")
    ap.add_argument("--problems", default=ARGS.problems)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--variants", default="base")
    ap.add_argument("--phase", default="thinking", choices=["thinking", "eval"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="each (model, threads, variant) in its own process")
    ap.add_argument("--profile", default="", help="a model to profile (instead of the tokens/s runs)")
    ap.add_argument("--warm", action="store_true")
    ap.add_argument("--ops", action="store_true")
    args = ap.parse_args()
    ARGS.models_dir, ARGS.problems = args.models_dir, args.problems
    threads = [int(x) for x in args.threads.split(",")]
    if args.profile:
        profile(args.profile, threads[0], args.variants.split(",")[0], args.ops, args.warm)
        return
    for name in args.models.split(","):
        for th in threads:
            if not args.fresh:
                measure(name, th, args.variants.split(","), args.phase, args.repeat)
                continue
            for variant in args.variants.split(","):
                subprocess.run([sys.executable, __file__, "--models", name, "--threads", str(th), "--variants", variant,
                                "--phase", args.phase, "--repeat", str(args.repeat), "--models-dir", args.models_dir,
                                "--problems", args.problems], check=True)


if __name__ == "__main__":
    main()
