"""Stage `sft`: train a student (or the demo's cold-start teacher) on chat `messages` with TRL's SFTTrainer.

Loss is on assistant tokens only (TRL `assistant_only_loss`, which needs `{% generation %}` in the chat
template). Batches are padded and grouped by length: on CPU, TRL's packing with padding_free is ~11x
slower, because a packed row gets quadratic SDPA attention. flash-attention-2 and the bitsandbytes 8-bit
AdamW are asked for by default and fall back (logged, recorded in the manifest) where they can't run.
Any other SFTConfig setting passes through under `trl:`. Resumes from its last checkpoint.
Output: runs/<run>/sft/<name>/{model/, checkpoints/, log.jsonl, loss.png}.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.artifacts import Fallbacks, UserError, atomic_write_text, finish, stage_dir, staging
from distill.config import check_positive


@dataclass
class SftConfig:
    run: str = "demo"
    runs_dir: str = "runs"
    name: str = "student"
    model: str = ""  # path or Hub id of the model to train
    data: str = ""  # train.jsonl with `messages` (default runs/<run>/filter/teacher/train.jsonl)
    epochs: float = 1.0
    lr: float = 1e-4
    warmup: float = 0.05  # <1: share of the steps; >=1: steps
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 2048
    optim: str = "adamw_bnb_8bit"  # falls back to adamw_torch where bitsandbytes can't run
    attn_implementation: str = "flash_attention_2"  # falls back to sdpa without CUDA
    gradient_checkpointing: bool = False
    threads: int = 0  # torch threads (0: torch's default)
    logging_steps: int = 10
    save_steps: int = 200
    seed: int = 0
    trl: dict = field(default_factory=dict)  # any other trl.SFTConfig field, passed through

    def __post_init__(self):
        if not self.model:
            raise ValueError("`model` is required (a path or Hub id)")
        for k in ("epochs", "lr", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            check_positive(k, getattr(self, k))


def _pick_optim(optim: str, fallbacks: Fallbacks) -> str:
    """Use bitsandbytes' 8-bit optimizer if it can step here; otherwise fall back to torch AdamW."""
    if "8bit" not in optim:
        return optim
    try:
        import bitsandbytes as bnb
        import torch

        p = torch.nn.Parameter(torch.randn(64, 64, device="cuda" if torch.cuda.is_available() else "cpu"))
        p.grad = torch.randn_like(p)
        opt = bnb.optim.PagedAdamW8bit([p]) if optim.startswith("paged") else bnb.optim.AdamW8bit([p])
        opt.step()
        return optim
    except Exception as e:  # ImportError, or no kernel for this device
        fallbacks.add(optim, "adamw_torch", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return "adamw_torch"


def _load_model(cfg: SftConfig, fallbacks: Fallbacks):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    attn = cfg.attn_implementation
    if attn == "flash_attention_2" and not torch.cuda.is_available():
        fallbacks.add("flash_attention_2", "sdpa", "no CUDA device")
        attn = "sdpa"
    p = Path(cfg.model)
    if (cfg.model.startswith((".", "/", "runs/")) or p.exists()) and not p.is_dir():
        raise UserError(f"sft: model not found: {cfg.model}")
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype="auto", attn_implementation=attn)
    except OSError as e:
        raise UserError(f"sft: cannot load model {cfg.model}: {str(e).splitlines()[0]}") from None
    return model, tok


def _dataset(path: Path):
    from datasets import load_dataset

    from distill.artifacts import read_jsonl

    rows = read_jsonl(path, required=("messages",))  # one-line errors before datasets sees the file
    if not rows:
        raise UserError(f"{path}: empty dataset")
    return load_dataset("json", data_files=str(path), split="train")


def _plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(*zip(*pts))
    ax.set(xlabel="step", ylabel="training loss (assistant tokens)", title=title, yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: SftConfig) -> Path:
    import torch
    from trl import SFTConfig, SFTTrainer

    started = time.time()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    fallbacks = Fallbacks()
    data_path = Path(cfg.data or stage_dir(cfg.runs_dir, cfg.run, "filter", "teacher") / "train.jsonl")
    dataset = _dataset(data_path)
    model, tok = _load_model(cfg, fallbacks)
    out = stage_dir(cfg.runs_dir, cfg.run, "sft", cfg.name)
    ckpt_dir = out / "checkpoints"
    settings = dict(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.lr, warmup_steps=cfg.warmup,
        lr_scheduler_type=cfg.scheduler, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, optim=_pick_optim(cfg.optim, fallbacks),
        gradient_checkpointing=cfg.gradient_checkpointing, assistant_only_loss=True,
        # Padded batches (packing + padding_free is quadratic SDPA on CPU). "batch_rebalance" keeps the
        # optimizer batch a random sample while each micro-batch holds similar lengths (12.3k tok/s here vs
        # 7.0k random); "group_by_length" was faster (13.2k) but makes each step one task and level, and the
        # teacher then learned chain to 0.1-0.2 instead of 1.0 (bench/RESULTS.md).
        packing=False, padding_free=False, train_sampling_strategy="batch_rebalance",
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", bf16=torch.cuda.is_available(),
        disable_tqdm=False)
    try:
        args = SFTConfig(**(settings | cfg.trl))  # `trl:` settings override ours
    except (TypeError, ValueError) as e:
        raise UserError(f"sft: bad trl setting: {str(e).splitlines()[0]}") from None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    resume = ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*"))
    if resume:
        print(f"sft: resuming from the last checkpoint in {ckpt_dir}")
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen)
    train_s = result.metrics["train_runtime"]
    with staging(out / "model") as tmp:
        trainer.save_model(str(tmp))
        tok.save_pretrained(tmp)
    atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    _plot_loss(history, out / "loss.png", cfg.name)
    params = sum(p.numel() for p in model.parameters())
    counts = {"rows": len(dataset), "steps": trainer.state.global_step, "tokens_seen": tokens, "params": params,
              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
              "resumed": resume}
    finish(out, "sft", cfg, {"data": data_path} | ({"model": Path(cfg.model)} if Path(cfg.model).is_dir()
                                                   else {}),
           counts, started, fallbacks=fallbacks.items, optimizer=args.optim,
           timings={"train_s": round(train_s, 3), "tokens_per_s": round(tokens / max(train_s, 1e-9), 1)})
    print(f"sft: {cfg.name}: {trainer.state.global_step} steps, loss {counts['first_loss']} -> "
          f"{counts['final_loss']}, {tokens / max(train_s, 1e-9):,.0f} tokens/s -> {out / 'model'}")
    return out
