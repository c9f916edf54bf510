"""Stage `sft`: train a student (or the demo's cold-start teacher) on chat `messages` with TRL's SFTTrainer.

Loss is on assistant tokens only (TRL `assistant_only_loss`, which needs `{% generation %}` in the chat
template). Batches are padded and grouped by length: on CPU, TRL's packing with padding_free is ~11x
slower, because a packed row gets quadratic SDPA attention. flash-attention-2 and the bitsandbytes 8-bit
AdamW are asked for by default and fall back (logged, recorded in the manifest) where they can't run.
Any other SFTConfig setting passes through under `trl:`. Resumes from its last complete checkpoint.
`method: gkd` trains by logit distillation instead (TRL's GKDTrainer: generalized JSD to `teacher`'s
next-token distributions, on the student's own samples for a share `lmbda` of the steps).
Before any model is loaded, a recipe with a `plan:` section (and any run on GPU) is checked with
`distill plan` for the launch it is in; a run that does not fit stops (exit 2) unless `force=true`.
Under `accelerate launch` (DDP, FSDP, ZeRO; gloo on CPU) every rank trains and rank 0 alone writes artifacts.
Output: runs/<run>/sft/<name>/{model/, checkpoints/, log.jsonl, loss.png}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill import backends
from distill.artifacts import (
    Fallbacks,
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_identity,
    finish,
    sha256,
    stage_dir,
    staging,
)
from distill.config import NonNeg, NonNegFloat, Pos, PosFloat, check_literals, check_positive

log = logging.getLogger("distill")


@dataclass
class SftConfig:
    run: str = "demo"
    runs_dir: str = "runs"
    name: str = "student"
    model: str = ""  # path or Hub id of the model to train
    data: str = ""  # train.jsonl with `messages` (default runs/<run>/filter/teacher/train.jsonl)
    epochs: PosFloat = 1.0
    lr: PosFloat = 1e-4
    warmup: NonNegFloat = 0.05  # <1: share of the steps; >=1: steps
    scheduler: str = "cosine"
    weight_decay: NonNegFloat = 0.0
    batch_size: Pos = 16
    grad_accum: Pos = 1
    max_length: Pos = 2048
    optim: str = "adamw_bnb_8bit"  # falls back to adamw_torch where bitsandbytes can't run
    attn_implementation: str = "flash_attention_2"  # falls back to sdpa without CUDA
    gradient_checkpointing: bool = False
    threads: NonNeg = 0  # torch threads (0: torch's default)
    logging_steps: Pos = 10
    save_steps: Pos = 200
    seed: int = 0
    method: Literal["sft", "gkd"] = "sft"  # gkd: logit distillation from `teacher` (TRL's GKDTrainer)
    teacher: str = ""  # gkd: path or Hub id of the teacher; it must share the student's tokenizer
    plan: dict = field(default_factory=dict)  # the recipe's `plan:` section (cli.py puts it here)
    force: bool = False  # train even when the plan says the run does not fit
    revision: str = ""  # a Hub model pinned to a tag, branch or commit
    trust_remote_code: bool = False  # run code shipped with the checkpoint (logged, in the manifest)
    allow_pickle: bool = False  # load weights that are not safetensors
    trl: dict = field(default_factory=dict)  # any other trl.SFTConfig (gkd: GKDConfig) field, passed through

    def __post_init__(self):
        check_literals(self)
        if not self.model:
            raise ValueError("`model` is required (a path or Hub id)")
        if self.method == "gkd" and not self.teacher:
            raise ValueError("method=gkd needs `teacher` (a path or Hub id)")
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


def _load_model(path: str, attn: str, fallbacks: Fallbacks, settings: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if attn == "flash_attention_2" and not torch.cuda.is_available():
        fallbacks.add("flash_attention_2", "sdpa", "no CUDA device")
        attn = "sdpa"
    kw = backends.policy(settings)
    try:
        tok = AutoTokenizer.from_pretrained(path, **backends.tokenizer_kwargs(kw))
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", attn_implementation=attn, **kw)
    except OSError as e:
        raise UserError(f"sft: cannot load model {path}: {str(e).splitlines()[0]}") from None
    model.distill_loading = backends.loaded(model, kw)  # for the manifest
    return model, tok


def _launch() -> tuple[int, str]:
    """(processes, engine) of the launch this process is in, read from what accelerate launch exports."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return world, "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower() == "cpu"
        return world, "zero3_offload" if stage == "3" and offload else f"zero{stage}"
    return world, "ddp"


def _check_memory(cfg: SftConfig) -> None:
    """`distill plan` for this launch, before any weights are loaded: a run that cannot fit stops in a second
    instead of after minutes of loading and an OOM. Engine and GPU count are the launch's (one plain process
    is one GPU); the rest (gpu_memory, precision, reserve, ...) comes from the recipe's `plan:` section."""
    import torch

    from distill import plan

    if not cfg.plan and not torch.cuda.is_available():
        return  # the CPU demo: nothing to plan
    settings = {k: v for k, v in cfg.plan.items() if k != "training"}
    gpus, engine = _launch()
    settings |= {"name": cfg.name, "gpus": gpus, "engine": engine,
                 "training": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "plan"}}
    if "gpu_memory" not in settings and torch.cuda.is_available():
        settings["gpu_memory"] = torch.cuda.get_device_properties(0).total_memory / plan.GB
    try:
        if not settings.get("arch"):
            settings["arch"] = cfg.model if Path(cfg.model).is_dir() else _hub_config(cfg.model)
        p = plan.plan(plan.PlanConfig(**settings))
    except (TypeError, ValueError, AttributeError, UserError) as e:
        if cfg.plan:  # the recipe asked for the plan: its mistakes are the user's to fix
            raise UserError(f"sft: plan: {str(e).splitlines()[0]}") from None
        # planned only because this is a GPU: a model or optimizer the planner does not know must not stop it
        log.warning("sft: plan skipped: %s", str(e).splitlines()[0])
        return
    need, have = p["estimate"]["total"] / plan.GB, settings.get("gpu_memory", plan.PlanConfig.gpu_memory)
    line = (f"{need:.1f} GB per GPU of {have:g} ({gpus} x {engine}, micro-batch "
            f"{p['estimate']['micro_batch']}; largest that fits: {p['largest_micro_batch']})")
    if p["fits"]:
        log.info("sft: plan: fits: %s", line)
    elif cfg.force:
        log.warning("sft: plan: does NOT fit, going on (force=true): %s", line)
    else:
        raise UserError(f"sft: {cfg.name} does not fit: {line}; see `distill plan`, or force=true")


def _hub_config(model: str) -> str:
    """The config.json of a Hub model (a few kB), for the plan; the weights come later, if it fits."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model, "config.json")
    except Exception as e:  # offline, unknown repo, gated: no architecture to plan for
        raise UserError(f"cannot get {model}'s config.json ({type(e).__name__}); "
                        "give the recipe a `plan: {arch: <config.json>}`") from None


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a run killed while
    saving leaves a checkpoint-N without it, which resume_from_checkpoint=True would pick and then fail on."""
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.rpartition("-")[2]), default=None)


def _save(trainer, tok, dest: Path) -> None:
    """Every rank calls save_model (ZeRO-3 and FSDP gather the sharded weights into rank 0 collectively); only
    rank 0 writes, into a staging directory moved into place when complete."""
    if not trainer.is_world_process_zero():
        trainer.save_model(str(dest.parent / f".{dest.name}.partial"))  # joins the gather, writes nothing
        return
    with staging(dest) as tmp:
        trainer.save_model(str(tmp))
        tok.save_pretrained(tmp)


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


# settings that do not change the trained weights (where and how often to log or save, the machine's threads)
NOT_SHAPING = ("run", "runs_dir", "name", "threads", "logging_steps", "save_steps", "force", "plan")


def _identity(cfg: SftConfig, data: Path) -> dict:
    ident = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SHAPING}
    ident["processes"] = int(os.environ.get("WORLD_SIZE", "1"))  # DDP's gradients sum in another order
    ident["data_sha256"] = sha256(data)
    for key in ("model", "teacher"):
        if getattr(cfg, key) and Path(getattr(cfg, key)).is_dir():
            ident[f"{key}_sha256"] = sha256(Path(getattr(cfg, key)))
    return ident


def run(cfg: SftConfig) -> Path:
    import torch

    started = time.time()
    _check_memory(cfg)
    if cfg.threads > 0:
        # `threads` is the machine's: the processes of one launch share it (two 2-thread trainings on 2 cores
        # ran ~10x slower each than one)
        torch.set_num_threads(max(1, cfg.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    fallbacks = Fallbacks()
    if not torch.cuda.is_available() and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        # students/accelerate/*.yaml ask for bf16 (GPU configs); the Trainer would take it from the
        # environment and autocast on CPU, slower than fp32 here and unlike a plain `distill sft`
        fallbacks.add(f"{os.environ['ACCELERATE_MIXED_PRECISION']} mixed precision", "fp32", "no CUDA device")
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    for key in ("model", "teacher"):  # a path that is not a model folder: refused before anything loads
        if getattr(cfg, key):
            backends.check_local_dir(getattr(cfg, key), f"sft: {key}")
    data_path = Path(cfg.data or stage_dir(cfg.runs_dir, cfg.run, "filter", "teacher") / "train.jsonl")
    dataset = _dataset(data_path)
    out = stage_dir(cfg.runs_dir, cfg.run, "sft", cfg.name)
    ckpt_dir = out / "checkpoints"
    ident = _identity(cfg, data_path)
    # checkpoints and a trained model are kept only for the settings and inputs that made them
    if check_identity(out / ".identity.json", ident, f"sft: {out}", f"delete {out} or give another name="):
        if (out / "manifest.json").is_file() and list((out / "model").glob("*.safetensors")):
            print(f"sft: up to date: {out / 'model'} was trained with these settings and inputs; nothing to do "
                  f"(to train again, delete {out} or give another name=)")
            return out
    elif ckpt_dir.is_dir() and _last_checkpoint(ckpt_dir):
        raise UserError(f"sft: {ckpt_dir} holds checkpoints of an unknown run (no {out / '.identity.json'}); "
                        f"to start afresh, delete {out} or give another name=")
    model, tok = _load_model(cfg.model, cfg.attn_implementation, fallbacks,
                             backends.recipe_policy(cfg, cfg.revision))
    settings = dict(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.lr, warmup_steps=cfg.warmup,
        lr_scheduler_type=cfg.scheduler, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, optim=_pick_optim(cfg.optim, fallbacks),
        gradient_checkpointing=cfg.gradient_checkpointing, assistant_only_loss=True,
        # Padded batches (packing + padding_free is quadratic SDPA on CPU). "batch_rebalance" keeps the
        # optimizer batch a random sample while each micro-batch holds similar lengths (12.3k tok/s here vs
        # 7.0k random); "group_by_length" was faster (13.2k) but makes each step one task and level, and the
        # teacher then learned chain to 0.1-0.2 instead of 1.0 (bench/RESULTS.md). Under DDP the sampler is
        # rank-aware: every rank draws the same global batch and keeps its own share of it.
        packing=False, padding_free=False, train_sampling_strategy="batch_rebalance",
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", bf16=torch.cuda.is_available(),
        # Without CUDA, processes started by torchrun (accelerate's multi-GPU launcher) join a gloo group only
        # when told they are on CPU; otherwise each trains alone, as rank 0 of 1, writing the same files.
        use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
        ddp_find_unused_parameters=False)  # every weight of a causal LM gets a gradient: no DDP graph walk
    if cfg.method == "gkd":
        # GKD's collator tokenizes the raw `messages` itself (prompt + completion), so there are no lengths
        # for batch_rebalance to read, and its loss covers the whole assistant turn anyway.
        settings |= {"train_sampling_strategy": "random", "assistant_only_loss": False}
    trainer_cls, args = _trainer(cfg.method, settings | cfg.trl)  # `trl:` settings override ours
    extra = {}
    if cfg.method == "gkd":
        extra["teacher_model"] = _teacher(cfg, tok, fallbacks)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok, **extra)
    main = trainer.is_world_process_zero()
    last = _last_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if main and not last:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / ".identity.json", ident)  # what the checkpoints to come are made with
    if last and main:
        print(f"sft: resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    _save(trainer, tok, out / "model")
    if main:  # rank 0 alone writes the log, plot and manifest
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        tokens = int(trainer.state.num_input_tokens_seen)
        train_s = result.metrics["train_runtime"]
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        _plot_loss(history, out / "loss.png", cfg.name)
        params = sum(p.numel() for p in model.parameters())
        counts = {"rows": len(dataset), "steps": trainer.state.global_step, "tokens_seen": tokens,
                  "params": params, "first_loss": losses[0] if losses else None,
                  "final_loss": losses[-1] if losses else None, "resumed": last is not None,
                  "processes": args.world_size}
        models = {"model": cfg.model, "teacher": cfg.teacher}
        inputs = {"data": data_path} | {k: Path(v) for k, v in models.items() if v and Path(v).is_dir()}
        finish(out, "sft", cfg, inputs, counts, started, fallbacks=fallbacks.items, optimizer=args.optim,
               method=cfg.method, loading=model.distill_loading, timings={"train_s": round(train_s, 3),
                                           "tokens_per_s": round(tokens / max(train_s, 1e-9), 1)})
        print(f"sft: {cfg.name}: {trainer.state.global_step} steps ({cfg.method}, {args.world_size} "
              f"process(es)), loss {counts['first_loss']} -> {counts['final_loss']}, "
              f"{tokens / max(train_s, 1e-9):,.0f} tokens/s -> {out / 'model'}")
    # Every rank waits for rank 0's writes, then leaves the process group: a rank that simply exits can abort
    # in gloo's teardown (SIGABRT, seen here), and torchrun then SIGTERMs rank 0 in the middle of writing.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if args.world_size > 1:
        # ...and then leaves at once. Freeing the DDP model can deadlock: its reducer's gloo process group joins
        # gloo's thread while this thread holds the GIL the other one waits for (seen here: a rank hung for good
        # after its run was written). Everything is written and every rank is past the barrier; the OS frees
        # the rest, the lock included.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return out


def _trainer(method: str, settings: dict):
    """TRL's trainer and config for the method; GKDConfig extends SFTConfig, so every setting carries over."""
    if method == "gkd":
        from trl.experimental.gkd import GKDConfig as Config
        from trl.experimental.gkd import GKDTrainer as Trainer
    else:
        from trl import SFTConfig as Config

        Trainer = _sft_trainer()
    try:
        return Trainer, Config(**settings)
    except (TypeError, ValueError) as e:
        raise UserError(f"sft: bad trl setting: {str(e).splitlines()[0]}") from None


def _sft_trainer():
    """TRL's SFTTrainer, with the model's own loss when training on CPU.

    SFTTrainer (TRL 1.16) always computes the loss through a "fused LM head" it patches into the model
    (chunked log-probs that never hold the logits, plus per-token entropy and top-1 accuracy for its
    `entropy` and `mean_token_accuracy` logs); no setting turns it or those metrics off. On CUDA it is a
    Triton kernel saving memory on large vocabularies; on CPU it runs as torch ops and cost the demo's
    students ~25 ms of a 65-95 ms micro-batch (bench/RESULTS.md, sft_throughput). So on CPU the loss is
    transformers' Trainer.compute_loss: the model's logits + cross-entropy summed over label tokens /
    num_items_in_batch, the quantity TRL computes (equal to float rounding); TRL's `entropy`,
    `mean_token_accuracy` and `num_tokens` (the Trainer's num_input_tokens_seen again), read by nothing
    here, are then not logged. Other losses (dft, label smoothing, MoE aux loss) keep TRL's path."""
    from transformers import Trainer
    from trl import SFTTrainer

    class CpuLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (return_outputs or not self.model.training or self.args.device.type != "cpu"
                    or self.args.loss_type != "nll" or self.label_smoother is not None
                    or self.compute_loss_func is not None or self.aux_loss_enabled):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # use_cache=False as TRL's own compute_loss sets: no KV cache is built in training
            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False},
                                        num_items_in_batch=num_items_in_batch)

    return CpuLossSFTTrainer


def _teacher(cfg: SftConfig, tok, fallbacks: Fallbacks):
    """The GKD teacher, held to the student's tokenizer: the divergence compares the two next-token
    distributions id by id, so an id must mean the same text in both (TRL's `gold` is for differing ones)."""
    teacher, teacher_tok = _load_model(cfg.teacher, cfg.attn_implementation, fallbacks,
                                       backends.recipe_policy(cfg))
    if teacher_tok.get_vocab() != tok.get_vocab():
        raise UserError(f"sft: teacher {cfg.teacher} and student {cfg.model} have different tokenizers; "
                        "gkd needs the same one")
    return teacher
