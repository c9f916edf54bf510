"""`distill <stage> --config recipe.yaml [key=value ...]`: a thin entry point over each stage's run(cfg).

`distill <stage> --help` lists the stage's keys with their types, defaults and help (from its config: the same
source as docs/config.md); `--print-config` prints the resolved config and exits; `--key value` is `key=value`
and `--flag` is `flag=true` for a yes/no key (`distill publish --push`, `distill quantize --format gguf-q8_0`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.util
import logging
import os
import signal
import sys

from distill.artifacts import UserError, stage_lock

# stage -> (module, config class), in the pipeline's order. Each module has one public `run(cfg) -> Path`.
STAGES = {
    "problems": ("distill.stages.problems", "ProblemsConfig"),
    "tokenizer": ("distill.stages.tokenizer", "TokenizerConfig"),
    "init": ("distill.stages.init", "InitConfig"),
    "traces": ("distill.stages.traces", "TracesConfig"),
    "decontaminate": ("distill.stages.decontaminate", "DecontaminateConfig"),
    "filter": ("distill.stages.filter", "FilterConfig"),
    "sft": ("distill.stages.sft", "SftConfig"),
    "verifier": ("distill.stages.verifier", "VerifierConfig"),
    "plan": ("distill.stages.plan", "PlanConfig"),
    "eval": ("distill.stages.eval", "EvalConfig"),
    "report": ("distill.stages.report", "ReportConfig"),
    "publish": ("distill.stages.publish", "PublishConfig"),
    "quantize": ("distill.stages.quantize", "QuantizeConfig"),
    "serve": ("distill.stages.serve", "ServeConfig"),
    "chat": ("distill.stages.chat", "ChatConfig"),
    "gpu-check": ("distill.stages.gpucheck", "GpuCheckConfig"),  # not a pipeline stage: a check of this machine
}


def _config_class(stage: str):
    module, cls = STAGES[stage]
    return getattr(importlib.import_module(module), cls)


def _summary(stage: str) -> str:
    doc = importlib.import_module(STAGES[stage][0]).__doc__ or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def stage_help(stage: str) -> str:
    """`distill <stage> --help`: what the stage does, then every key it takes, grouped."""
    from distill.config import describe

    lines = [f"usage: distill {stage} [--config RECIPE] [key=value | --key value ...] [--print-config]", "",
             _summary(stage), "",
             f"A recipe gives these keys in its `{stage}:` section (shared ones, like run, also at its top level); "
             "the command line's key=value wins."]
    for title, rows in describe(_config_class(stage)):
        lines += ["", f"{title}:"]
        for key, kind, default, text in rows:
            lines.append(f"  {key:<22} {kind} = {default}")
            if text:
                lines.append(f"  {'':<22} {text}")
    return "\n".join(lines) + "\n"


def reference() -> str:
    """docs/config.md: every stage's keys, from the same declarations as --help (`make docs` writes it)."""
    from distill.config import describe

    out = ["# Configuration reference", "",
           "Generated from the stages' config classes by `make docs` (a test fails when it is stale). Each stage "
           "reads its section of a recipe (`sft:`, `eval:`, ...), shared keys from the recipe's top level, and "
           "`key=value` from the command line; `distill <stage> --help` prints the same.", ""]
    for stage in STAGES:
        out += [f"## {stage}", "", _summary(stage), ""]
        for title, rows in describe(_config_class(stage)):
            out += [f"{title}:" if title != "settings" else "", "", "| key | type | default | |",
                    "|---|---|---|---|"]
            out += ["| `" + k + "` | " + t.replace("|", " \\| ") + " | `" + d + "` | " + h.replace("|", "\\|") + " |"
                    for k, t, d, h in rows]
            out.append("")
    return "\n".join(x for i, x in enumerate(out) if not (x == "" and i and out[i - 1] == "")) + "\n"


def _flags(stage: str, argv: list[str]) -> list[str]:
    """`--key value` as `key=value`, `--flag` as `flag=true` for a yes/no key of the stage."""
    import dataclasses
    import typing

    from distill.config import groups, keys

    cls = _config_class(stage)
    hints = {}
    for klass in (cls, *(type(g) for g in groups(cls).values())):
        hints |= {f.name: typing.get_type_hints(klass).get(f.name) for f in dataclasses.fields(klass)}
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        key = a[2:].replace("-", "_")
        if a.startswith("--") and "=" not in a and key in keys(cls):
            if hints.get(key) is bool:
                out.append(f"{key}=true")
            elif i + 1 < len(argv):
                out.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                raise UserError(f"{a} needs a value")
        else:
            out.append(a)
        i += 1
    return out


DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # past a file-size limit (RLIMIT_FSIZE) a write fails with EFBIG instead of the kernel killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if argv[:1] == ["grade"]:  # a tool over a file, not a recipe stage: its own flags (distill/grade.py)
        from distill import grade

        return grade.main(argv[1:])
    stage = argv[0] if argv and argv[0] in STAGES else None
    if stage and {"--help", "-h"} & set(argv[1:]):
        print(stage_help(stage), end="")
        return 0
    try:
        argv = [argv[0], *_flags(stage, argv[1:])] if stage else argv
    except UserError as e:
        print(f"distill {stage}: error: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="distill", description=__doc__,
                                     epilog="stages, in order: " + ", ".join(STAGES) + ". Also: distill grade "
                                            "--input IN.jsonl --output OUT.jsonl (re-grade generations).")
    parser.add_argument("stage", choices=list(STAGES), help="pipeline stage to run (distill <stage> --help)")
    parser.add_argument("--config", help="recipe YAML (teachers/, students/, eval/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a key of the stage")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=os.environ.get("DISTILL_LOG", "INFO"), format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "DS_ACCELERATOR" not in os.environ and importlib.util.find_spec("deepspeed"):
        import torch

        if not torch.cuda.is_available():  # DeepSpeed's own detection warns on every import without a GPU
            os.environ["DS_ACCELERATOR"] = "cpu"
    from distill.config import build, keys, load_recipe, parse_overrides

    try:
        recipe = load_recipe(args.config)
        all_fields = {k for s in STAGES for k in keys(_config_class(s))}
        cfg = build(_config_class(args.stage), args.stage, recipe, parse_overrides(args.overrides),
                    args.config or "defaults", set(STAGES) | {"plan"}, all_fields)
        if args.print_config:
            import yaml

            from distill.artifacts import flat

            print(yaml.safe_dump(flat(cfg), sort_keys=False), end="")
            return 0
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
