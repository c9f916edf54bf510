"""The vLLM and OpenAI-server backends against the real engines on CPU: vLLM offline from .venv-vllm
(`make install-vllm`), and a real `vllm serve` started on 127.0.0.1 by the test.

Same sampling code, other primitive: at temperature 0, eval through each backend must agree per sample
with the transformers backend; the openai backend must survive its server being killed and restarted, must
not re-send what was answered before a crash, and must fail in one line when there is no server.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distill.artifacts import read_jsonl
from distill.config import make
from distill.stages import eval as ev
from distill.stages import filter as filt
from distill.stages import sft, traces

from .conftest import ROOT

VENV = ROOT / ".venv-vllm" / "bin"
# CI installs .venv-vllm (.ci/run); elsewhere these tests need `make install-vllm` and skip without it
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not (VENV / "vllm").exists() and not os.environ.get("CI"),
                                                    reason="needs .venv-vllm (make install-vllm)")]
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
# a head size vLLM's CPU kernels take (32), trained briefly so greedy choices are not near-ties
ARCH = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 2}
EVAL = dict(budgets=[8, 24, 64], n=1, temperature=0.0, max_answer_tokens=6, answer_cue="Final answer:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_distill(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(VENV / "distill"), *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)
    assert proc.returncode == 0, f"distill {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def teacher(built) -> Path:
    from distill.stages import init

    init.run(init.InitConfig(run="t", runs_dir=str(built), name="t32", arch=ARCH))
    traces.run(make(traces.TracesConfig, run="t", runs_dir=str(built), name="solver", backend="solver", n=1))
    data = filt.run(filt.FilterConfig(run="t", runs_dir=str(built), name="solver", keep_per_problem=1))
    out = sft.run(sft.SftConfig(run="t", runs_dir=str(built), name="t32", model=str(built / "t/init/t32"),
                                data=str(data / "train.jsonl"), epochs=60, lr=5e-3, batch_size=16,
                                save_steps=1000, logging_steps=50, threads=2))
    return out / "model"


class Server:
    """vLLM's OpenAI-compatible server on a free loopback port, as a user starts it; killed by its own PID."""

    def __init__(self, model: Path, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            # the API server `vllm serve` runs (the `vllm` command itself needs a package named "vllm", and the
            # CPU build is "vllm-cpu")
            [str(VENV / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
             "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
             "--seed", "0", "--reasoning-parser", "deepseek_r1", "--no-enable-chunked-prefill"], stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.proc.poll() is None, f"vllm serve exited:\n{self.log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        raise AssertionError("vllm serve did not come up in 300 s")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and the engine process it spawned
        self.proc.wait()

    def finished_requests(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))


@pytest.fixture(scope="module")
def server(teacher, tmp_path_factory):
    s = Server(teacher, _free_port(), tmp_path_factory.mktemp("serve") / "server.log").start()
    yield s
    if s.proc.poll() is None:
        s.kill()


def _samples(out: Path) -> dict:
    return {(r["problem_id"], r["budget"]): r for r in read_jsonl(out / "samples.jsonl")}


def _agreement(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    same = [a[k]["thinking_tokens"] == b[k]["thinking_tokens"] and a[k]["correct"] == b[k]["correct"] for k in a]
    return sum(same) / len(same)


def test_vllm_offline_agrees_with_transformers_and_writes_the_same_traces(built, teacher, tmp_path):
    problems = str(built / "t/problems/train.jsonl")  # 80 problems x 3 budgets
    models = [{"name": "t32", "role": "teacher", "path": str(teacher)}]
    ref = ev.run(make(ev.EvalConfig, run="tf", runs_dir=str(tmp_path), problems=problems, models=models, threads=2,
                               batch_size=80, **EVAL))
    _vllm_distill("eval", f"runs_dir={tmp_path}", "run=vl", f"problems={problems}", "backend=vllm",
                  f"models={json.dumps(models)}", *(f"{k}={json.dumps(v)}" for k, v in EVAL.items()))
    got = tmp_path / "vl" / "eval"
    assert _agreement(_samples(ref), _samples(got)) >= 0.95
    assert json.loads((got / "results.json").read_text())["models"][0]["backend"]["backend"] == "vllm"
    # the answers' log-probabilities (the model's own, a cascade's signal): the same answer, the same number
    a, b = _samples(ref), _samples(got)
    same = [(a[k]["answer_logprob"], b[k]["answer_logprob"]) for k in a if a[k]["answer"] == b[k]["answer"]]
    assert len(same) >= 0.9 * len(a) and all(x <= 0 and abs(x - y) < 0.01 for x, y in same), same[:5]

    # 160 seeded samples at temperature 0.8: enough prompt tokens in one engine step that a chunked prefill
    # would be split (which crashed vLLM 0.32's CPU runner until chunked prefill was turned off)
    common = ["run=t", f"runs_dir={built}", f"model={teacher}", "n=2", "temperature=0.8",
              "max_thinking=48", "max_answer_tokens=6"]
    subprocess.run([sys.executable, "-m", "distill.cli", "traces", *common, "name=tf"], check=True, cwd=ROOT,
                   capture_output=True)
    _vllm_distill("traces", *common, "name=vl", "backend=vllm")
    tf, vl = (read_jsonl(built / f"t/traces/{n}/traces.jsonl") for n in ("tf", "vl"))
    assert len(tf) == len(vl) == 160
    assert [(r["problem_id"], r["sample"]) for r in tf] == [(r["problem_id"], r["sample"]) for r in vl]
    for a, b in zip(tf, vl):
        assert a.keys() == b.keys() and {type(v) for v in a.values()} >= {str, int}
        assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
    m = json.loads((built / "t/traces/vl/manifest.json").read_text())
    assert m["backend"]["backend"] == "vllm" and m["backend"]["settings"]["enable_prefix_caching"] is True


def test_openai_backend_matches_offline_vllm(built, teacher, server, tmp_path):
    problems = str(built / "t/problems/train.jsonl")
    models = [{"name": "t32", "role": "teacher", "path": str(teacher)}]
    _vllm_distill("eval", f"runs_dir={tmp_path}", "run=vl", f"problems={problems}", "backend=vllm",
                  f"models={json.dumps(models)}", *(f"{k}={json.dumps(v)}" for k, v in EVAL.items()))
    out = ev.run(make(ev.EvalConfig, run="oa", runs_dir=str(tmp_path), problems=problems, models=models,
                               backend="openai", openai={"base_urls": [server.url], "model": "tiny",
                                                         "concurrency": 32}, **EVAL))
    assert _agreement(_samples(tmp_path / "vl" / "eval"), _samples(out)) >= 0.95
    counts = json.loads((out / "results.json").read_text())["models"][0]["backend"]["requests"]
    assert counts["max_in_flight"] == 32 and counts["sent"] == counts["requests"] > 80


def test_on_policy_distillation_from_a_teacher_on_the_server(built, server):
    # sft method=distill with the teacher behind vLLM's OpenAI server (TRL's ServerDistillationTrainer): the
    # student samples here, the server scores every token of its samples (prompt logprobs); the teacher never
    # loads. TRL's vLLM client needs vllm where it runs: the sft runs under .venv-vllm, as on a GPU box.
    data = built / "t" / "filter" / "solver" / "train.jsonl"
    common = [f"runs_dir={built}", "run=t", f"data={data}", "lr=3e-3", "batch_size=8", "logging_steps=1",
              "threads=1"]
    _vllm_distill("sft", *common, "name=srv-sft", f"model={built / 't/init/t32'}", "trl.max_steps=2")
    seen = server.finished_requests()
    _vllm_distill("sft", *common, "name=srv-opd", f"model={built / 't/sft/srv-sft/model'}", "method=distill",
                  f"teacher={server.url}", "trl.max_steps=2", "trl.max_completion_length=12")
    out = built / "t" / "sft" / "srv-opd"
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "distill" and m["counts"]["steps"] == 2 and "teacher" not in m["inputs"]
    assert f"teacher: {server.url}" in (out / "config.yaml").read_text()
    assert server.finished_requests() > seen  # the teacher's scores came from the server
    losses = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def _openai_traces(built, name: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "traces", "run=t", f"runs_dir={built}", f"name={name}",
            f"model={built / 't/sft/t32/model'}", "backend=openai", f"openai.base_urls=[{url}]",
            "openai.model=tiny", f"openai.cache={built / 't' / (name + '.cache.jsonl')}", "n=4",
            "temperature=0.8", "max_thinking=64", "max_answer_tokens=6", "chunk=64", *extra]


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while _lines(path) < n:
        assert proc.poll() is None, f"traces ended early: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no progress"
        time.sleep(0.05)


def _check_traces(built, name: str) -> dict:
    rows = read_jsonl(built / f"t/traces/{name}/traces.jsonl")
    keys = [(r["problem_id"], r["sample"]) for r in rows]
    problems = read_jsonl(built / "t/problems/train.jsonl")
    assert sorted(keys) == sorted((p["id"], k) for p in problems for k in range(4))  # each exactly once
    return json.loads((built / f"t/traces/{name}/manifest.json").read_text())["backend"]["requests"]


def test_openai_backend_survives_a_server_restart_and_a_crash(built, teacher, server):
    # 1. the server is killed mid-run and started again: the client retries until it is back
    cache = built / "t" / "restart.cache.jsonl"
    proc = subprocess.Popen(_openai_traces(built, "restart", server.url, "openai.max_retries=30"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(cache, 40, proc)
    server.kill()
    answered_before = _lines(cache)
    server.start()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    counts = _check_traces(built, "restart")
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == counts["sent"] == counts["requests"]  # none answered twice
    assert server.finished_requests() == counts["sent"] - answered_before  # the new server saw only the rest

    # 2. the client is killed mid-run (kill -9) and started again: nothing answered is sent again
    cache = built / "t" / "crash.cache.jsonl"
    proc = subprocess.Popen(_openai_traces(built, "crash", server.url), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_lines(cache, 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    answered, seen = _lines(cache), server.finished_requests()
    subprocess.run(_openai_traces(built, "crash", server.url), cwd=ROOT, check=True, capture_output=True)
    counts = _check_traces(built, "crash")
    assert counts["cached"] == answered and counts["sent"] == counts["requests"] - answered
    assert server.finished_requests() - seen == counts["sent"]


def test_openai_backend_without_a_server_fails_in_one_line(built, teacher, tmp_path):
    port = _free_port()  # nothing listens there
    cmd = [sys.executable, "-m", "distill.cli", "traces", "run=t", f"runs_dir={tmp_path}", f"model={teacher}",
           f"problems={built / 't/problems/train.jsonl'}", "backend=openai", "openai.model=tiny",
           f"openai.base_urls=[http://127.0.0.1:{port}/v1]", "openai.max_retries=1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "cannot reach" in errors[0] and str(port) in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "t").exists()  # no traces folder, no request cache: nothing half-written


def test_openai_chat_endpoint_reads_the_thinking_apart_and_refuses_budget_forcing(built, teacher, server):
    common = ["run=t", f"runs_dir={built}", f"model={teacher}", "backend=openai", f"openai.base_urls=[{server.url}]",
              "openai.model=tiny", "n=1", "limit=24", "temperature=0", "max_thinking=48", "max_answer_tokens=12"]
    for name, api in (("via-completions", "completions"), ("via-chat", "chat")):
        subprocess.run([sys.executable, "-m", "distill.cli", "traces", *common, f"name={name}", f"openai.api={api}",
                        "openai.extra_body={skip_special_tokens: false}",  # vLLM's parser needs the </think>
                        f"openai.cache={built / 't' / (name + '.jsonl')}"], cwd=ROOT, check=True, capture_output=True)
    raw, chat = (read_jsonl(built / f"t/traces/{n}/traces.jsonl") for n in ("via-completions", "via-chat"))
    closed = [(a, b) for a, b in zip(raw, chat) if a["finish_reason"] == "stop"]
    assert closed  # the same greedy continuation, split by the server's reasoning parser instead of by us
    assert all(a["thinking"] == b["thinking"] and a["answer"] == b["answer"] for a, b in closed)
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "eval", "run=t", f"runs_dir={built}",
                           f"models=[{{name: t, role: teacher, path: {teacher}}}]", "backend=openai",
                           f"openai.base_urls=[{server.url}]", "openai.model=tiny", "openai.api=chat"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "budget forcing is unavailable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
