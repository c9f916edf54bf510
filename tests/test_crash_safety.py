"""Crash-safety around the stages: one writer per stage of a run (a lock, taken over from a dead holder), a
finished stage re-run with the same settings is up to date, the loading policy (no checkpoint code, no pickle
weights unless a recipe allows them), and a write that fails (a file-size limit) leaving the previous artifact."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from .conftest import ROOT, distill

HOLD = """
import sys, time
from distill.config import make
from distill.artifacts import stage_lock
from distill.stages.traces import TracesConfig
with stage_lock(make(TracesConfig, runs_dir=sys.argv[1], run="t", name="solver", backend="solver", n=1), "traces"):
    print("held", flush=True)
    time.sleep(600)
"""


def _one_line(proc) -> str:
    """The error line; progress bars (tqdm, on stderr) before it are not errors."""
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not re.match(r"^[\w ]+:\s+\d+%\|", x)]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_a_second_writer_stops_at_once_and_a_dead_holders_lock_is_taken(built, tmp_path):
    args = ("traces", "backend=solver", "n=1", f"runs_dir={tmp_path}", "run=t", "name=solver",
            f"problems={built / 't/problems/train.jsonl'}", f"tokenizer={built / 't/tokenizer'}")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = distill(*args, check=False)
        line = _one_line(proc)
        assert proc.returncode == 2 and f"pid {holder.pid}" in line and "another process" in line
        assert not (tmp_path / "t").exists()  # it stopped before writing anything
        # another stage of the same run, or the same stage of another run, is not blocked
        distill(*args[:-3], "run=other", *args[-2:])
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the holder never releases its lock itself
        holder.wait()
    proc = distill(*args)
    assert "samples" in proc.stdout and (tmp_path / "t/traces/solver/manifest.json").is_file()


def test_a_finished_stage_rerun_with_the_same_settings_is_up_to_date(built, tmp_path):
    args = ("traces", "backend=solver", "n=1", f"runs_dir={tmp_path}", "run=t", "name=solver",
            f"problems={built / 't/problems/train.jsonl'}", f"tokenizer={built / 't/tokenizer'}")
    distill(*args)
    manifest = (tmp_path / "t/traces/solver/manifest.json").read_bytes()
    proc = distill(*args)
    assert "up to date" in proc.stdout and (tmp_path / "t/traces/solver/manifest.json").read_bytes() == manifest


def test_pickle_weights_are_refused_unless_allowed_and_the_policy_is_recorded(built, tmp_path):
    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(built / "t/init/tiny")
    pickled.mkdir()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # transformers 5 writes only safetensors
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja"):
        if (built / "t/init/tiny" / f).is_file():
            (pickled / f).write_bytes((built / "t/init/tiny" / f).read_bytes())
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    common = ("eval", f"runs_dir={tmp_path / 'runs'}", f"problems={built / 't/problems/eval.jsonl'}",
              "budgets=[4]", "n=1", "max_answer_tokens=2", "limit=2", "threads=1",
              f"models=[{{name: p, role: teacher, path: {pickled}}}]")
    proc = distill(*common, check=False)
    assert proc.returncode == 2 and "allow_pickle" in _one_line(proc)
    assert not (tmp_path / "runs").exists()
    distill(*common, "allow_pickle=true")
    res = json.loads((tmp_path / "runs/demo/eval/results.json").read_text())
    assert res["models"][0]["backend"]["loading"] == {"trust_remote_code": False, "safetensors_only": False,
                                                      "revision": None, "commit": None}


def test_a_failed_write_leaves_the_previous_artifact(built, tmp_path):
    args = ("problems", "--config", "eval/demo.yaml", f"runs_dir={tmp_path}", "run=t", "train_per_task=200")
    distill(*args)
    before = {p.name: p.read_bytes() for p in (tmp_path / "t/problems").iterdir()}

    def limit():  # a file-size limit far below the new train.jsonl: its write fails part way
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run([sys.executable, "-m", "distill.cli", *args, "seed=7"], capture_output=True, text=True,
                          cwd=ROOT, preexec_fn=limit, env={**os.environ, "DISTILL_LOG": "WARNING"}, timeout=300)
    assert proc.returncode == 1 and "cannot write: File too large" in _one_line(proc)
    assert {p.name: p.read_bytes() for p in (tmp_path / "t/problems").iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["problems"]  # no .partial left behind
