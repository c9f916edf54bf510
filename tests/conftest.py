"""Fixtures: a tiny problem set, a tokenizer trained on it and a tiny Qwen2, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DISTILL_LOG", "WARNING")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY_ARCH = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2,
             "num_key_value_heads": 2}


def distill(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a separate process, its exit code and its output."""
    proc = subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"distill {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """runs_dir with run `t`: problems, tokenizer and an untrained tiny model at init/tiny."""
    from distill.stages import init, problems, tokenizer

    runs = tmp_path_factory.mktemp("runs")
    problems.run(problems.ProblemsConfig(run="t", runs_dir=str(runs), levels={"chain": [1, 2], "search": [1, 2]}, train_per_task=40,
                                         eval_per_task=6))
    tokenizer.run(tokenizer.TokenizerConfig(run="t", runs_dir=str(runs)))
    init.run(init.InitConfig(run="t", runs_dir=str(runs), name="tiny", arch=TINY_ARCH))
    return runs
