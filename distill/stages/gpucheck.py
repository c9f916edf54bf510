"""`distill gpu-check` (`make gpu-check`): before a long run on a new GPU box, do the student recipes train
here as shipped, how fast, and does the memory plan hold? Nothing is downloaded.

    make gpu-check                          # the 1.5B and 7B recipes, 10 steps each, on this machine's GPU
    distill gpu-check scale=tiny steps=3    # the same steps with 2-layer models (CPU: what the test runs)

1. The machine's facts (distill/capabilities.py) and, per recipe, what each feature it asks for became (read
   from its sft manifest).
2. The device's matrix-multiply ceiling, measured (bf16 8192^3 on a GPU, fp32 on CPU): MFU's denominator.
3. A tokenizer and a long-CoT-shaped SFT set made here: the demo's tokenizer (`distill problems`,
   `distill tokenizer`) and rows whose <think> strings the builtin tasks' reference traces together, 1/8 to
   all of max_length tokens long.
4. Per recipe: its shipped config.json with random weights (bf16, built on the GPU; `scale=tiny`: 2 narrow
   layers, fp32), `distill plan` for one GPU of this machine, then `distill sft` with the recipe's own settings
   at the micro-batch the plan picks (the recipe's, or the largest that fits), `steps` steps. Each stage is its
   own process, as a user runs it; its log is kept in runs/<run>/logs/.
5. Batched generation tokens/s of the first recipe's model through the transformers backend, and through vLLM
   when .venv-vllm is there (`prompts` prompts, `budget` new tokens each, no stop token).
MFU = steady tokens/s (the steps after the first) x model FLOPs per token / the measured ceiling; model FLOPs
per token = 6 x parameters + 12 x layers x hidden x the mean causal context (each row attends within itself).
Output: runs/<run>/{report.md, results.json}; the table on stdout.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill import capabilities as caps
from distill import tasks
from distill.artifacts import UserError, atomic_write_json, atomic_write_text, finish, stage_dir
from distill.config import Pos, check_literals, opt

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 4096}  # head size 32: vLLM's CPU kernels take it


@dataclass
class GpuCheckConfig:
    run: str = opt("gpu-check", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    recipes: list[str] = opt(
        lambda: ["students/qwen2.5-1.5b.yaml", "students/qwen2.5-7b.yaml"], "the student recipes to train")
    scale: Literal["full", "tiny"] = opt(
        "full", "tiny: 2 narrow layers in place of each recipe's architecture")
    steps: Pos = opt(10, "training steps per recipe (throughput leaves out the first)")
    max_length: int = opt(0, "tokens per row (0: the recipe's; tiny: 256)")
    prompts: Pos = opt(64, "generation: prompts in one batch")
    budget: Pos = opt(512, "generation: new tokens per prompt")
    with_vllm: bool | None = opt(None, "generation through .venv-vllm too (None: when it is there)")
    seed: int = opt(
        0, "seeds every random choice of the stage: the same settings and inputs give the same outputs")

    def __post_init__(self):
        check_literals(self)
        if not self.recipes:
            raise ValueError("recipes is empty: give the student recipes to check")
        for r in self.recipes:
            if not Path(r).is_file():
                raise ValueError(f"recipes: {r} not found")


def matmul_ceiling(device: str) -> float:
    """Measured FLOP/s of a large matrix product on this device (bf16 on a GPU, fp32 on CPU)."""
    import torch

    cuda = device.startswith("cuda")
    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _rows(tok, count: int, max_length: int, seed: int) -> tuple[list[dict], list[int]]:
    """Long-CoT-shaped chat rows: a problem, then a <think> of reference traces joined up to a drawn length
    (1/8 to all of max_length tokens), then the answer. Returns the rows and their token lengths."""
    rng = random.Random(seed)
    pool = tasks.generate("chain", [1, 2, 3, 4], 400, "train", seed, 0.2)
    traces = [tasks.reference_solution(p)[0] for p in pool]
    sizes = [len(ids) + 1 for ids in tok(traces, add_special_tokens=False).input_ids]
    rows, lengths = [], []
    for _ in range(count):
        target, parts, size, p = rng.randint(max_length // 8, max_length), [], 0, rng.choice(pool)
        while size < target:
            k = rng.randrange(len(traces))
            parts.append(traces[k])
            size += sizes[k]
        msg = [{"role": "user", "content": p["problem"]},
               {"role": "assistant", "content": "<think>\n" + "\n".join(parts) + "\n</think>\n"
                + tasks.reference_solution(p)[1]}]
        rows.append({"messages": msg})
        lengths.append(len(tok.apply_chat_template(msg, tokenize=True)))
    return rows, lengths


def _build_model(config_json: Path, tok_dir: Path, dest: Path, scale: str, device: str) -> int:
    """The recipe's architecture with random weights (memory and speed do not depend on their values), saved
    with the tokenizer; bf16 on a GPU, fp32 on CPU. Returns the parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = AutoConfig.for_model(**{**json.loads(config_json.read_text()), **(TINY if scale == "tiny" else {}),
                                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                                     "bos_token_id": None})
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    if not (dest / "config.json").is_file():
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return params


def _distill(args: list[str], log: Path, python: str | None = None) -> tuple[bool, str]:
    """One stage as a user runs it, its output kept in `log`; (ok, the last line of its error)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run([python or sys.executable, "-m", "distill.cli", *args], stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-1:] or [""]
    return proc.returncode == 0, tail[0][:300]


def _train(cfg: GpuCheckConfig, recipe: str, out: Path, data: Path, lengths: list[int], gpu_gb: float) -> dict:
    from distill.config import load_recipe

    r = load_recipe(recipe)
    name = Path(recipe).stem
    sec = r.get("sft") or {}
    arch = Path((r.get("plan") or {}).get("arch", f"students/configs/{name}.json"))  # as the recipe says: from here
    model = out / "models" / name
    common = [f"run={cfg.run}", f"runs_dir={cfg.runs_dir}", f"name={name}"]
    max_length = cfg.max_length or (256 if cfg.scale == "tiny" else sec.get("max_length", 2048))
    row = {"recipe": name, "max_length": max_length}
    row["params"] = _build_model(arch, out.parent / "tokenizer", model, cfg.scale, caps.local_device())
    ok, err = _distill(["plan", "--config", recipe, *common, f"arch={model}", "gpus=1", "engine=ddp", "batch_size=1",
                        f"max_length={max_length}", f"gpu_memory={gpu_gb:.1f}"], out / "logs" / f"{name}-plan.log")
    if not ok:
        return row | {"error": f"plan: {err}"}
    plan = json.loads((Path(cfg.runs_dir) / cfg.run / "plan" / name / "plan.json").read_text())
    mb = min(sec.get("batch_size", 1), plan["largest_micro_batch"])
    row["micro_batch"] = mb
    ok, err = _distill(["sft", "--config", recipe, *common, f"model={model}", f"data={data}", f"batch_size={mb}",
                        "grad_accum=1", f"max_length={max_length}", f"trl.max_steps={cfg.steps}", "logging_steps=1",
                        "save_steps=1000000", f"seed={cfg.seed}"], out / "logs" / f"{name}-sft.log")
    if not ok:
        return row | {"error": f"sft: {err}"}
    m = json.loads((Path(cfg.runs_dir) / cfg.run / "sft" / name / "manifest.json").read_text())
    c = json.loads(arch.read_text()) | (TINY if cfg.scale == "tiny" else {})
    cut = [min(n, max_length) for n in lengths]
    context = sum(n * (n + 1) / 2 for n in cut) / sum(cut)  # mean causal context of a token
    flops = 6 * m["counts"]["params"] + 12 * c["num_hidden_layers"] * c["hidden_size"] * context
    tps = m["timings"].get("steady_tokens_per_s") or m["timings"]["tokens_per_s"]
    return row | {"steps": m["counts"]["steps"], "tokens_per_s": tps, "flops_per_token": flops,
                  "peak_gb": m["memory"]["peak_gb"], "plan_gb": m["memory"]["plan_gb"],
                  "decisions": {k: v["used"] for k, v in m["capabilities"]["decisions"].items()},
                  "fallbacks": [f"{f['wanted']} -> {f['used']}" for f in m["fallbacks"]]}


def generation(kind: str, model: str, prompts: int, budget: int) -> dict:
    """Tokens/s of `prompts` prompts in one batch, up to `budget` new tokens each, after a warm-up. The weights
    are random: a row stops only where it happens to draw the end-of-text token."""
    from distill import backends
    from distill import generate as G
    from distill.artifacts import Fallbacks

    backend = backends.load(kind, model, settings={}, fallbacks=Fallbacks(), batch_size=prompts)
    ids = [G.think_prompt(backend.tok, f"{i} 1+{i % 7}=?") for i in range(prompts)]
    kw = {"temperature": 0.6, "top_p": 0.95, "seed": 0}
    stop = [backend.tok.eos_token_id]
    backend.generate(ids[:2], 8, stop, **kw)  # warm-up
    start = time.perf_counter()
    gens = backend.generate(ids, budget, stop, **kw)
    seconds = time.perf_counter() - start
    backend.close()
    tokens = sum(len(g.ids) for g in gens)
    return {"backend": kind, "prompts": prompts, "budget": budget, "tokens": tokens,
            "tokens_per_s": tokens / seconds}


def _generation_in(python: str, kind: str, model: str, cfg: GpuCheckConfig, log: Path) -> dict:
    """generation() in another interpreter (vLLM lives in .venv-vllm)."""
    code = (f"import json; from distill.stages.gpucheck import generation; "
            f"print('RESULT', json.dumps(generation({kind!r}, {model!r}, {cfg.prompts}, {cfg.budget})))")
    with open(log, "w") as f:
        subprocess.run([python, "-c", code], stdout=f, stderr=subprocess.STDOUT, check=False)
    lines = log.read_text(errors="replace").splitlines()
    found = [x for x in lines if x.startswith("RESULT ")]
    if not found:
        return {"backend": kind, "error": ([x for x in lines if x.strip()] or [""])[-1][:300]}
    return json.loads(found[-1][len("RESULT "):])


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _table(facts: caps.Facts, ceiling: float, rows: list[dict], gens: list[dict]) -> str:
    ceiling_line = f"{'matmul ceiling (measured)':<28}{ceiling / 1e12:.1f} TFLOP/s"
    header = ("| recipe | params | micro-batch x tokens | tokens/s | MFU | peak GB (measured) | plan GB "
              "| plan / measured | what ran |")
    lines = ["# gpu-check", "", "```", caps.table(facts), ceiling_line, "```", "", header,
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {_count(r.get('params', 0))} | | failed: {r['error']} | | | | | |")
            continue
        d = r["decisions"]
        ran = f"{d['attention']}, {d['batching']}, {d['optimizer']}, {d['precision']}, Liger {d['liger']}"
        ratio = f"{r['plan_gb'] / r['peak_gb']:.2f}" if r.get("plan_gb") else "-"
        lines.append(f"| {r['recipe']} | {_count(r['params'])} | {r['micro_batch']} x {r['max_length']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['mfu']:.3f} | {r['peak_gb']:.2f} | "
                     f"{r['plan_gb'] if r['plan_gb'] is not None else '-'} | {ratio} | {ran} |")
    lines += ["", "| generation | prompts x new tokens | tokens/s |", "|---|---|---|"]
    for g in gens:
        lines.append(f"| {g['backend']} | {g.get('prompts', '')} x {g.get('budget', '')} | "
                     + (f"{g['tokens_per_s']:,.0f} |" if "tokens_per_s" in g else f"failed: {g['error']} |"))
    return "\n".join(lines) + "\n"


def run(cfg: GpuCheckConfig) -> Path:
    import torch

    started = time.time()
    facts = caps.probe()
    print(caps.table(facts), flush=True)
    out = stage_dir(cfg.runs_dir, cfg.run, "gpu-check")
    ceiling = matmul_ceiling(facts.device)
    print(f"{'matmul ceiling (measured)':<28}{ceiling / 1e12:.1f} TFLOP/s", flush=True)  # before the long part
    gpu_gb = torch.cuda.get_device_properties(facts.device).total_memory / 1e9 if facts.cuda else 80.0
    common = [f"run={cfg.run}", f"runs_dir={cfg.runs_dir}"]
    for stage in ("problems", "tokenizer"):
        ok, err = _distill([stage, "--config", "eval/demo.yaml", *common], out / "logs" / f"{stage}.log")
        if not ok:
            raise UserError(f"gpu-check: {stage}: {err}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(cfg.runs_dir) / cfg.run / "tokenizer")
    longest = cfg.max_length or (256 if cfg.scale == "tiny" else 32768)
    rows, lengths = _rows(tok, 64 if cfg.scale == "tiny" else 256, longest, cfg.seed)
    data = out / "train.jsonl"
    atomic_write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
    results = []
    for recipe in cfg.recipes:
        print(f"gpu-check: {recipe} ...", flush=True)
        r = _train(cfg, recipe, out, data, lengths, gpu_gb)
        if "tokens_per_s" in r:
            r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / ceiling
        results.append(r)
    gens = []
    first = out / "models" / Path(cfg.recipes[0]).stem
    if (first / "config.json").is_file():
        gens.append(_generation_in(sys.executable, "transformers", str(first), cfg, out / "logs" / "gen-transformers.log"))
        vllm = Path(".venv-vllm") / "bin" / "python"  # beside .venv, where `make install-vllm` puts it
        if cfg.with_vllm or (cfg.with_vllm is None and vllm.is_file()):
            gens.append(_generation_in(str(vllm), "vllm", str(first), cfg, out / "logs" / "gen-vllm.log"))
    report = _table(facts, ceiling, results, gens)
    atomic_write_text(out / "report.md", report)
    atomic_write_json(out / "results.json", {"facts": caps.as_dict(facts, {})["facts"], "matmul_flops": ceiling,
                                             "training": results, "generation": gens})
    finish(out, "gpu-check", cfg, {}, {"recipes": len(results), "failed": sum("error" in r for r in results)},
           started)
    print(report)
    print(f"gpu-check: -> {out / 'report.md'}")
    return out
