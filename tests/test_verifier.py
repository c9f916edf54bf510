"""`distill verifier` (an outcome reward model from the filter's verdicts) and `eval verifier=`: best-of-k.

The teacher's samples: the reference solver's traces (correct) and the same traces with the final answer moved
by one (wrong, graded so by the filter's checker), so every problem has both."""

import json
import random

import pytest

from distill import metrics
from distill.artifacts import read_jsonl
from distill.config import make
from distill.stages import filter as filt
from distill.stages import traces as tr

from .conftest import distill


def test_best_of_k_picks_the_highest_score_over_subsets():
    rng = random.Random(0)
    samples = [(0.1, False), (0.9, True), (0.5, False)]
    assert metrics.best_of_k(samples, 3, rng) == 1.0
    # k=2 over all three pairs: {0,1} -> 1 right, {0,2} -> 2 wrong, {1,2} -> 1 right
    assert metrics.best_of_k(samples, 2, rng) == pytest.approx(2 / 3)
    assert metrics.best_of_k(samples, 1, rng) == pytest.approx(1 / 3)  # best-of-1 is pass@1
    rows = metrics.parallel_axis([[("1", False), ("2", True), ("3", False)]], 10.0, 0, [[0.1, 0.9, 0.5]])
    assert [r["best_of_k"] for r in rows] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert "best_of_k" not in metrics.parallel_axis([[("1", False), ("2", True)]], 10.0)[0]


@pytest.fixture(scope="module")
def verdicts(built, tmp_path_factory):
    runs = tmp_path_factory.mktemp("verifier")
    out = tr.run(make(tr.TracesConfig, run="t", runs_dir=str(built), name="solver", backend="solver", n=1))
    rows = []
    for r in read_jsonl(out / "traces.jsonl"):
        rows.append(r | {"sample": 0})
        digit = int(r["answer"].split()[-1])
        rows.append(r | {"sample": 1, "answer": f"Final answer: {(digit + 1) % 10}"})
    path = runs / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    filt.run(filt.FilterConfig(run="t", runs_dir=str(runs), traces=str(path),
                               problems=str(built / "t" / "problems" / "train.jsonl")))
    return runs, path


def test_verifier_trains_on_the_filters_verdicts(built, verdicts):
    runs, path = verdicts
    distill("verifier", f"runs_dir={runs}", "run=t", f"traces={path}", f"problems={built / 't/problems/train.jsonl'}",
            f"model={built / 't/init/tiny'}", "max_steps=30", "batch_size=8", "lr=3e-3", "threads=1",
            "partners=1", "held_out=0.2")
    out = runs / "t" / "verifier" / "verifier"
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["samples"] == 160 and c["correct"] == c["wrong"] == 80
    # per problem: its own (correct, wrong) pair, and the wrong one against one correct sample of another problem
    assert c["pairs"] + c["held_out_pairs"] == 160 and c["held_out_pairs"] > 0
    assert 0.0 <= c["held_out_ordered"] <= 1.0 and c["steps"] == 30
    assert c["final_loss"] < c["first_loss"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1


def test_eval_scores_samples_with_the_verifier_for_best_of_k(built, verdicts, tmp_path):
    runs, _ = verdicts
    models = [{"name": "tiny", "role": "student", "path": str(built / "t" / "init" / "tiny")}]
    distill("eval", f"runs_dir={tmp_path}", "run=e", f"problems={built / 't/problems/eval.jsonl'}", "limit=6",
            f"models={json.dumps(models)}", "budgets=[4,8]", "n=2", "max_answer_tokens=4", "threads=1",
            f"verifier={runs / 't/verifier/verifier/model'}")
    res = json.loads((tmp_path / "e" / "eval" / "results.json").read_text())
    par = res["models"][0]["parallel"]
    assert [r["k"] for r in par] == [1, 2] and all(0.0 <= r["best_of_k"] <= 1.0 for r in par)
    top = [r for r in read_jsonl(tmp_path / "e" / "eval" / "samples.jsonl") if r["budget"] == 8]
    assert len(top) == 12 and all(isinstance(r["verifier_score"], float) for r in top)
    # best-of-1 is the mean correctness of the samples (every sample is its own subset)
    assert par[0]["best_of_k"] == pytest.approx(sum(r["correct"] for r in top) / 12)
    distill("report", f"runs_dir={tmp_path}", "run=e")
    assert "best-of-k by the verifier" in (tmp_path / "e" / "report.md").read_text()
