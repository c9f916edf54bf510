"""Stage `plan`: will this training fit in GPU memory? Per GPU: weights, gradients, optimizer states, activations
and buffers for a recipe's student on an engine (ddp, fsdp, DeepSpeed ZeRO 1/2/3, ZeRO-3 with CPU offload),
a verdict, the largest micro-batch that fits and the gradient accumulation that keeps the global batch.

The architecture is built on the meta device from the config.json shipped with the recipe (no download);
accelerate's `calculate_maximum_sizes` gives the weights and the largest layer, DeepSpeed's ZeRO estimators
(if deepspeed is installed) are printed beside ours as a cross-check. What neither library estimates is ours:
optimizer variants (8-bit, paged, bf16 states), activations (by micro-batch, length, checkpointing and attention
kernel), the logits/loss head and buffers. Model states follow the ZeRO paper (Rajbhandari et al. 2020, Fig. 1):
2 bytes of bf16 weights + 2 of gradients + K of optimizer state per parameter, each split over N GPUs by stage.
GB here is 1e9 bytes, as in the ZeRO paper; an "80 GB" H100 has ~85e9, so the verdict keeps ~6% slack.
Output: runs/<run>/plan/<name>/plan.json, and the table on stdout.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.artifacts import UserError, atomic_write_json, finish, stage_dir
from distill.config import NonNeg, NonNegFloat, Pos, PosFloat, check_literals, check_positive

GB = 1e9
ENGINES = ("ddp", "fsdp", "zero1", "zero2", "zero3", "zero3_offload")
# optimizer -> (bytes of state per parameter in 32-bit states, in bf16 states); 8-bit Adam keeps m and v in one
# byte each whatever the weights' dtype (bitsandbytes; its per-block scales are <1% of that).
OPTIMIZERS = {"adamw_torch": (8, 4), "adamw_torch_fused": (8, 4), "paged_adamw_32bit": (8, 4),
              "adamw_bnb_8bit": (2, 2), "adamw_8bit": (2, 2), "paged_adamw_8bit": (2, 2), "sgd": (0, 0)}


@dataclass
class PlanConfig:
    run: str = "demo"
    runs_dir: str = "runs"
    name: str = "student"
    arch: str = ""  # the student's config.json (or a model directory holding one)
    training: dict = field(default_factory=dict)  # the recipe's sft section (`training: *sft` in YAML)
    engine: Literal["ddp", "fsdp", "zero1", "zero2", "zero3", "zero3_offload"] = "ddp"
    gpus: Pos = 1
    gpu_memory: PosFloat = 80.0  # GB per GPU
    global_batch: NonNeg = 0  # rows per optimizer step to keep (0: batch_size x grad_accum x gpus)
    # Overrides of the training section (0 / "" / None: take the recipe's).
    max_length: NonNeg = 0
    batch_size: NonNeg = 0  # micro-batch per GPU
    optim: str = ""
    gradient_checkpointing: bool | None = None
    attn_implementation: str = ""
    liger: bool | None = None  # Liger's fused linear + cross-entropy (default: training.trl.use_liger_kernel)
    # mixed: bf16 compute, fp32 master weights and optimizer states (DeepSpeed, FSDP, the ZeRO paper);
    # bf16: everything in bf16 (one GPU / DDP with a bf16-loaded model and torch AdamW); fp32: the CPU demo.
    precision: Literal["auto", "mixed", "bf16", "fp32"] = "auto"
    reserve: NonNegFloat = 2.0  # GB per GPU for the CUDA context, NCCL buffers and allocator fragmentation

    def __post_init__(self):
        check_literals(self)
        if not self.arch:
            raise ValueError("`arch` is required (the student's config.json)")
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
                liger: bool) -> dict:
    """Bytes per GPU of what autograd keeps for backward, counted from what each op of a Qwen2 decoder layer
    saves (RMSNorm keeps its fp32 input, normalised and weighted outputs; q/k/v after RoPE, the attention output
    and its contiguous copy for o_proj; SwiGLU keeps gate, silu(gate), up and their product)."""
    e, h, i = act_bytes, a["hidden"], a["intermediate"]
    kv = a["kv_heads"] * a["head_dim"]
    tokens = micro_batch * seq
    norm = (4 + 2 * e) * h
    per_token = 2 * norm + 3 * e * h + 2 * e * kv + 4 * a["heads"] + 4 * e * i
    if attn == "eager":  # repeats k/v to every head and keeps the b x heads x s x s probabilities (fp32 + cast)
        per_token += 2 * e * (h - kv) + (4 + (e if e != 4 else 0)) * a["heads"] * seq
    layer = per_token * tokens
    body = (a["layers"] * e * h * tokens + layer) if checkpointing else a["layers"] * layer
    # The loss head at the start of backward: nothing saves the logits (the trainer drops the model output before
    # backward), but cross-entropy keeps fp32 log-probabilities, and its backward holds them with their incoming
    # and outgoing gradients: 3 x 4 bytes x vocab per token (the forward's logits + fp32 copy + log-probs,
    # e + 8 bytes, is no more). Liger's fused linear cross-entropy works in chunks: ~hidden-sized buffers.
    head = norm * tokens + (8 * h * tokens if liger else 12 * a["vocab"] * tokens)
    return {"layers": body, "head": head, "total": body + head}


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


def resolve(cfg: PlanConfig) -> dict:
    """The training shape: overrides over the recipe's sft section over SftConfig's defaults."""
    from distill.sft import SftConfig

    t = dict(cfg.training)
    t.setdefault("model", cfg.arch)
    try:
        sft = SftConfig(**t)
    except (TypeError, ValueError) as e:
        raise UserError(f"plan: training: {str(e).splitlines()[0]}") from None
    shape = {"max_length": cfg.max_length or sft.max_length, "batch_size": cfg.batch_size or sft.batch_size,
             "optim": cfg.optim or sft.optim, "attn": cfg.attn_implementation or sft.attn_implementation,
             "checkpointing": sft.gradient_checkpointing if cfg.gradient_checkpointing is None
             else cfg.gradient_checkpointing,
             "liger": bool(sft.trl.get("use_liger_kernel")) if cfg.liger is None else cfg.liger}
    shape["global_batch"] = cfg.global_batch or sft.batch_size * sft.grad_accum * cfg.gpus
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cfg.engine == "ddp" else "mixed"
    shape["precision"] = precision
    shape["attn"] = "flash" if shape["attn"] in ("flash_attention_2", "flash_attention_3", "sdpa") else "eager"
    return shape


def estimate(a: dict, cfg: PlanConfig, shape: dict, micro_batch: int) -> dict:
    """Every line of the plan at one micro-batch; `total` is what the chosen settings need per GPU."""
    e = 4 if shape["precision"] == "fp32" else 2
    ms = model_states(a["params"], cfg.gpus, cfg.engine, shape["optim"], shape["precision"])
    variants = {o: model_states(a["params"], cfg.gpus, cfg.engine, o, shape["precision"])["optimizer"]
                for o in ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit")}
    acts = {(attn, ck): activations(a, micro_batch, shape["max_length"], e, attn, ck, shape["liger"])["total"]
            for attn in ("flash", "eager") for ck in (False, True)}
    buf = buffers(a, cfg.engine, cfg.gpus, shape["precision"], cfg.reserve)
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
             f"{shape['max_length']} tokens, optimizer {shape['optim']}"), f"{'per GPU':<62}{'GB':>8}",
             f"{'weights' + (f' ({shard})' if w_split else ''):<62}{_gb(ms['weights'])}",
             f"{'gradients' + (f' ({shard})' if g_split else ''):<62}{_gb(ms['gradients'])}"]
    for o, v in est["optimizer_variants"].items():
        used = " <" if o == used_opt else ""
        lines.append(f"{'optimizer: ' + mark[o]:<62}{_gb(v)}{used}")
    if ms["host_optimizer"]:
        lines.append(f"{'  (optimizer states offloaded to host RAM, per GPU)':<62}{_gb(ms['host_optimizer'])}")
    for k, v in est["activations"].items():
        used = " <" if k == shape["attn"] + ("+checkpointing" if shape["checkpointing"] else "") else ""
        lines.append(f"{'activations: ' + k + (' (Liger loss)' if shape['liger'] else ''):<62}"
                     f"{_gb(v)}{used}")
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


def plan(cfg: PlanConfig) -> dict:
    a = architecture(load_arch(cfg.arch))
    shape = resolve(cfg)
    est = estimate(a, cfg, shape, shape["batch_size"])
    fit = largest_fit(a, cfg, shape)
    split = accumulation(shape["global_batch"], cfg.gpus, fit)
    ds = deepspeed_estimate(a, cfg.engine, cfg.gpus)
    return {"architecture": a, "shape": shape, "estimate": est, "largest_micro_batch": fit,
            "micro_batch_for_global": split[0], "grad_accum_for_global": split[1], "deepspeed_estimate": ds,
            "fits": est["total"] <= cfg.gpu_memory * GB, "table": table(a, cfg, shape, est, fit, split, ds)}


def run(cfg: PlanConfig) -> Path:
    started = time.time()
    p = plan(cfg)
    print(p["table"])
    if not p["fits"]:
        hint = (f"micro-batch {p['largest_micro_batch']} fits" if p["largest_micro_batch"]
                else "try more GPUs, engine=zero3 / zero3_offload, gradient_checkpointing=true or a shorter max_length")
        raise UserError(f"plan: {cfg.name} does not fit: {p['estimate']['total'] / GB:.1f} GB per GPU > "
                        f"{cfg.gpu_memory:g} GB at micro-batch {p['estimate']['micro_batch']} ({hint})")
    out = stage_dir(cfg.runs_dir, cfg.run, "plan", cfg.name)
    atomic_write_json(out / "plan.json", {k: v for k, v in p.items() if k != "table"})
    inputs = {"arch": Path(cfg.arch)} if Path(cfg.arch).exists() else {}
    finish(out, "plan", cfg, inputs, {"params": p["architecture"]["params"], "fits": True,
                                      "largest_micro_batch": p["largest_micro_batch"]}, started)
    print(f"plan: -> {out / 'plan.json'}")
    return out
