"""The memory planner: will a training fit in GPU memory? Per GPU: weights, gradients, optimizer states,
activations and buffers for a student on an engine (ddp, fsdp, DeepSpeed ZeRO 1/2/3, ZeRO-3 with CPU offload),
a verdict, the largest micro-batch that fits and the gradient accumulation that keeps the global batch. Used by
the `plan` stage and by `sft` before it loads a model (a recipe's `plan:` section is a PlanConfig).

The architecture is built on the meta device from a config.json (no download); accelerate's
`calculate_maximum_sizes` gives the weights and the largest layer, DeepSpeed's ZeRO estimators (if deepspeed is
installed) are printed beside ours as a cross-check. What neither library estimates is ours: optimizer variants
(8-bit, paged, bf16 states), activations (by micro-batch, length, checkpointing and attention kernel), the loss
head and buffers. Model states follow the ZeRO paper (Rajbhandari et al. 2020, Fig. 1): 2 bytes of bf16 weights
+ 2 of gradients + K of optimizer state per parameter, each split over N GPUs by stage. GB here is 1e9 bytes, as
in the ZeRO paper; an "80 GB" H100 has ~85e9, so the verdict keeps ~6% slack. Each feature is planned as
distill/capabilities.py decides it for the machine (this one, or an assumed GPU).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill import capabilities as caps
from distill.artifacts import UserError
from distill.config import (
    NonNeg,
    NonNegFloat,
    Pos,
    PosFloat,
    check_choice,
    check_literals,
    check_positive,
    opt,
)

GB = 1e9
ENGINES = ("ddp", "fsdp", "zero1", "zero2", "zero3", "zero3_offload")
# optimizer -> (bytes of state per parameter in 32-bit states, in bf16 states); 8-bit Adam keeps m and v in one
# byte each whatever the weights' dtype (bitsandbytes; its per-block scales are <1% of that).
OPTIMIZERS = {"adamw_torch": (8, 4), "adamw_torch_fused": (8, 4), "paged_adamw_32bit": (8, 4),
              "adamw_bnb_8bit": (2, 2), "adamw_8bit": (2, 2), "paged_adamw_8bit": (2, 2), "sgd": (0, 0)}


@dataclass
class PlanConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("student", "the plan's name: runs/<run>/plan/<name>/")
    arch: str = opt("", "the student's config.json (or a model directory holding one)")
    teacher_arch: str = opt("", "a teacher loaded beside the student (sft's distill, gkd, gold): its config.json "
                                "or model directory; its weights count on every GPU (1/N under ZeRO-3)")
    training: dict = opt(dict, "the recipe's sft section (`training: *sft` in YAML)")
    engine: Literal["ddp", "fsdp", "zero1", "zero2", "zero3", "zero3_offload"] = opt(
        "ddp", "ddp, fsdp, zero1, zero2, zero3 or zero3_offload (students/accelerate/)")
    gpus: Pos = opt(1, "GPUs in the launch")
    gpu_memory: PosFloat = opt(80.0, "GB per GPU")
    global_batch: NonNeg = opt(
        0, "rows per optimizer step to keep (0: batch_size x grad_accum x gpus)")
    # Overrides of the training section (0 / "" / None: take the recipe's).
    max_length: NonNeg = opt(0, "tokens per row (0: the training section's)")
    batch_size: NonNeg = opt(0, "micro-batch per GPU")
    optim: str = opt("", "optimizer (empty: the training section's)")
    gradient_checkpointing: bool | None = opt(None, "(empty: the training section's)")
    attn_implementation: str = opt("", "(empty: the training section's)")
    liger: bool | None = opt(None, "Liger's kernels (default: training.trl.use_liger_kernel)")
    dtype: str = opt(
        "", "the weights as loaded (default: the training section's; auto: the checkpoint's own)")
    # How the bytes are kept. auto: from the engine, the weights' dtype and the mixed precision that will run.
    # mixed: bf16 compute with fp32 master weights and optimizer states (DeepSpeed, FSDP, DDP over fp32 weights:
    # 16 bytes per parameter, the ZeRO paper's); bf16: everything in the weights' half precision (one GPU / DDP
    # over a bf16 checkpoint); fp32: no mixed precision over fp32 weights (the CPU demo).
    precision: Literal["auto", "mixed", "bf16", "fp32"] = opt(
        "auto", "how the bytes are kept: auto (from the engine, the weights' dtype and the mixed precision that runs), mixed, bf16 or fp32")
    # GB per GPU for the CUDA context, NCCL buffers and allocator fragmentation (on CPU: what a first training step
    # costs beyond the model, ~0.05 GB measured, bench/plan_memory.py); default 2 on a GPU, 0.05 on CPU
    reserve: NonNegFloat | None = opt(
        None, "GB per GPU for the CUDA context, NCCL and fragmentation (default 2; on CPU 0.05)")

    def __post_init__(self):
        check_literals(self)
        if not self.arch:
            raise ValueError("`arch` is required (the student's config.json)")
        for key, literal in (("optim", caps.Optimizer), ("attn_implementation", caps.Attention),
                             ("dtype", caps.Dtype)):
            if getattr(self, key):
                check_choice(key, getattr(self, key), typing.get_args(literal))
        check_positive("gpus", self.gpus)
        check_positive("gpu_memory", self.gpu_memory)


def load_arch(path: str):
    """The model config from a config.json (or a directory holding one), without touching the Hub."""
    from transformers import AutoConfig

    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"plan: architecture not found: {path}")
    try:
        return AutoConfig.for_model(**json.loads(p.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"plan: {p}: not a model config ({str(e).splitlines()[0]})") from None


def meta_model(config):
    """The model with no memory behind its weights. torch.device('meta') rather than accelerate's
    init_empty_weights: under the latter transformers 5 leaves tied embeddings untied (1.78B for Qwen2.5-1.5B)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def architecture(config) -> dict:
    """Parameter counts and the shapes the activation formulas need."""
    from accelerate.utils import calculate_maximum_sizes

    model = meta_model(config)
    total_bytes, (largest_bytes, largest_names) = calculate_maximum_sizes(model)  # bf16: 2 bytes each
    layer = model.model.layers[0]
    c = config
    return {"params": sum(p.numel() for p in model.parameters()), "weight_bytes_bf16": total_bytes,
            "largest_layer_params": largest_bytes // 2, "largest_layer": largest_names,
            "decoder_layer_params": sum(p.numel() for p in layer.parameters()), "layers": c.num_hidden_layers,
            "hidden": c.hidden_size, "intermediate": c.intermediate_size, "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads, "head_dim": getattr(c, "head_dim", None)
            or c.hidden_size // c.num_attention_heads, "vocab": c.vocab_size, "class": type(layer).__name__}


def model_states(params: int, gpus: int, engine: str, optim: str, precision: str) -> dict:
    """Bytes per GPU of weights, gradients and optimizer states (with any fp32 master copy): ZeRO paper's
    accounting, Psi * (w + g + K) with the parts each stage splits divided by N."""
    w = 4 if precision == "fp32" else 2
    if optim not in OPTIMIZERS:
        raise UserError(f"plan: unknown optimizer {optim!r} (known: {', '.join(OPTIMIZERS)})")
    states = OPTIMIZERS[optim][1 if precision == "bf16" else 0]
    master = 4 if precision == "mixed" else 0
    n = gpus
    split_w = engine in ("fsdp", "zero3", "zero3_offload")
    split_g = split_w or engine == "zero2"
    split_o = engine != "ddp"
    opt = 0.0 if engine == "zero3_offload" else (states + master) * params / (n if split_o else 1)
    return {"weights": w * params / (n if split_w else 1), "gradients": w * params / (n if split_g else 1),
            "optimizer": opt, "host_optimizer": (states + master) * params / n if engine == "zero3_offload" else 0.0}


def activations(a: dict, micro_batch: int, seq: int, act_bytes: int, attn: str, checkpointing: bool,
                head: str = "logits", packed: bool = False) -> dict:
    """Bytes per GPU of what autograd keeps for backward, counted from what each op of a Qwen2 decoder layer
    saves (RMSNorm keeps its fp32 input, normalised and weighted outputs; q/k/v after RoPE, the attention output
    and its contiguous copy for o_proj; SwiGLU keeps gate, silu(gate), up and their product).
    attn: flash (no mask), sdpa (flash's memory plus the boolean mask transformers builds for padded or packed
    rows: one per micro-batch, shared by the layers), eager (the b x heads x s x s probabilities per layer).
    packed: padding-free rows (TRL's packing): the micro-batch is one row of micro_batch x seq tokens, so a mask
    or eager's probabilities span all of them. head: see `loss_head`."""
    e, h, i = act_bytes, a["hidden"], a["intermediate"]
    kv = a["kv_heads"] * a["head_dim"]
    tokens = micro_batch * seq
    rows, span = (1, tokens) if packed else (micro_batch, seq)
    norm = (4 + 2 * e) * h
    per_token = 2 * norm + 3 * e * h + 2 * e * kv + 4 * a["heads"] + 4 * e * i
    if attn == "eager":  # repeats k/v to every head and keeps the b x heads x s x s probabilities (fp32 + cast)
        per_token += 2 * e * (h - kv) + (4 + (e if e != 4 else 0)) * a["heads"] * span
    layer = per_token * tokens
    body = (a["layers"] * e * h * tokens + layer) if checkpointing else a["layers"] * layer
    mask = rows * span * span if attn == "sdpa" else 0  # one byte per (query, key) pair
    loss = norm * tokens + loss_head(a, tokens, e, head)
    return {"layers": body, "mask": mask, "head": loss, "total": body + mask + loss}


CPU_RESERVE = 0.05  # GB: a first sft step's fixed costs on CPU (thread pools, autograd, the dataset), measured

# TRL's chunked log-prob kernel (trl/kernels/chunked_logprob.py): up to 4,096 tokens x 32,768 vocabulary columns
# a tile.
TILE_TOKENS, TILE_VOCAB = 4096, 32768


def loss_head(a: dict, tokens: int, e: int, head: str) -> float:
    """Bytes of the loss head at the start of backward.
    logits: the model's own loss (what sft runs on CPU): nothing keeps the logits (the trainer drops the output
    before backward), but cross-entropy keeps fp32 log-probabilities, and its backward holds them with their
    incoming and outgoing gradients: 3 x 4 bytes x vocab per token.
    chunked: TRL's fused LM head (SFTTrainer on GPU, Liger or not: TRL turns Liger's fused loss off): per token
    its saved fp32 log-normaliser and entropy and int64 target (16 bytes), its fp32 outputs (log-prob, entropy,
    top-1 flag: 9), the hidden states it gathers (e x hidden) and their fp32 gradient (4 x hidden); once, a
    forward and a backward tile in the compute dtype and the fp32 gradient of the output embedding with its cast
    copy ((4 + e) x vocab x hidden)."""
    v, h = a["vocab"], a["hidden"]
    if head == "logits":
        return 12 * v * tokens
    tile = min(tokens, TILE_TOKENS) * min(v, TILE_VOCAB)
    return tokens * (25 + (e + 4) * h) + 2 * e * tile + (4 + e) * v * h


def buffers(a: dict, engine: str, gpus: int, precision: str, reserve_gb: float) -> dict:
    """Communication and gathering buffers the engines allocate beyond the model states."""
    out = {"reserve": reserve_gb * GB}
    w = 4 if precision == "fp32" else 2
    if engine == "ddp" and gpus > 1:
        out["ddp_buckets"] = w * a["params"]  # DDP's reducer buckets are a second copy of the gradients
    if engine == "fsdp":
        out["gathered_layers"] = 2 * 2 * w * a["decoder_layer_params"]  # current + prefetched unit, w and g
    if engine in ("zero3", "zero3_offload"):
        out["gathered_layers"] = 4 * a["largest_layer_params"]  # DeepSpeed's own largest_layer_memory
    if engine.startswith("zero") and precision == "mixed":
        out["fp32_grad_partition"] = 4 * a["params"] / gpus  # counted by DeepSpeed's estimators, not Fig. 1
    return out


def deepspeed_estimate(a: dict, engine: str, gpus: int) -> float | None:
    """DeepSpeed's own cold estimate of ZeRO-2/3 model states per GPU (32-bit Adam), when installed."""
    try:
        if engine == "zero2":
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as est

            return est(a["params"], gpus, 1, cpu_offload=False)[1]
        if engine in ("zero3", "zero3_offload"):
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as est

            return est(a["params"], a["largest_layer_params"], gpus, 1, cpu_offload=engine == "zero3_offload",
                       cpu_offload_params=False)[1]
    except ImportError:
        return None
    return None


def facts_for_plan():
    """This machine's facts on a GPU; from a machine without one, the GPU the recipe is planned for, on which
    every feature it asks for runs (a box without flash-attn plans itself when sft runs there)."""
    import torch

    return caps.probe({"flash", "liger", "bnb"}) if torch.cuda.is_available() else caps.ASSUMED_GPU


def resolve(cfg: PlanConfig, sft, facts: caps.Facts) -> dict:
    """The training shape as it will run: the plan's overrides over `sft` (the sft stage's config: the recipe's
    sft section with its defaults), each feature as `capabilities.decide` resolves it on a machine with these
    facts."""
    wants = caps.Wants(attn=cfg.attn_implementation or sft.attn_implementation,
                       liger=bool(sft.trl.get("use_liger_kernel")) if cfg.liger is None else cfg.liger,
                       optim=cfg.optim or sft.optim, precision=caps.wanted_precision(sft.trl),
                       dtype=cfg.dtype or sft.dtype, checkpoint_dtype=caps.checkpoint_dtype(cfg.arch),
                       engine=cfg.engine, packed=bool(sft.trl.get("padding_free") or sft.trl.get("packing")))
    choices = caps.decide(wants, facts)
    used = {k: c.used for k, c in choices.items()}
    precision = cfg.precision
    if precision == "auto":
        half = used["dtype"] in ("bfloat16", "float16")
        if used["precision"] == "fp32":
            precision = "bf16" if half else "fp32"  # no autocast: the weights' own dtype throughout
        else:
            precision = "bf16" if cfg.engine == "ddp" and half else "mixed"
    attn = used["attention"]
    return {"max_length": cfg.max_length or sft.max_length, "batch_size": cfg.batch_size or sft.batch_size,
            "optim": used["optimizer"], "liger": used["liger"] == "on", "precision": precision,
            "checkpointing": sft.gradient_checkpointing if cfg.gradient_checkpointing is None
            else cfg.gradient_checkpointing,
            "global_batch": cfg.global_batch or sft.batch_size * sft.grad_accum * cfg.gpus,
            "attn": "flash" if attn.startswith("flash") else attn,
            # on GPU SFTTrainer's chunked head; on CPU sft computes the model's own loss (distill/stages/sft.py)
            "head": "chunked" if facts.cuda else "logits",
            "packed": used["batching"] == "packed rows",
            "reserve": cfg.reserve if cfg.reserve is not None else 2.0 if facts.cuda else CPU_RESERVE,
            # on-policy methods sampling through vLLM on the training GPUs: vLLM takes its share of each GPU
            # (weights and KV cache) beside training (TRL's vllm_gpu_memory_utilization, default 0.3)
            "vllm_share": float(sft.trl.get("vllm_gpu_memory_utilization", 0.3))
            if sft.trl.get("use_vllm") and sft.trl.get("vllm_mode", "colocate") == "colocate" else 0.0,
            "machine": "this machine" if facts is not caps.ASSUMED_GPU else "a GPU with every feature it asks for",
            "fallbacks": [f"{k}: {c.wanted} -> {c.used} ({c.reason})" for k, c in choices.items() if c.reason]}


def estimate(a: dict, cfg: PlanConfig, shape: dict, micro_batch: int) -> dict:
    """Every line of the plan at one micro-batch; `total` is what the chosen settings need per GPU."""
    e = 4 if shape["precision"] == "fp32" else 2
    ms = model_states(a["params"], cfg.gpus, cfg.engine, shape["optim"], shape["precision"])
    variants = {o: model_states(a["params"], cfg.gpus, cfg.engine, o, shape["precision"])["optimizer"]
                for o in ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit")}
    acts = {(attn, ck): activations(a, micro_batch, shape["max_length"], e, attn, ck, shape["head"],
                                    shape["packed"])["total"]
            for attn in ("flash", "sdpa", "eager") for ck in (False, True)}
    buf = buffers(a, cfg.engine, cfg.gpus, shape["precision"], shape["reserve"])
    if shape.get("vllm_share"):
        buf["colocated_vllm"] = shape["vllm_share"] * cfg.gpu_memory * GB
    if shape.get("teacher_params"):  # frozen, in the weights' precision: no gradients or optimizer states
        shards = cfg.gpus if cfg.engine.startswith("zero3") else 1
        buf["teacher_weights"] = (4 if shape["precision"] == "fp32" else 2) * shape["teacher_params"] / shards
    act = acts[(shape["attn"], shape["checkpointing"])]
    total = ms["weights"] + ms["gradients"] + ms["optimizer"] + act + sum(buf.values())
    return {"micro_batch": micro_batch, "model_states": ms, "optimizer_variants": variants,
            "activations": {f"{k[0]}{'+checkpointing' if k[1] else ''}": v for k, v in acts.items()},
            "activations_used": act, "buffers": buf, "total": total}


def largest_fit(a: dict, cfg: PlanConfig, shape: dict, cap: int = 4096) -> int:
    """The largest micro-batch per GPU whose total fits (0: not even one row)."""
    budget, best = cfg.gpu_memory * GB, 0
    while best < cap and estimate(a, cfg, shape, best + 1)["total"] <= budget:
        best += 1
    return best


def accumulation(global_batch: int, gpus: int, fit: int) -> tuple[int, int]:
    """(micro-batch, accumulation): the largest micro-batch <= fit that splits the global batch exactly."""
    for mb in range(min(fit, global_batch // gpus), 0, -1):
        if global_batch % (mb * gpus) == 0:
            return mb, global_batch // (mb * gpus)
    return 0, 0


def _gb(x: float) -> str:
    return f"{x / GB:8.2f}"


def table(a: dict, cfg: PlanConfig, shape: dict, est: dict, fit: int, split: tuple[int, int],
          ds: float | None) -> str:
    ms, shard = est["model_states"], f"1/{cfg.gpus}"
    w_split = cfg.engine in ("fsdp", "zero3", "zero3_offload")
    g_split = w_split or cfg.engine == "zero2"
    mark = {"adamw_torch": "32-bit Adam", "adamw_bnb_8bit": "8-bit Adam", "paged_adamw_8bit":
            "paged 8-bit Adam (spikes spill to CPU)"}
    used_opt = {"adamw_torch_fused": "adamw_torch", "paged_adamw_32bit": "adamw_torch",
                "adamw_8bit": "adamw_bnb_8bit"}.get(shape["optim"], shape["optim"])
    lines = [(f"plan: {cfg.name}: {a['params'] / 1e9:.2f}B params, {cfg.gpus} GPU(s) x {cfg.gpu_memory:g} GB, "
             f"engine {cfg.engine}, precision {shape['precision']}, micro-batch {est['micro_batch']} x "
             f"{shape['max_length']} tokens{' packed' if shape['packed'] else ''}, optimizer {shape['optim']}, "
             f"loss head {'TRL chunked' if shape['head'] == 'chunked' else 'full logits'}"),
             f"as it runs on {shape['machine']}" + "".join(f"\n  {f}" for f in shape["fallbacks"]),
             f"{'per GPU':<62}{'GB':>8}",
             f"{'weights' + (f' ({shard})' if w_split else ''):<62}{_gb(ms['weights'])}",
             f"{'gradients' + (f' ({shard})' if g_split else ''):<62}{_gb(ms['gradients'])}"]
    for o, v in est["optimizer_variants"].items():
        used = " <" if o == used_opt else ""
        lines.append(f"{'optimizer: ' + mark[o]:<62}{_gb(v)}{used}")
    if ms["host_optimizer"]:
        lines.append(f"{'  (optimizer states offloaded to host RAM, per GPU)':<62}{_gb(ms['host_optimizer'])}")
    for k, v in est["activations"].items():
        used = " <" if k == shape["attn"] + ("+checkpointing" if shape["checkpointing"] else "") else ""
        lines.append(f"{'activations: ' + k:<62}{_gb(v)}{used}")
    for k, v in est["buffers"].items():
        lines.append(f"{'buffers: ' + k.replace('_', ' '):<62}{_gb(v)}")
    verdict = "fits" if est["total"] <= cfg.gpu_memory * GB else "DOES NOT FIT"
    lines.append(f"{'total (marked <)':<62}{_gb(est['total'])}  {verdict} in {cfg.gpu_memory:g} GB")
    if ds is not None:
        lines.append(f"{'cross-check: DeepSpeed estimate, model states (32-bit Adam)':<62}{_gb(ds)}")
    mb, acc = split
    lines.append(f"largest micro-batch that fits: {fit}; global batch {shape['global_batch']} = "
                 + (f"{mb} x {cfg.gpus} GPUs x {acc} accumulation" if mb else "not reachable exactly"))
    return "\n".join(lines)


def plan(cfg: PlanConfig, sft, facts: caps.Facts | None = None) -> dict:
    """The plan of `sft` (the sft stage's config) for a machine with these facts (sft passes its own; None:
    see facts_for_plan)."""
    a = architecture(load_arch(cfg.arch))
    shape = resolve(cfg, sft, facts or facts_for_plan())
    shape["teacher_params"] = architecture(load_arch(cfg.teacher_arch))["params"] if cfg.teacher_arch else 0
    est = estimate(a, cfg, shape, shape["batch_size"])
    fit = largest_fit(a, cfg, shape)
    split = accumulation(shape["global_batch"], cfg.gpus, fit)
    ds = deepspeed_estimate(a, cfg.engine, cfg.gpus)
    return {"architecture": a, "shape": shape, "estimate": est, "largest_micro_batch": fit,
            "micro_batch_for_global": split[0], "grad_accum_for_global": split[1], "deepspeed_estimate": ds,
            "fits": est["total"] <= cfg.gpu_memory * GB, "table": table(a, cfg, shape, est, fit, split, ds)}
