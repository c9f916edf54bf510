"""Decontamination: word 8-gram overlap between training problems and eval benchmarks, as a stage and in filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.artifacts import read_jsonl
from distill.stages import decontaminate as D
from distill.stages import filter as filt

from .conftest import ROOT, distill

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "gsm8k" / "test.jsonl"
# GSM8K test question 1 is "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and
# bakes muffins for her friends every day with four. ..."; this one copies an 8-word span of it.
PLANTED = "Tom's hens are busy. She eats three for breakfast every morning and then sells the rest: how many?"
CLEAN = "A farmer has 3 goats and buys 4 more goats at the market. How many goats does the farmer have now?"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ngram_overlap_rules():
    evals = [("b", "e1", "What is the sum of the first ten positive odd integers, in simplest form?"),
             ("b", "e2", "Compute $\\dbinom{8}{4}$."),  # 4 words: compute, dbinom, 8, 4
             ("b", "e3", "Sum 1 8 4 8 4 9.")]
    train = [("long", "WHAT is the sum of the first -- ten positive odd integers? Be careful."),  # punctuation/case
             ("near", "Find the sum of the first ten positive even integers."),  # 6 shared words only
             ("has-short", "First, compute $\\dbinom{8}{4}$ and then add one."),  # contains all of e2
             ("short", "the first ten positive odd"),  # 5 words, all inside e1
             ("empty", "$$"),
             ("digits", "8 4 8 4")]  # numbers alone: no overlap, though e3 contains them
    found = {(o["train_id"], o["eval_id"]): o["ngram"] for o in D.find_overlaps(train, evals, n=8)}
    assert found == {("long", "e1"): "what is the sum of the first ten",
                     ("has-short", "e2"): "compute dbinom 8 4",
                     ("short", "e1"): "the first ten positive odd"}


def test_stage_removes_a_planted_gsm8k_overlap(tmp_path):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is absent")
    train = _write(tmp_path / "train.jsonl", [{"id": "clean", "problem": CLEAN, "answer": "7"},
                                              {"id": "planted", "problem": PLANTED, "answer": "9"}])
    distill("decontaminate", f"runs_dir={tmp_path / 'runs'}", "run=x", f"train={train}",
            "against=[eval/gsm8k.yaml]")  # the recipe, loaded from the repo root like a user would
    out = tmp_path / "runs" / "x" / "decontaminate"
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == ["clean"]
    assert read_jsonl(out / "overlaps.jsonl") == [{"train_id": "planted", "benchmark": "gsm8k",
                                                   "eval_id": "gsm8k-eval-00000",
                                                   "ngram": "she eats three for breakfast every morning and"}]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["kept"] == 1 and counts["dropped"] == 1 and counts["eval_problems"] == {"gsm8k": 1319}


def test_stage_reads_filter_output_and_normalised_eval_files(tmp_path):
    ev = _write(tmp_path / "eval.jsonl", [{"id": "q1", "problem": "Janet's ducks lay sixteen eggs per day, "
                                           "and she eats three of them.", "benchmark": "toy"}])
    chat = _write(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": "Janet's ducks lay sixteen eggs per day, and she eats three."},
                      {"role": "assistant", "content": "<think>\nx\n</think>\n13"}]},
        {"messages": [{"role": "user", "content": CLEAN}, {"role": "assistant", "content": "7"}]}])
    out = D.run(D.DecontaminateConfig(runs_dir=str(tmp_path / "r"), run="x", train=str(chat), against=[str(ev)]))
    assert [r["messages"][0]["content"] for r in read_jsonl(out / "train.jsonl")] == [CLEAN]
    assert [(o["train_id"], o["benchmark"], o["eval_id"]) for o in read_jsonl(out / "overlaps.jsonl")] == \
        [("0", "toy", "q1")]


def test_bad_eval_set_is_a_one_line_error(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"id": "a", "problem": CLEAN}])
    bad = _write(tmp_path / "raw.jsonl", [{"question": "q"}])
    proc = distill("decontaminate", f"runs_dir={tmp_path}", f"train={train}", f"against=[{bad}]", check=False)
    assert proc.returncode == 2 and f"{bad}:1: no `problem` field" in proc.stderr, proc.stderr


def test_filter_drops_contaminated_problems(tmp_path, monkeypatch):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is absent")
    problems = _write(tmp_path / "problems.jsonl", [{"id": "clean", "problem": CLEAN, "answer": "7"},
                                                    {"id": "planted", "problem": PLANTED, "answer": "9"}])
    trace = {"thinking": "t", "finish_reason": "stop", "thinking_tokens": 5}
    traces = _write(tmp_path / "traces.jsonl", [
        {"problem_id": "clean", "sample": 0, "answer": "The answer is $\\boxed{7}$.", **trace},
        {"problem_id": "planted", "sample": 0, "answer": "The answer is $\\boxed{9}$.", **trace},
        {"problem_id": "planted", "sample": 1, "answer": "The answer is $\\boxed{9}$.", **trace}])
    monkeypatch.chdir(ROOT)  # the recipe's data path is relative to the repo root
    out = filt.run(filt.FilterConfig(run="x", runs_dir=str(tmp_path / "r"), traces=str(traces),
                                     problems=str(problems), decontaminate_against=["eval/gsm8k.yaml"]))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 1 and stats["dropped"]["contaminated"] == 2 and stats["correct_rate"] == 1.0
    assert [o["train_id"] for o in read_jsonl(out / "overlaps.jsonl")] == ["planted"]
    assert read_jsonl(out / "train.jsonl")[0]["messages"][0]["content"] == CLEAN
