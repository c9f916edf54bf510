"""Stage `plan`: will a recipe's training fit in GPU memory? The table of distill/planner.py for the recipe's
sft section (`training:`) on an engine and a number of GPUs, a verdict, the largest micro-batch that fits and
the accumulation that keeps the global batch. From a machine without a GPU it plans for one on which every
feature the recipe asks for runs; on a GPU box, for that box.
Output: runs/<run>/plan/<name>/plan.json, and the table on stdout.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill import planner
from distill.artifacts import UserError, atomic_write_json, finish, stage_dir
from distill.planner import GB, PlanConfig

__all__ = ["PlanConfig", "run"]


def _training(cfg: PlanConfig):
    """The recipe's sft section as the sft stage reads it (its defaults filled in)."""
    from distill.stages.sft import SftConfig

    t = dict(cfg.training)
    t.setdefault("model", cfg.arch)
    try:
        return SftConfig(**t)
    except (TypeError, ValueError) as e:
        raise UserError(f"plan: training: {str(e).splitlines()[0]}") from None


def run(cfg: PlanConfig) -> Path:
    started = time.time()
    p = planner.plan(cfg, _training(cfg))
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
