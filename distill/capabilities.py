"""What each requested feature becomes on this machine, and why: decided once, for every stage.

A recipe asks for flash-attention, Liger, an 8-bit or paged optimizer, bf16; whether each can run depends on
the machine. `probe()` reads the machine's facts for real (imports, versions, a bitsandbytes optimizer step on
this rank's own device); `decide(wants, facts)` is a pure function of them that returns, per feature, what will
run and why. sft, plan, the transformers backend (traces, eval, serve, chat) and `distill gpu-check` all use
it; `record()` logs each fallback once and keeps it for the manifest. Nothing here raises for a missing optional
package: what cannot run falls back, and only what has no fallback (a DeepSpeed engine without DeepSpeed) is
refused, with one line.

    flash_attention_2  -> sdpa           without CUDA, below compute capability 8.0, or without flash_attn>=2.3.3
    flash_attention_3  -> as flash_attention_2, without Hopper (9.0) or without flash_attn_interface
    Liger              -> off            without CUDA or liger-kernel (the loss is TRL's own chunked head anyway)
    8-bit / paged AdamW-> adamw_torch_fused  where bitsandbytes cannot step; paged -> not paged without CUDA
    engine fsdp        -> ddp            without CUDA (accelerate builds FSDP on GPUs only); zero* needs DeepSpeed
    bf16               -> fp16 below compute capability 8.0, fp32 without CUDA
    packed rows        -> padded rows    where the attention is not FlashAttention (no varlen kernel: see _batching)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("distill")

Attention = Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"]
Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit",
                    "paged_adamw_32bit", "sgd"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
BNB = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")  # bitsandbytes' optimizers
UNPAGED = {"paged_adamw_8bit": "adamw_bnb_8bit", "paged_adamw_32bit": "adamw_torch_fused"}
FLASH_MIN = (2, 3, 3)  # transformers' own floor for flash_attn (is_flash_attn_2_available)
INSTALL_GPU = "pip install -e '.[gpu]'"


@dataclass(frozen=True)
class Facts:
    """What this machine has. Defaults describe a CPU box with nothing optional installed."""

    device: str = "cpu"  # this rank's device: "cuda:<local rank>" or "cpu"
    gpu: str = ""  # the GPU's name
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16: bool = False  # the GPU computes in bf16 (torch.cuda.is_bf16_supported)
    flash_attn: str = ""  # version of an importable flash_attn ("" when it cannot be imported)
    flash_attn_3: bool = False  # flash_attn_interface (FlashAttention-3) importable
    liger: str = ""  # liger-kernel's version, when importable
    bnb: bool = False  # a bitsandbytes 8-bit AdamW step ran on `device`
    bnb_error: str = ""  # why not
    deepspeed: str = ""  # DeepSpeed's version, when importable
    world_size: int = 1

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


# What `distill plan` assumes when it plans for a GPU from a machine without one: every recipe feature runs.
ASSUMED_GPU = Facts(device="cuda:0", gpu="(assumed)", capability=(9, 0), bf16=True, flash_attn="2.8.3",
                    flash_attn_3=False, liger="0.6", bnb=True, deepspeed="0.18")


@dataclass(frozen=True)
class Wants:
    """What a recipe asks for."""

    attn: str = "sdpa"
    liger: bool = False
    optim: str = "adamw_torch"
    precision: str = "auto"  # mixed precision: auto = bf16 where the GPU has it, fp16 below, fp32 on CPU
    dtype: str = "auto"  # weights as loaded: auto = the checkpoint's own
    checkpoint_dtype: str = "float32"  # what `auto` loads (the checkpoint's config.json)
    engine: str = "ddp"
    packed: bool = False  # TRL's packing / padding_free


@dataclass(frozen=True)
class Choice:
    wanted: str
    used: str  # "" : refused (nothing can stand in for it)
    reason: str = ""  # why `used` differs from `wanted`

    @property
    def fallback(self) -> bool:
        return self.used != self.wanted


def _version(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _attention(attn: str, f: Facts) -> Choice:
    if attn == "flash_attention_3":
        why = ("no CUDA device" if not f.cuda else
               f"compute capability {f.capability[0]}.{f.capability[1]}: FlashAttention-3 needs Hopper (9.0)"
               if f.capability < (9, 0) else "" if f.flash_attn_3 else "flash_attn_interface is not installed")
        if not why:
            return Choice(attn, attn)
        two = _attention("flash_attention_2", f)
        return Choice(attn, two.used, why + (f"; {two.reason}" if two.fallback else ""))
    if attn != "flash_attention_2":
        return Choice(attn, attn)
    if not f.cuda:
        why = "no CUDA device"
    elif f.capability < (8, 0):
        why = (f"compute capability {f.capability[0]}.{f.capability[1]}: FlashAttention-2 needs 8.0 (Ampere) "
               "or newer")
    elif not f.flash_attn:
        why = f"flash_attn is not installed ({INSTALL_GPU}; it builds from source)"
    elif _version(f.flash_attn) < FLASH_MIN:
        why = f"flash_attn {f.flash_attn} is older than {'.'.join(map(str, FLASH_MIN))}"
    else:
        return Choice(attn, attn)
    return Choice(attn, "sdpa", why)


def _liger(wanted: bool, f: Facts) -> Choice:
    if not wanted:
        return Choice("off", "off")
    if not f.cuda:
        return Choice("on", "off", "no CUDA device (Liger's kernels are Triton GPU kernels)")
    if not f.liger:
        return Choice("on", "off", f"liger-kernel is not installed ({INSTALL_GPU})")
    return Choice("on", "on")


def _optimizer(optim: str, f: Facts) -> Choice:
    if optim not in BNB:
        return Choice(optim, optim)
    if not f.bnb:
        return Choice(optim, "adamw_torch_fused", f"bitsandbytes cannot step here ({f.bnb_error or 'not installed'})")
    if optim in UNPAGED and not f.cuda:
        return Choice(optim, UNPAGED[optim], "paging needs CUDA (unified memory)")
    return Choice(optim, optim)


def _precision(p: str, f: Facts) -> Choice:
    if p == "fp32":
        return Choice(p, p)
    if not f.cuda:
        return Choice(p, "fp32", "" if p == "auto" else "no CUDA device")
    if p in ("auto", "bf16") and not f.bf16:
        cc = f"{f.capability[0]}.{f.capability[1]}" if f.capability else "?"
        return Choice(p, "fp16", "" if p == "auto" else f"compute capability {cc} has no bf16 (8.0 or newer)")
    return Choice(p, "bf16" if p == "auto" else p)


def _dtype(dtype: str, checkpoint: str, f: Facts) -> Choice:
    d = checkpoint if dtype == "auto" else dtype
    wanted = f"auto ({checkpoint})" if dtype == "auto" else dtype
    if d == "bfloat16" and f.cuda and not f.bf16:
        return Choice(wanted, "float16", "this GPU has no bf16")
    return Choice(wanted, d)


def _batching(packed: bool, attn: str) -> Choice:
    """Padding-free packed rows need FlashAttention's varlen kernel. With sdpa or eager, transformers builds a
    block-diagonal mask over the whole flattened micro-batch (T x T, T = micro-batch x max_length: 4.3e9 pairs
    for 4 x 16k) and attends over all of it, 4-16x the FLOPs of the rows' own attention; padded rows attend
    within each row. The same reason the CPU demo trains on padded rows (distill/stages/sft.py)."""
    if not packed:
        return Choice("padded rows", "padded rows")
    if attn.startswith("flash"):
        return Choice("packed rows", "packed rows")
    return Choice("packed rows", "padded rows", f"padding-free rows need FlashAttention's varlen kernel; with "
                  f"{attn} the micro-batch would attend as one row")


def _engine(engine: str, f: Facts) -> Choice:
    if engine.startswith("zero") and not f.deepspeed:
        return Choice(engine, "", "DeepSpeed is not installed: pip install -e '.[deepspeed]'")
    if engine == "fsdp" and not f.cuda:
        # accelerate 1.16 builds FSDP only from its GPU launch modes: on CPU it would train DDP anyway, after
        # failing on fsdp.yaml's cpu_ram_efficient_loading (sync_module_states is not supported on cpu)
        return Choice(engine, "ddp", "accelerate runs FSDP on GPUs only")
    return Choice(engine, engine)


def decide(wants: Wants, facts: Facts) -> dict[str, Choice]:
    """What each feature becomes on a machine with these facts. Pure: the same facts, the same answer.
    An `auto` that picks something is not a fallback (its reason is empty)."""
    out = {"attention": _attention(wants.attn, facts), "liger": _liger(wants.liger, facts),
           "optimizer": _optimizer(wants.optim, facts), "precision": _precision(wants.precision, facts),
           "dtype": _dtype(wants.dtype, wants.checkpoint_dtype, facts), "engine": _engine(wants.engine, facts)}
    out["batching"] = _batching(wants.packed, out["attention"].used)
    return {k: c if c.reason or not c.fallback else Choice(c.used, c.used) for k, c in out.items()}


def checkpoint_dtype(path) -> str:
    """What from_pretrained(dtype="auto") loads a checkpoint in: its config.json's dtype (a model folder or the
    file itself), float32 when it names none or there is no local config."""
    import json
    from pathlib import Path

    p = Path(path) if path else None
    p = p / "config.json" if p is not None and p.is_dir() else p
    if p is None or not p.is_file():
        return "float32"
    c = json.loads(p.read_text())
    return str(c.get("dtype") or c.get("torch_dtype") or "float32").removeprefix("torch.")


def wanted_precision(trl: dict, env: str | None = None) -> str:
    """The mixed precision a run asks for: the recipe's `trl.bf16` / `trl.fp16`, else what `accelerate launch`
    exports from its config (students/accelerate/*.yaml say bf16), else auto."""
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if env is None else env
    if trl.get("bf16"):
        return "bf16"
    if trl.get("fp16"):
        return "fp16"
    if trl.get("bf16") is False and trl.get("fp16") in (False, None):
        return "fp32"
    return env if env in ("bf16", "fp16") else "auto"


def record(choices: dict[str, Choice], fallbacks) -> None:
    """Log each fallback once (artifacts.Fallbacks) and keep it for the manifest; refuse what has none."""
    from distill.artifacts import UserError

    for key, c in choices.items():
        if not c.used:
            raise UserError(f"{key} {c.wanted}: {c.reason}")
        if c.reason:
            wanted = f"{c.wanted} mixed precision" if key == "precision" else c.wanted
            wanted = "Liger kernels" if key == "liger" else wanted
            fallbacks.add(wanted, c.used, c.reason)


def local_device() -> str:
    """This rank's device: accelerate/torchrun export LOCAL_RANK before anything picks a device."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def _bnb_step(device: str) -> tuple[bool, str]:
    # its import warns that Hub kernels for 4-bit CPU matmuls cannot load offline: not what is probed here
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes as bnb
        import torch

        p = torch.nn.Parameter(torch.randn(64, 64, device=device))
        p.grad = torch.randn_like(p)
        bnb.optim.AdamW8bit([p]).step()
        return True, ""
    except Exception as e:  # ImportError, or no kernel for this device (a CUDA build without this GPU's arch)
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


def _importable(module: str) -> str:
    """The module's version if it imports ("" otherwise). An import, not a lookup: a flash_attn built for
    another torch or CUDA is installed but fails here (undefined symbol)."""
    import importlib

    try:
        m = importlib.import_module(module)
    except Exception:  # ImportError, OSError of a compiled extension, a RuntimeError from its own checks
        return ""
    from importlib.metadata import PackageNotFoundError, version

    for dist in (module.replace("_", "-"), module):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return getattr(m, "__version__", "installed")


def probe(need: set[str] | None = None) -> Facts:
    """The facts of this machine, for this rank. `need` limits the slower probes to the features a stage asks
    for ("flash", "liger", "bnb", "deepspeed"); None probes everything (gpu-check)."""
    import torch

    want = (lambda k: True) if need is None else need.__contains__
    device = local_device()
    facts: dict = {"device": device, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if device.startswith("cuda"):
        facts |= {"gpu": torch.cuda.get_device_name(device), "capability": torch.cuda.get_device_capability(device),
                  "bf16": bool(torch.cuda.is_bf16_supported())}
    if want("flash"):
        facts |= {"flash_attn": _importable("flash_attn"), "flash_attn_3": bool(_importable("flash_attn_interface"))}
    if want("liger"):
        facts["liger"] = _importable("liger_kernel")
    if want("bnb"):
        facts["bnb"], facts["bnb_error"] = _bnb_step(device)
    if want("deepspeed"):
        facts["deepspeed"] = _importable("deepspeed")
    return Facts(**facts)


def table(facts: Facts, choices: dict[str, Choice] | None = None) -> str:
    """The facts and, when given, each decision: what a user reads before a long run."""
    cc = f"{facts.capability[0]}.{facts.capability[1]}" if facts.capability else "-"
    rows = [("device", f"{facts.device} {facts.gpu}".strip()), ("compute capability", cc),
            ("bf16", "yes" if facts.bf16 else "no"), ("flash_attn", facts.flash_attn or "no"),
            ("flash_attn_interface (FA3)", "yes" if facts.flash_attn_3 else "no"),
            ("liger-kernel", facts.liger or "no"),
            ("bitsandbytes 8-bit AdamW", "steps" if facts.bnb else f"no ({facts.bnb_error or 'not installed'})"),
            ("deepspeed", facts.deepspeed or "no"), ("processes", str(facts.world_size))]
    lines = [f"{k:<28}{v}" for k, v in rows]
    for key, c in (choices or {}).items():
        lines.append(f"{key:<28}{c.wanted} -> {c.used}" + (f"  ({c.reason})" if c.reason else ""))
    return "\n".join(lines)


def as_dict(facts: Facts, choices: dict[str, Choice]) -> dict:
    """For the manifest."""
    return {"facts": dataclasses.asdict(facts),
            "decisions": {k: dataclasses.asdict(c) for k, c in choices.items()}}
