"""`reasoning_effort: auto`: `distill serve` runs a cascade that a real `distill eval` made, its second stage a
second `distill serve` reached through the `openai` backend, asked by the official `openai` client.

The model: the tiny Qwen2 trained briefly on the solver's traces (chain and search, levels 1-2). It has
learned the traces' shape, so its thinking length follows the level: chain level 1 closes in ~13 tokens,
level 2 needs ~25. With the first stage at budget 16 and a rule that escalates a thinking the budget cut
(max_thinking = 16), level 1 is easy (answered at the first stage) and level 2 hard (escalated). The
threshold is set here, not calibrated: what eval's calibration picks depends on how right this briefly
trained model happens to be, and the test is about the routing.
"""

import json
import shutil

import openai
import pytest

from distill.artifacts import read_jsonl
from distill.config import make
from distill.stages import sft

from .conftest import distill
from .test_serve import Serve
from .test_sft_eval import _data


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory) -> tuple:
    runs = tmp_path_factory.mktemp("auto")
    out = sft.run(make(sft.SftConfig, run="t", runs_dir=str(runs), name="m", model=str(built / "t" / "init" / "tiny"),
                       data=str(_data(built) / "train.jsonl"), lr=1e-2, batch_size=8, logging_steps=100,
                       save_steps=10_000, threads=1, trl={"max_steps": 1500}))
    small, large = runs / "small", runs / "large"
    shutil.copytree(out / "model", small)
    shutil.copytree(out / "model", large)
    return runs, small, large


def test_easy_problems_stop_at_the_first_stage_and_hard_ones_escalate(built, trained):
    runs, small, large = trained
    chain = [p for p in read_jsonl(built / "t" / "problems" / "eval.jsonl") if p["task"] == "chain"]
    models = [{"name": "small", "role": "student", "path": str(small)},
              {"name": "large", "role": "teacher", "path": str(large)}]
    cascades = [{"name": "c", "stages": [{"model": "small", "budget": 16}, {"model": "large", "budget": 64}],
                 "rule": "thinking"}]
    distill("eval", f"runs_dir={runs}", "run=e", f"problems={built / 't/problems/eval.jsonl'}",
            f"models={json.dumps(models)}", f"cascades={json.dumps(cascades)}", "budgets=[16,64]", "n=1",
            "max_answer_tokens=6", "threads=1", "temperature=0")
    results = runs / "e" / "eval" / "results.json"
    res = json.loads(results.read_text())
    [c] = res["cascades"]["cascades"]
    assert c["name"] == "c" and c["calibration_problems"] + c["test_problems"] == 12
    assert (runs / "e" / "eval" / "cascades.png").stat().st_size > 0
    c["thresholds"] = [{"min_agreement": 0.0, "max_thinking": 16}]  # escalate a cut thinking (see above)
    results.write_text(json.dumps(res))

    second = Serve(runs / "large.log", f"model={large}", "name=large", "max_tokens=96")
    first = None
    try:
        first = Serve(runs / "small.log", f"model={small}", f"results={results}", "cascade=c",
                      f"endpoints={{large: {second.url}}}", "max_tokens=96", f"runs_dir={runs}")
        assert "auto=small@16 -> large@64" in first.log.read_text()
        client = openai.OpenAI(base_url=first.url, api_key="none")
        stages, answers = {}, {}
        for p in chain:
            r = client.chat.completions.create(model="small", messages=[{"role": "user", "content": p["problem"]}],
                                               temperature=0, reasoning_effort="auto", max_tokens=96)
            used = r.usage.model_extra["cascade"]
            stages[p["level"]] = stages.get(p["level"], []) + [used["stage"]]
            answers[p["id"]] = (used, r.usage.completion_tokens_details.reasoning_tokens)
        assert stages == {1: [0, 0, 0], 2: [1, 1, 1]}, stages
        for used, reasoning in answers.values():
            assert used["model"] == ("small" if used["stage"] == 0 else "large")
            if used["stage"] == 1:  # the first stage's cut thinking (16 tokens) is paid for too
                assert reasoning > 16
        assert second.health()["requests"] > 0  # the hard ones went to the other server
        plain = client.chat.completions.create(model="small", messages=[{"role": "user", "content": chain[0]["problem"]}],
                                               temperature=0, max_tokens=96)
        assert "cascade" not in (plain.usage.model_extra or {})
    finally:
        second.stop()
        if first:
            first.stop()


def test_auto_without_a_cascade_is_refused(built, trained, tmp_path):
    _, small, _ = trained
    proc = distill("serve", f"model={small}", "default_effort=auto", check=False)
    assert proc.returncode == 2 and "default_effort auto needs cascade=" in proc.stderr, proc.stderr
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"models": [{"name": "small", "role": "student", "path": str(small),
                                               "budgets": [{"budget": 8, "accuracy": 0.5}]}]}))
    proc = distill("serve", f"model={small}", f"results={results}", "cascade=nope", "port=0", check=False)
    assert proc.returncode == 2 and "has no cascade 'nope' (has: none" in proc.stderr, proc.stderr
    # a stage on another server escalating on its answer's log-probability: the openai backend gives none
    res = json.loads(results.read_text()) | {"cascades": {"cascades": [{
        "name": "c", "stages": [{"model": "small", "budget": 8, "k": 1}, {"model": "small", "budget": 8, "k": 1}],
        "thresholds": [{"min_agreement": 0.0, "max_thinking": None, "min_logprob": -0.5}]}]}}
    results.write_text(json.dumps(res))
    proc = distill("serve", f"model={small}", f"results={results}", "cascade=c", "endpoints={small: http://127.0.0.1:9/v1}",
                   "port=0", check=False)
    assert proc.returncode == 2 and "does not give" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
        proc.stderr
