"""What `sft` trains with: the launch it runs in, the model as the capabilities decided, TRL's trainer per
method, and the final save. A library for distill/stages/sft.py (the stage) and bench/; it imports no stage."""

from __future__ import annotations

import os
import time
from pathlib import Path

from distill import backends
from distill.artifacts import UserError, staging


def launch() -> tuple[int, str]:
    """(processes, engine) of the launch this process is in, read from what accelerate launch exports."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return world, "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower() == "cpu"
        return world, "zero3_offload" if stage == "3" and offload else f"zero{stage}"
    return world, "ddp"


def model_config(model: str, revision: str = "") -> Path:
    """The config.json of the model that will be loaded: a local folder's own, or the Hub's (a few kB, before
    any weights, so the plan and the capabilities see the architecture and dtype that will load)."""
    if Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise UserError(f"{model}: no config.json (not a model folder)")
        return Path(model) / "config.json"
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model, "config.json", revision=revision or None))
    except Exception as e:  # offline, unknown repo, gated: no architecture to plan for
        raise UserError(f"cannot get {model}'s config.json ({type(e).__name__}); "
                        "give the recipe a `plan: {arch: <config.json>}`") from None


def load_model(path: str, attn: str, dtype: str, settings: dict):
    """The model and tokenizer, with the attention and dtype the capabilities decided. Called after the
    Trainer's arguments exist, so that under ZeRO-3 transformers partitions the weights as they load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = backends.policy(settings)
    try:
        tok = AutoTokenizer.from_pretrained(path, **backends.tokenizer_kwargs(kw))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **kw)
    except OSError as e:
        raise UserError(f"sft: cannot load model {path}: {str(e).splitlines()[0]}") from None
    from transformers.integrations import is_deepspeed_zero3_enabled

    # for the manifest; partitioned: ZeRO-3 split the weights across the ranks as they loaded
    model.distill_loading = backends.loaded(model, kw) | {"partitioned": is_deepspeed_zero3_enabled()}
    return model, tok


def sft_trainer():
    """TRL's SFTTrainer, with the model's own loss when training on CPU.

    SFTTrainer (TRL 1.16) always computes the loss through a "fused LM head" it patches into the model
    (chunked log-probs that never hold the logits, plus per-token entropy and top-1 accuracy for its
    `entropy` and `mean_token_accuracy` logs); no setting turns it or those metrics off. On CUDA it is a
    Triton kernel saving memory on large vocabularies; on CPU it runs as torch ops and cost the demo's
    students ~25 ms of a 65-95 ms micro-batch (bench/RESULTS.md, sft_throughput). So on CPU the loss is
    transformers' Trainer.compute_loss: the model's logits + cross-entropy summed over label tokens /
    num_items_in_batch, the quantity TRL computes (equal to float rounding); TRL's `entropy`,
    `mean_token_accuracy` and `num_tokens` (the Trainer's num_input_tokens_seen again), read by nothing
    here, are then not logged. Other losses (dft, label smoothing, MoE aux loss) keep TRL's path.
    distill plan models the same split (its loss head: full logits on CPU, TRL's chunked head on GPU)."""
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


def save(trainer, tok, dest: Path) -> None:
    """One safetensors folder that AutoModelForCausalLM loads, whatever the engine. Every rank calls
    save_model: ZeRO-3 gathers the partitions (zero3_save_16bit_model) and FSDP the shards into rank 0
    collectively. FSDP checkpoints are sharded (fast), which save_model would write as a distributed
    checkpoint that from_pretrained cannot read, so the final save asks for the full state dict, as the
    transformers FSDP guide does. Only rank 0 writes, into a staging folder moved into place when complete."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if not trainer.is_world_process_zero():
        trainer.save_model(str(dest.parent / f".{dest.name}.partial"))  # joins the gather, writes nothing
        return
    with staging(dest) as tmp:
        trainer.save_model(str(tmp))
        tok.save_pretrained(tmp)


def step_timer():
    """A TrainerCallback that marks (tokens seen, time) at the end of every optimizer step, so throughput can
    leave out the first step (CUDA's and the allocator's warm-up, kernel selection). On a GPU it waits for the
    step's kernels before reading the clock."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((int(state.num_input_tokens_seen), time.perf_counter()))

        def steady(self, exclude_s: float = 0.0) -> dict:
            """Tokens/s and seconds per step over the steps after the first (empty with fewer than 2), less
            `exclude_s` of work in between that was not training (sft's dev checks, run before these marks)."""
            if len(self.marks) < 2:
                return {}
            (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
            s1 -= exclude_s
            steps = len(self.marks) - 1
            return {"steady_tokens_per_s": round((t1 - t0) / max(s1 - s0, 1e-9), 1),
                    "steady_step_s": round((s1 - s0) / steps, 4), "steady_steps": steps}

    return StepTimer()
