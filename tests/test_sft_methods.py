"""sft's distillation methods beyond plain SFT, end to end on tiny models: on-policy distillation from a
teacher loaded beside the student (`method: distill`, TRL's DistillationTrainer) and GOLD across two
tokenizers trained here on different data (`method: gold`). The teacher-on-a-server path runs against a real
vLLM server in tests/test_backends.py."""

import http.server
import importlib.util
import json
import threading

import torch
import yaml
from safetensors.torch import load_file

from distill.stages import filter as filt
from distill.stages import init, problems, sft, tokenizer, traces

from .conftest import TINY_ARCH, distill
from .test_sft_eval import _data, make


def _changed(before, after) -> bool:
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    return any(not torch.equal(a[k], b[k]) for k in a)


def _steps(out) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_on_policy_distillation_from_an_sft_student(built):
    data = _data(built) / "train.jsonl"
    tiny = built / "t" / "init" / "tiny"
    common = dict(run="t", runs_dir=str(built), data=str(data), lr=3e-3, batch_size=8, logging_steps=1,
                  save_steps=100, threads=1)
    teacher = sft.run(sft.SftConfig(**common, name="opd-teacher", model=str(tiny), trl={"max_steps": 6}))
    student = sft.run(sft.SftConfig(**common, name="opd-sft", model=str(tiny), trl={"max_steps": 2}))
    out = sft.run(sft.SftConfig(**common, name="opd", model=str(student / "model"), method="distill",
                                teacher=str(teacher / "model"),
                                trl={"max_steps": 3, "max_completion_length": 12, "temperature": 1.0}))
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "distill" and m["counts"]["steps"] == 3 and "teacher" in m["inputs"]
    # one row per training problem: the student samples its own completions to the prompts
    prompts = {json.dumps(json.loads(x)["messages"][0]) for x in data.read_text().splitlines()}
    assert m["counts"]["rows"] == len(prompts)
    assert len(_steps(out)) == 3 and all(s["loss"] >= 0 for s in _steps(out))
    assert _changed(student / "model", out / "model")
    assert yaml.safe_load((out / "config.yaml").read_text())["trl"]["max_completion_length"] == 12


def test_gold_distils_across_tokenizers(built, tmp_path):
    # a teacher with its own tokenizer, trained on other problems (search only, a smaller vocabulary)
    runs = str(tmp_path)
    problems.run(problems.ProblemsConfig(run="o", runs_dir=runs, tasks=["search"], levels={"search": [1, 2]},
                                         train_per_task=60,
                                         eval_per_task=4))
    tokenizer.run(tokenizer.TokenizerConfig(run="o", runs_dir=runs, vocab_size=300))
    init.run(init.InitConfig(run="o", runs_dir=runs, name="other", arch=TINY_ARCH))
    traces.run(make(traces.TracesConfig, run="o", runs_dir=runs, name="solver", backend="solver", n=1))
    other_data = filt.run(filt.FilterConfig(run="o", runs_dir=runs, name="solver")) / "train.jsonl"
    teacher = sft.run(sft.SftConfig(run="o", runs_dir=runs, name="teacher",
                                    model=str(tmp_path / "o/init/other"), data=str(other_data), lr=3e-3,
                                    trl={"max_steps": 4}, threads=1))
    student_tok = json.loads((built / "t" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    teacher_tok = json.loads((teacher / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert student_tok != teacher_tok

    tiny = built / "t" / "init" / "tiny"
    data = _data(built) / "train.jsonl"
    common = ["run=t", f"runs_dir={built}", f"model={tiny}", f"data={data}", f"teacher={teacher / 'model'}",
              "threads=1", "logging_steps=1", "batch_size=8"]
    # GKD compares the distributions id by id: it refuses another tokenizer, in one line, and names gold
    proc = distill("sft", *common, "name=gkd-x", "method=gkd", check=False)
    assert proc.returncode == 2 and "different tokenizers" in proc.stderr and "method=gold" in proc.stderr
    assert "Traceback" not in proc.stderr
    distill("sft", *common, "name=gold", "method=gold", "trl.max_steps=3", "trl.lmbda=0.5",
            "trl.max_completion_length=12")
    out = built / "t" / "sft" / "gold"
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "gold" and m["counts"]["steps"] == 3
    assert len(_steps(out)) == 3 and _changed(tiny, out / "model")


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_methods_refuse_what_they_cannot_do(built):
    tiny = built / "t" / "init" / "tiny"
    # a real server on loopback that answers /health: the URL is right, and this venv has no vllm for TRL's
    # client
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    up = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    cases = [(["method=distill"], "method=distill needs `teacher`"),
             (["method=gkd", f"teacher={up}"], "a server teacher is for method=distill"),
             (["method=distill", "teacher=http://127.0.0.1:9/v1"], "does not answer")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["method=distill", f"teacher={up}"], "needs vllm installed where sft runs"))
    for args, says in cases:
        proc = distill("sft", f"runs_dir={built}", "run=t", f"model={tiny}", "name=refused", *args,
                       check=False)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and says in err[0], proc.stderr
    srv.shutdown()
    assert not (built / "t" / "sft" / "refused").exists()
