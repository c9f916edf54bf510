"""Stage `sft`: train a student (or the demo's cold-start teacher) on chat `messages` with TRL's SFTTrainer.

Loss is on assistant tokens only (TRL `assistant_only_loss`, which needs `{% generation %}` in the chat
template). Batches are padded and grouped by length: on CPU, TRL's packing with padding_free is ~11x
slower, because a packed row gets quadratic SDPA attention. What a recipe asks for (flash-attention-2, Liger,
the bitsandbytes 8-bit or paged AdamW, bf16, packed rows) is decided for this machine by
distill/capabilities.py before anything loads; each fallback is logged once and recorded in the manifest.
Any other SFTConfig setting passes through under `trl:`. Resumes from its last complete checkpoint.
`method: gkd` trains by logit distillation instead (TRL's GKDTrainer: generalized JSD to `teacher`'s
next-token distributions, on the student's own samples for a share `lmbda` of the steps).
Before any model is loaded, a recipe with a `plan:` section (and any run on GPU) is checked with
`distill plan` for the launch it is in and the model that will load; a run that does not fit stops (exit 2)
unless `force=true`. The manifest records the plan's estimate beside the measured peak memory.
Under `accelerate launch` (DDP, FSDP, ZeRO; gloo on CPU) every rank trains and rank 0 alone writes artifacts;
the Trainer's arguments exist before the model loads, so ZeRO-3 partitions the weights as they load.
Output: runs/<run>/sft/<name>/{model/, checkpoints/, log.jsonl, loss.png}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from distill import backends, methods, training
from distill import capabilities as caps
from distill import target as T
from distill.artifacts import (
    Fallbacks,
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_identity,
    finish,
    read_jsonl,
    sha256,
    stage_dir,
)
from distill.config import NonNeg, NonNegFloat, Pos, PosFloat, check_literals, check_positive, defaults, opt
from distill.memory import PeakMemory

log = logging.getLogger("distill")


# transformers' SchedulerType values (tests/test_config.py holds them equal)
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                    "warmup_stable_decay", "greedy"]


@dataclass
class SftConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("student", "the model's name: runs/<run>/sft/<name>/")
    model: str = opt("", "path or Hub id of the model to train")
    data: str = opt("", "train.jsonl with `messages` (default runs/<run>/filter/teacher/train.jsonl)")
    epochs: PosFloat = opt(1.0, "passes over the data (trl.max_steps wins)")
    lr: PosFloat = opt(1e-4, "peak learning rate")
    warmup: NonNegFloat = opt(0.05, "<1: share of the steps; >=1: steps")
    scheduler: Scheduler = opt("cosine", "transformers' SchedulerType")
    weight_decay: NonNegFloat = opt(0.0, "AdamW's weight decay")
    batch_size: Pos = opt(16, "rows per micro-batch per process")
    grad_accum: Pos = opt(1, "micro-batches per optimizer step")
    max_length: Pos = opt(2048, "tokens per row at most (longer rows are cut)")
    optim: caps.Optimizer = opt(
        "adamw_bnb_8bit", "falls back where bitsandbytes can't step (distill/capabilities.py)")
    attn_implementation: caps.Attention = opt("flash_attention_2", "falls back to sdpa where it can't run")
    dtype: caps.Dtype = opt("auto", "the weights as loaded (auto: the checkpoint's own)")
    gradient_checkpointing: bool = opt(
        False, "recompute activations in backward: less memory, ~1/3 more compute")
    threads: NonNeg = opt(0, "torch threads (0: torch's default)")
    logging_steps: Pos = opt(10, "log the loss every this many steps")
    save_steps: Pos = opt(200, "checkpoint every this many steps")
    seed: int = opt(
        0, "seeds every random choice of the stage: the same settings and inputs give the same outputs")
    method: methods.Method = opt(
        "sft", "distill: on-policy distillation from `teacher`; gkd, gold: TRL's GKD, GOLD (methods.py)")
    teacher: str = opt("", "distill, gkd, gold: the teacher's path or Hub id; distill: or a vLLM server's URL")
    plan: dict = opt(dict, "the memory plan's settings (distill/planner.py): the recipe's `plan:` section")
    force: bool = opt(False, "train even when the plan says the run does not fit")
    revision: str = opt("", "a Hub model pinned to a tag, branch or commit")
    trust_remote_code: bool = opt(False, "run code shipped with the checkpoint (logged, in the manifest)")
    allow_pickle: bool = opt(False, "load weights that are not safetensors")
    trl: dict = opt(dict, "any other trl.SFTConfig (gkd: GKDConfig) field, passed through")
    until: T.Until | None = opt(None, "train to a target: stop once a dev split of the training problems is "
                                      "answered this well (distill/target.py); bounded by max_steps")
    # the recipe's top-level `plan:` section is read whole into `plan` (its `training:` is this section itself)
    SECTIONS: ClassVar[dict] = {"plan": "plan"}

    def __post_init__(self):
        check_literals(self)
        if not self.model:
            raise ValueError("`model` is required (a path or Hub id)")
        if self.until is not None and training.launch()[1] == "zero3":
            raise ValueError("until: the dev checks generate with the whole model; ZeRO-3 partitions it")
        if self.method in methods.WITH_TEACHER and not self.teacher:
            raise ValueError(f"method={self.method} needs `teacher` (a path or Hub id)")
        if methods.is_server(self.teacher) and self.method != "distill":
            raise ValueError(f"teacher: a server teacher is for method=distill, not {self.method}")
        for k in ("epochs", "lr", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            check_positive(k, getattr(self, k))


def _wants(cfg: SftConfig, engine: str, config_json: Path | None) -> caps.Wants:
    return caps.Wants(attn=cfg.attn_implementation, liger=bool(cfg.trl.get("use_liger_kernel")), optim=cfg.optim,
                      precision=caps.wanted_precision(cfg.trl), dtype=cfg.dtype,
                      checkpoint_dtype=caps.checkpoint_dtype(config_json), engine=engine,
                      packed=bool(cfg.trl.get("packing") or cfg.trl.get("padding_free")))


def _needs(cfg: SftConfig) -> set[str]:
    """The slower probes this run needs (capabilities.probe)."""
    need = {"flash"} if cfg.attn_implementation.startswith("flash") else set()
    need |= {"liger"} if cfg.trl.get("use_liger_kernel") else set()
    need |= {"bnb"} if cfg.optim in caps.BNB else set()
    return need | ({"deepspeed"} if training.launch()[1].startswith("zero") else set())


def _check_memory(cfg: SftConfig, facts: caps.Facts, choices: dict, config_json: Path | None) -> dict | None:
    """`distill plan` for this launch, before any weights are loaded: a run that cannot fit stops in a second
    instead of after minutes of loading and an OOM. It plans the model that will load (its own config.json)
    with the features this machine runs (the capabilities); engine and GPU count are the launch's (one plain
    process is one GPU); the rest (gpu_memory, precision, reserve, ...) comes from the recipe's `plan:`.
    Returns the plan's estimate (for the manifest), None when nothing was planned."""
    from distill import planner as plan

    if not cfg.plan and not facts.cuda:
        return None  # the CPU demo: nothing to plan
    settings = {k: v for k, v in cfg.plan.items() if k != "training"}
    gpus, engine = training.launch()[0], choices["engine"].used or choices["engine"].wanted
    settings |= {"name": cfg.name, "gpus": gpus, "engine": engine,
                 "training": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "plan"}}
    if facts.cuda:  # the device this runs on, whatever GPU the recipe was written for
        import torch

        settings["gpu_memory"] = torch.cuda.get_device_properties(facts.device).total_memory / plan.GB
    try:
        if config_json is not None:  # the model that will load, not the recipe's shipped architecture
            settings["arch"] = str(config_json)
        if methods.teacher_loaded(cfg) and Path(cfg.teacher).is_dir():  # the teacher beside it, on every GPU
            settings["teacher_arch"] = str(training.model_config(cfg.teacher))
        p = plan.plan(plan.PlanConfig(**settings), cfg, facts)
    except (TypeError, ValueError, AttributeError, UserError) as e:
        if cfg.plan:  # the recipe asked for the plan: its mistakes are the user's to fix
            raise UserError(f"sft: plan: {str(e).splitlines()[0]}") from None
        # planned only because this is a GPU: a model or optimizer the planner does not know must not stop it
        log.warning("sft: plan skipped: %s", str(e).splitlines()[0])
        return None
    need, have = p["estimate"]["total"] / plan.GB, settings.get("gpu_memory", plan.PlanConfig.gpu_memory)
    line = (f"{need:.1f} GB per GPU of {have:g} ({gpus} x {engine}, micro-batch "
            f"{p['estimate']['micro_batch']}; largest that fits: {p['largest_micro_batch']})")
    if p["fits"]:
        log.info("sft: plan: fits: %s", line)
    elif cfg.force:
        log.warning("sft: plan: does NOT fit, going on (force=true): %s", line)
    else:
        raise UserError(f"sft: {cfg.name} does not fit: {line}; see `distill plan`, or force=true")
    return {"gb": round(need, 3), "params": p["architecture"]["params"], "micro_batch": p["estimate"]["micro_batch"],
            "largest_micro_batch": p["largest_micro_batch"], "shape": p["shape"]}


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a run killed while
    saving leaves a checkpoint-N without it, which resume_from_checkpoint=True would pick and then fail on."""
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.rpartition("-")[2]), default=None)


def _dataset(path: Path):
    from datasets import load_dataset

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
    dev = [(h["step"], h["dev_accuracy"]) for h in history if "dev_accuracy" in h]
    if dev:  # a run with `until:`: its dev checks on a second axis
        acc = ax.twinx()
        acc.plot(*zip(*dev), "o-", color="tab:orange", markersize=3)
        acc.set(ylabel="dev accuracy", ylim=(0, 1.02))
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
    started = time.time()
    for key in ("model", "teacher"):  # a path that is not a model folder: refused before anything loads
        if getattr(cfg, key) and not methods.is_server(getattr(cfg, key)):
            backends.check_local_dir(getattr(cfg, key), f"sft: {key}")
    if methods.is_server(cfg.teacher):
        methods.check_server(cfg.teacher)
    # What each asked-for feature becomes here, decided once (distill/capabilities.py), then the memory plan of
    # what will run. The model's own config.json (a local folder's, else the recipe's shipped copy of the base's)
    # gives the dtype `auto` loads.
    config_json = (training.model_config(cfg.model) if Path(cfg.model).is_dir()
                   else Path(cfg.plan["arch"]) if cfg.plan.get("arch") else None)
    facts = caps.probe(_needs(cfg))
    choices = caps.decide(_wants(cfg, training.launch()[1], config_json), facts)
    planned = _check_memory(cfg, facts, choices, config_json)
    if cfg.threads > 0:
        import torch

        # `threads` is the machine's: the processes of one launch share it (two 2-thread trainings on 2 cores
        # ran ~10x slower each than one)
        torch.set_num_threads(max(1, cfg.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    precision = choices["precision"].used
    if choices["engine"].used != choices["engine"].wanted:  # fsdp on CPU: the launch trains DDP, said so
        os.environ["ACCELERATE_USE_FSDP"] = "false"
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") not in ("no", precision):
        # students/accelerate/*.yaml ask for bf16; the Trainer would take it from the environment (on CPU:
        # autocast, slower than fp32 here and unlike a plain `distill sft`)
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no" if precision == "fp32" else precision
    data_path = Path(cfg.data or stage_dir(cfg.runs_dir, cfg.run, "filter", "teacher") / "train.jsonl")
    dev, keep = [], None
    if cfg.until is not None:  # a dev split of the training problems, held out of training
        problems = Path(cfg.until.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
        dev, keep = T.dev_split(cfg.until, problems, read_jsonl(data_path, required=("messages",)), cfg.seed)
    dataset = _dataset(data_path)
    rows = len(dataset)
    if keep is not None:
        dataset = dataset.select(keep)
    out = stage_dir(cfg.runs_dir, cfg.run, "sft", cfg.name)
    ckpt_dir = out / "checkpoints"
    ident = _identity(cfg, data_path)
    # checkpoints and a trained model are kept only for the settings and inputs that made them
    if check_identity(out / ".identity.json", ident, f"sft: {out}", f"delete {out} or give another name=",
                      defaults=defaults(SftConfig)):
        if (out / "manifest.json").is_file() and list((out / "model").glob("*.safetensors")):
            print(f"sft: up to date: {out / 'model'} was trained with these settings and inputs; nothing to do "
                  f"(to train again, delete {out} or give another name=)")
            return out
    elif ckpt_dir.is_dir() and _last_checkpoint(ckpt_dir):
        raise UserError(f"sft: {ckpt_dir} holds checkpoints of an unknown run (no {out / '.identity.json'}); "
                        f"to start afresh, delete {out} or give another name=")
    fallbacks = Fallbacks()
    caps.record(choices, fallbacks)  # logged once the inputs are good: a refusal is one line
    cpu = not facts.cuda
    settings = dict(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.lr, warmup_steps=cfg.warmup,
        lr_scheduler_type=cfg.scheduler, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, gradient_checkpointing=cfg.gradient_checkpointing, assistant_only_loss=True,
        # Padded batches (packing + padding_free is quadratic SDPA on CPU). "batch_rebalance" keeps the
        # optimizer batch a random sample while each micro-batch holds similar lengths (12.3k tok/s here vs
        # 7.0k random); "group_by_length" was faster (13.2k) but makes each step one task and level, and the
        # teacher then learned chain to 0.1-0.2 instead of 1.0 (bench/RESULTS.md). Under DDP the sampler is
        # rank-aware: every rank draws the same global batch and keeps its own share of it.
        packing=False, padding_free=False, train_sampling_strategy="batch_rebalance",
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        # Without CUDA, processes started by torchrun (accelerate's multi-GPU launcher) join a gloo group only
        # when told they are on CPU; otherwise each trains alone, as rank 0 of 1, writing the same files.
        use_cpu=cpu, disable_tqdm=False,
        ddp_find_unused_parameters=False)  # every weight of a causal LM gets a gradient: no DDP graph walk
    # `trl:` settings override ours; the capabilities' decisions override the recipe's asks they resolve
    decided = {"optim": choices["optimizer"].used, "bf16": precision == "bf16", "fp16": precision == "fp16",
               "use_liger_kernel": choices["liger"].used == "on"}
    if choices["batching"].reason:
        decided |= {"packing": False, "padding_free": False}
    # The Trainer's arguments before the model: under accelerate's DeepSpeed ZeRO-3 they register the config
    # that makes from_pretrained partition the weights as they load (each rank holds 1/N, never the whole).
    teach = methods.teacher_settings(cfg) if cfg.teacher else {}
    trainer_cls, args = methods.trainer(cfg.method, settings | teach, cfg.trl, decided,
                                        server=methods.is_server(cfg.teacher))
    peak = PeakMemory(facts.device).start()  # from before the weights load, to compare with the plan
    dtype = "auto" if cfg.dtype == "auto" and not choices["dtype"].reason else choices["dtype"].used
    policy = backends.recipe_policy(cfg, cfg.revision)
    model, tok = training.load_model(cfg.model, choices["attention"].used, dtype, policy)
    teacher = methods.teacher_model(cfg, choices["attention"].used, dtype)
    extra = {"teacher_model": teacher} if teacher is not None else {}
    dataset = methods.rows(cfg.method, dataset)
    timer = training.step_timer()
    # a dev check runs before the timer marks its step, inside the timed span, which then leaves it out
    target = T.callback(cfg.until, dev, tok, out / "best") if dev else None
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          callbacks=[target, timer] if target else [timer], **extra)
    if target:
        target.trainer = trainer
    main = trainer.is_world_process_zero()
    last = _last_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if main and not last:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / ".identity.json", ident)  # what the checkpoints to come are made with
    if last and main:
        print(f"sft: resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    peak.stop()
    history = trainer.state.log_history
    # every rank decides alike (the same curve): a rank that skipped a collective save would hang the others
    until = target and T.finish(target, history, cfg.until, dev, rows - len(dataset),
                                trainer.state.global_step, cfg.name, say=main)
    if until and until["use_best"]:  # never met: the best check's weights, not the last step's
        if main:
            T.keep_best(out / "best", out / "model", tok)
    else:
        training.save(trainer, tok, out / "model")
    if main:  # rank 0 alone writes the log, plot and manifest
        losses = [h["loss"] for h in history if "loss" in h]
        tokens = int(trainer.state.num_input_tokens_seen)
        train_s = result.metrics["train_runtime"] - (target.seconds if target else 0.0)  # less the dev checks
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        _plot_loss(history, out / "loss.png", cfg.name)
        params = sum(p.numel() for p in model.parameters())
        counts = {"rows": len(dataset), "steps": trainer.state.global_step, "tokens_seen": tokens,
                  "params": params, "first_loss": losses[0] if losses else None,
                  "final_loss": losses[-1] if losses else None, "resumed": last is not None,
                  "processes": args.world_size}
        models = {"model": cfg.model, "teacher": cfg.teacher}
        inputs = {"data": data_path} | {k: Path(v) for k, v in models.items() if v and Path(v).is_dir()}
        # measured peak (this rank's GPU allocator, or this process's RSS above its level before training)
        # beside the plan's estimate of it, when the run was planned
        memory = {"peak_gb": round(peak.mb * 2**20 / 1e9, 3), "measured": "cuda allocator" if facts.cuda
                  else "process RSS", "plan_gb": planned["gb"] if planned else None}
        finish(out, "sft", cfg, inputs, counts, started, fallbacks=fallbacks.items, optimizer=args.optim,
               method=cfg.method, loading=model.distill_loading, capabilities=caps.as_dict(facts, choices),
               memory=memory, plan=planned, until=until, timings={"train_s": round(train_s, 3),
                                                     "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
                                                     **timer.steady(target.after_first if target else 0.0)})
        print(f"sft: {cfg.name}: {trainer.state.global_step} steps ({cfg.method}, {args.world_size} "
              f"process(es)), loss {counts['first_loss']} -> {counts['final_loss']}, "
              f"{tokens / max(train_s, 1e-9):,.0f} tokens/s -> {out / 'model'}")
        shutil.rmtree(out / "best", ignore_errors=True)  # the kept weights are the model now
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

