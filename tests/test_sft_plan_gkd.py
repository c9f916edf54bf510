"""sft's memory check before loading a model (a recipe's `plan:` section), and logit distillation
(`method: gkd`, TRL's GKDTrainer) end to end on tiny models."""

import json

import torch
import yaml
from safetensors.torch import load_file

from distill.stages import sft

from .conftest import distill
from .test_sft_eval import _data


def test_sft_refuses_what_the_plan_says_cannot_fit(built, tmp_path):
    data = _data(built) / "train.jsonl"
    tiny = built / "t" / "init" / "tiny"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "run": "t", "runs_dir": str(built), "name": "nofit", "threads": 1,
        "sft": {"model": str(tiny), "data": str(data), "logging_steps": 1},
        "plan": {"arch": str(tiny), "gpu_memory": 0.001, "training": {"batch_size": 99}}}))  # 1 MB per "GPU"
    # refused before anything is read: a missing data file is not even noticed
    proc = distill("sft", "--config", str(recipe), "data=/nonexistent.jsonl", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "does not fit" in err[0] and "force=true" in err[0]
    assert "micro-batch 16" in err[0]  # the plan saw sft's own settings, not the plan section's `training:`
    assert not (built / "t" / "sft" / "nofit").exists()
    # force=true goes on (and one step is enough to show it trains)
    distill("sft", "--config", str(recipe), "force=true", "trl.max_steps=1")
    m = json.loads((built / "t" / "sft" / "nofit" / "manifest.json").read_text())
    assert m["counts"]["steps"] == 1


def test_gkd_distils_a_teacher_end_to_end(built):
    data = _data(built) / "train.jsonl"
    tiny = built / "t" / "init" / "tiny"
    common = dict(run="t", runs_dir=str(built), data=str(data), lr=3e-3, batch_size=16, logging_steps=1,
                  save_steps=100, threads=1)
    teacher = sft.run(sft.SftConfig(**common, name="gkd-teacher", model=str(tiny), trl={"max_steps": 6}))
    # lmbda=1: every step trains on the student's own samples, so generation runs each step
    out = sft.run(sft.SftConfig(**common, name="gkd-student", model=str(tiny), method="gkd",
                                teacher=str(teacher / "model"),
                                trl={"max_steps": 3, "lmbda": 1.0, "beta": 0.5, "temperature": 0.9,
                                     "max_new_tokens": 12}))
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "gkd" and m["counts"]["steps"] == 3 and "teacher" in m["inputs"]
    losses = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 3 and all(x > 0 for x in losses)
    before, after = load_file(tiny / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "gkd" and cfg["trl"]["lmbda"] == 1.0


def test_gkd_needs_a_teacher(built):
    tiny = built / "t" / "init" / "tiny"
    proc = distill("sft", f"runs_dir={built}", "run=t", f"model={tiny}", "method=gkd", check=False)
    assert proc.returncode == 2 and "needs `teacher`" in proc.stderr and "Traceback" not in proc.stderr
