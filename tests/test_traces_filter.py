import json
import os
import signal
import subprocess
import sys
import time

from datasets import load_dataset

from distill.artifacts import read_jsonl
from distill.config import make
from distill.stages import filter as filt
from distill.stages import traces

from .conftest import ROOT


def test_solver_traces_then_filter_make_a_trl_ready_dataset(built):
    out = traces.run(make(traces.TracesConfig, run="t", runs_dir=str(built), name="solver", backend="solver", n=1))
    rows = read_jsonl(out / "traces.jsonl")
    problems = read_jsonl(built / "t" / "problems" / "train.jsonl")
    assert [(r["problem_id"], r["sample"]) for r in rows] == [(p["id"], 0) for p in problems]
    assert all(r["finish_reason"] == "stop" and r["thinking_tokens"] > 0 for r in rows)
    f = filt.run(filt.FilterConfig(run="t", runs_dir=str(built), name="solver", keep_per_problem=1))
    stats = json.loads((f / "stats.json").read_text())
    assert stats["kept"] == len(problems) and stats["correct_rate"] == 1.0
    ds = load_dataset("json", data_files=str(f / "train.jsonl"), split="train")
    msg = ds[0]["messages"]
    assert [m["role"] for m in msg] == ["user", "assistant"]
    assert msg[1]["content"].startswith("<think>\n") and "\n</think>\nFinal answer: " in msg[1]["content"]
    manifest = json.loads((f / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == len(problems) and manifest["inputs"]["traces"]["sha256"]


def test_filter_drops_each_reason(built, tmp_path):
    problems = read_jsonl(built / "t" / "problems" / "train.jsonl")[:3]
    p0, p1, p2 = problems
    good = {"thinking": "t", "finish_reason": "stop", "thinking_tokens": 5}
    rows = [
        {"problem_id": p0["id"], "sample": 0, "answer": f"The answer is {p0['answer']}.", **good},
        {"problem_id": p0["id"], "sample": 1, "answer": f"The answer is {p0['answer']}.", **good},  # duplicate
        {"problem_id": p1["id"], "sample": 0, "answer": "The answer is 11.", **good},  # wrong
        {"problem_id": p1["id"], "sample": 1, "answer": "", **good, "finish_reason": "length"},  # truncated
        {"problem_id": p2["id"], "sample": 0, "answer": f"The answer is {p2['answer']}.", **good,
         "thinking_tokens": 999},  # over-long
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = filt.run(filt.FilterConfig(run="t", runs_dir=str(tmp_path / "r"), traces=str(path),
                                     problems=str(built / "t" / "problems" / "train.jsonl"),
                                     max_thinking_tokens=100))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 1
    assert stats["dropped"] == {"truncated": 1, "wrong": 1, "overlong": 1, "duplicate": 1, "surplus": 0}
    assert stats["kept_anyway"] == {} and stats["correct_rate"] == 0.6
    # every sample's verdict, for `distill verifier`: correct by the checker, and why it was dropped
    verdicts = read_jsonl(out / "verdicts.jsonl")
    assert [(v["correct"], v["reason"]) for v in verdicts] == [
        (True, None), (True, None), (False, "wrong"), (False, "truncated"), (True, "overlong")]
    # drop=[]: every trace as written (the demo's unfiltered ablation), what a check would have dropped counted
    out = filt.run(filt.FilterConfig(run="t", runs_dir=str(tmp_path / "r"), name="all", traces=str(path),
                                     problems=str(built / "t" / "problems" / "train.jsonl"),
                                     max_thinking_tokens=100, keep_per_problem=1, drop=[]))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 5 and len(read_jsonl(out / "train.jsonl")) == 5
    assert set(stats["dropped"].values()) == {0} and stats["correct_rate"] == 0.6
    assert stats["kept_anyway"] == {"truncated": 1, "wrong": 1, "overlong": 1, "duplicate": 1, "surplus": 2}


def test_filter_records_pass_rates_and_keeps_rows_by_them(built, tmp_path):
    problems = read_jsonl(built / "t" / "problems" / "train.jsonl")[:4]
    right = lambda p, k, n=5: {"problem_id": p["id"], "sample": k, "answer": f"The answer is {p['answer']}.",  # noqa: E731
                               "thinking": f"t{k}", "finish_reason": "stop", "thinking_tokens": n}
    wrong = lambda p, k: {**right(p, k), "answer": "The answer is 1234567."}  # noqa: E731
    a, b, c, d = problems
    rows = [right(a, 0), right(a, 1, 9), right(a, 2), right(a, 3),  # 4/4: easy
            right(b, 0, 30), wrong(b, 1), wrong(b, 2), wrong(b, 3),  # 1/4: hard but solved
            right(c, 0, 7), right(c, 1), wrong(c, 2), wrong(c, 3),  # 2/4
            wrong(d, 0), wrong(d, 1), wrong(d, 2), wrong(d, 3)]  # never solved
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(run="t", runs_dir=str(tmp_path / "r"), traces=str(path),
                  problems=str(built / "t" / "problems" / "train.jsonl"), keep_per_problem=4)
    out = filt.run(filt.FilterConfig(**common, name="all"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 7 and stats["not_selected"] == 0
    assert stats["pass_rate"] == {"mean": round((1 + 0.25 + 0.5 + 0) / 4, 4), "never_solved": 1,
                                  "never_solved_ids": [d["id"]],
                                  "problems_by_rate": {"0.00": 1, "0.25": 1, "0.50": 1, "1.00": 1}}
    per = {r["problem_id"]: r["pass_rate"] for r in read_jsonl(out / "pass_rates.jsonl")}
    assert per == {a["id"]: 1.0, b["id"]: 0.25, c["id"]: 0.5, d["id"]: 0.0}

    def kept(by: str) -> list[str]:
        o = filt.run(filt.FilterConfig(**common, name=by, keep_rows=3, keep_by=by))
        st = json.loads((o / "stats.json").read_text())
        assert st["kept"] == 3 and st["not_selected"] == 4
        return sorted(_problem_ids(o, problems))

    # the hard-but-solved first: b's one right trace, then c's two
    assert kept("pass_rate") == sorted([b["id"], c["id"], c["id"]])
    # the longest thinking first: b (30), a's 9, c's 7
    assert kept("thinking_length") == sorted([b["id"], a["id"], c["id"]])
    assert len(kept("random")) == 3


def _problem_ids(out, problems) -> list[str]:
    by_text = {p["problem"]: p["id"] for p in problems}
    return [by_text[r["messages"][0]["content"]] for r in read_jsonl(out / "train.jsonl")]


def _traces_cmd(built, model, out_name):
    return [sys.executable, "-m", "distill.cli", "traces", f"runs_dir={built}", "run=t", f"name={out_name}",
            f"model={model}", "n=3", "max_thinking=24", "max_answer_tokens=4", "batch_size=4", "chunk=4",
            "threads=1"]


def test_transformers_traces_resume_after_kill_9(built):
    model = built / "t" / "init" / "tiny"
    cmd = _traces_cmd(built, model, "killed")
    log = built / "t" / "traces" / "killed" / "traces.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 8):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = log.read_text().count("\n")
    total = 80 * 3
    assert 8 <= partial < total, "the kill must land mid-run"
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    rows = read_jsonl(log)
    keys = [(r["problem_id"], r["sample"]) for r in rows]
    problems = read_jsonl(built / "t" / "problems" / "train.jsonl")
    assert sorted(keys) == sorted((p["id"], k) for p in problems for k in range(3))  # none missing, none twice
    manifest = __import__("json").loads((log.parent / "manifest.json").read_text())
    assert manifest["counts"]["resumed_from"] >= 8 and manifest["counts"]["samples"] == total
    r = rows[0]
    assert set(r) >= {"problem_id", "sample", "prompt", "thinking", "answer", "finish_reason", "thinking_tokens",
                      "answer_tokens", "wall_s", "teacher"}
    assert r["finish_reason"] in ("stop", "length") and r["thinking_tokens"] <= 24


def test_traces_resume_only_with_the_settings_that_made_the_log(built):
    from .conftest import distill

    model = built / "t" / "init" / "tiny"
    args = ["traces", f"runs_dir={built}", "run=t", "name=ident", f"model={model}", "n=2", "limit=3",
            "max_thinking=8", "max_answer_tokens=4", "threads=1"]
    distill(*args)
    log = built / "t" / "traces" / "ident" / "traces.jsonl"
    before = log.read_bytes()
    proc = distill(*args, "temperature=1.5", check=False)  # other settings: not resumed, nothing touched
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "temperature: 0.8 -> 1.5" in proc.stderr and "name=" in proc.stderr
    assert log.read_bytes() == before
    again = distill(*args, "n=3")  # the same settings: resumed, only the new samples are generated
    assert "6 samples already done, 3 to generate" in again.stdout


def test_traces_resumes_only_a_log_made_with_every_sample_shaping_setting(built):
    import pytest

    from distill.artifacts import UserError

    tiny = str(built / "t" / "init" / "tiny")
    cfg = dict(run="t", runs_dir=str(built), name="shaping", model=tiny, n=1, limit=4, max_thinking=8,
               max_answer_tokens=4, batch_size=4, chunk=4, threads=1)
    out = traces.run(make(traces.TracesConfig, **cfg))
    # a batch's seed follows its chunk and batch; dtype and kernel change the logits: each refuses the log
    for key, value in (("batch_size", 2), ("chunk", 2), ("dtype", "float32"), ("attn_implementation", "eager"),
                       ("vllm", {"max_model_len": 512})):
        with pytest.raises(UserError, match=rf"made with other settings \({key}: "):
            traces.run(make(traces.TracesConfig, **cfg | {key: value, "n": 2}))
    # a log recorded before these settings were part of its identity is theirs when they are at their defaults
    ident = json.loads((out / ".identity.json").read_text())
    for key in ("vllm", "llama_cpp", "dtype", "attn_implementation"):
        del ident[key]
    (out / ".identity.json").write_text(json.dumps(ident))
    assert traces.run(make(traces.TracesConfig, **cfg)) == out
