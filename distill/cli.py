"""`distill <stage> --config recipe.yaml [key=value ...]`: a thin entry point over each stage's run(cfg)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import importlib.util
import logging
import os
import signal
import sys

from distill.artifacts import UserError, stage_lock

# stage -> (module, config class). Each module has one public `run(cfg) -> Path`.
STAGES = {
    "problems": ("distill.problems", "ProblemsConfig"),
    "tokenizer": ("distill.tokenizer", "TokenizerConfig"),
    "init": ("distill.init", "InitConfig"),
    "traces": ("distill.traces", "TracesConfig"),
    "decontaminate": ("distill.decontaminate", "DecontaminateConfig"),
    "filter": ("distill.filter", "FilterConfig"),
    "sft": ("distill.sft", "SftConfig"),
    "plan": ("distill.plan", "PlanConfig"),
    "eval": ("distill.eval", "EvalConfig"),
    "report": ("distill.report", "ReportConfig"),
    "serve": ("distill.serve", "ServeConfig"),
    "chat": ("distill.chat", "ChatConfig"),
    "publish": ("distill.publish", "PublishConfig"),
    "quantize": ("distill.quantize", "QuantizeConfig"),
    "gpu-check": ("distill.gpucheck", "GpuCheckConfig"),  # not a pipeline stage: a check of this machine
}


def _config_class(stage: str):
    module, cls = STAGES[stage]
    return getattr(importlib.import_module(module), cls)


DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # past a file-size limit (RLIMIT_FSIZE) a write fails with EFBIG instead of the kernel killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    argv = ["push=true" if a == "--push" else a for a in argv]  # `distill publish --push`
    if "--format" in argv[:-1]:  # `distill quantize --format gguf-q4_k_m`
        i = argv.index("--format")
        argv[i:i + 2] = [f"format={argv[i + 1]}"]
    if argv[:1] == ["grade"]:  # a tool over a file, not a recipe stage: its own flags (distill/grade.py)
        from distill import grade

        return grade.main(argv[1:])
    parser = argparse.ArgumentParser(prog="distill", description=__doc__,
                                     epilog="Also: distill grade --input IN.jsonl --output OUT.jsonl "
                                            "(re-grade generations; see distill grade --help).")
    parser.add_argument("stage", choices=sorted(STAGES), help="pipeline stage to run")
    parser.add_argument("--config", help="recipe YAML (teachers/, students/, eval/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a key of the stage")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=os.environ.get("DISTILL_LOG", "INFO"), format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "DS_ACCELERATOR" not in os.environ and importlib.util.find_spec("deepspeed"):
        import torch

        if not torch.cuda.is_available():  # DeepSpeed's own detection warns on every import without a GPU
            os.environ["DS_ACCELERATOR"] = "cpu"
    from distill.config import build, load_recipe, parse_overrides

    try:
        recipe = load_recipe(args.config)
        if args.stage == "sft" and isinstance(recipe.get("plan"), dict):
            # sft checks memory with the recipe's plan section before loading a model (its `training:` is the
            # sft section itself, which sft passes with the command line's overrides applied)
            plan = {k: v for k, v in recipe["plan"].items() if k != "training"}
            recipe = {**recipe, "sft": {"plan": plan, **(recipe.get("sft") or {})}}
        all_fields = {f.name for s in STAGES for f in dataclasses.fields(_config_class(s))}
        cfg = build(_config_class(args.stage), args.stage, recipe, parse_overrides(args.overrides),
                    args.config or "defaults", set(STAGES), all_fields)
        # one writer per stage of a run (serve and chat only read; their caches take their own locks). Under
        # accelerate launch every rank runs this stage and rank 0 alone writes: it alone holds the lock.
        writer = args.stage not in ("serve", "chat") and os.environ.get("RANK", "0") == "0"
        lock = stage_lock(cfg, args.stage) if writer else contextlib.nullcontext()
        with lock:
            importlib.import_module(STAGES[args.stage][0]).run(cfg)
    except UserError as e:
        print(f"distill {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.stage}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        # a full disk or a file-size limit: not the user's input, but one line too; outputs are staged and
        # moved into place only whole, so the previous artifact is still there
        print(f"distill {args.stage}: error: cannot write: {e.strerror} ({e.filename or 'a file'}); the previous "
              "artifacts are unchanged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
