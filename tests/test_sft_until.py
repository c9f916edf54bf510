"""sft's `until:` (distill/target.py): training to a target on a dev split of the training problems."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.artifacts import read_jsonl
from distill.config import make
from distill.stages import sft
from distill.target import Until, accuracy

from .conftest import distill
from .test_sft_eval import _data

SAMPLING = {"max_thinking": 24, "max_answer_tokens": 4}


def _common(built, name):
    data = _data(built) / "train.jsonl"
    return dict(run="t", runs_dir=str(built), name=name, model=str(built / "t" / "init" / "tiny"), data=str(data),
                lr=3e-3, batch_size=8, logging_steps=1, save_steps=100, threads=1)


def _kept_accuracy(built, out, manifest):
    """The saved model's accuracy on the recorded dev problems, computed again from the files."""
    problems = {p["id"]: p for p in read_jsonl(built / "t" / "problems" / "train.jsonl")}
    dev = [problems[i] for i in manifest["until"]["dev_ids"]]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model", padding_side="left")
    return accuracy(model, tok, dev, make(Until, sampling=SAMPLING))


def test_a_run_that_reaches_its_target_stops_there_and_keeps_those_weights(built):
    until = {"accuracy": 0.0, "dev": 8, "every": 3, "sampling": SAMPLING}  # any check meets 0.0: the first stops
    out = sft.run(make(sft.SftConfig, **_common(built, "until-met"), until=until, trl={"max_steps": 12}))
    m = json.loads((out / "manifest.json").read_text())
    u = m["until"]
    assert m["counts"]["steps"] == 3 and u["met_at_step"] == 3 and u["kept_step"] == 3 and not u["use_best"]
    assert [s for s, _ in u["curve"]] == [3]
    assert u["dev_problems"] == 8 and len(u["dev_ids"]) == 8 and u["rows_held_out"] >= 8
    # the dev split's rows were held out of training; its problems are training problems
    rows = len(read_jsonl(_data(built) / "train.jsonl"))
    assert m["counts"]["rows"] == rows - u["rows_held_out"]
    assert all("-train-" in i for i in u["dev_ids"])
    assert _kept_accuracy(built, out, m) == u["kept_accuracy"]
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logged if "dev_accuracy" in h] == [3]
    assert not (out / "best").exists()  # the kept weights are the model


def test_a_run_that_never_reaches_it_stops_at_max_steps_says_so_and_keeps_the_best(built):
    common = _common(built, "until-missed")
    recipe_until = "until={accuracy: 1.0, dev: 8, every: 2, sampling: {max_thinking: 24, max_answer_tokens: 4}}"
    args = [f"{k}={v}" for k, v in common.items()] + [recipe_until, "trl.max_steps=6"]
    proc = distill("sft", *args)
    said = [ln for ln in proc.stdout.splitlines() if "never reached" in ln]
    assert len(said) == 1 and "in 6 steps" in said[0], proc.stdout
    out = built / "t" / "sft" / "until-missed"
    m = json.loads((out / "manifest.json").read_text())
    u = m["until"]
    assert m["counts"]["steps"] == 6 and u["met_at_step"] is None and [s for s, _ in u["curve"]] == [2, 4, 6]
    best = max(a for _, a in u["curve"])
    assert u["kept_accuracy"] == best and u["use_best"] == (best > u["curve"][-1][1])
    assert _kept_accuracy(built, out, m) == best


def test_until_mistakes_are_one_line(built):
    common = _common(built, "until-bad")
    base = [f"{k}={v}" for k, v in common.items()]
    for extra, says in [("until={acuracy: 0.9}", "until.acuracy"),
                        ("until={accuracy: 2}", "until.accuracy"),
                        ("until={sampling: {temprature: 1}}", "temprature"),
                        # the held-out problems are never a dev split: none of them has a training row
                        (f"until={{problems: {built}/t/problems/eval.jsonl}}", "none of its problems")]:
        proc = distill("sft", *base, extra, check=False)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and says in err[0], proc.stderr
    assert not (built / "t" / "sft" / "until-bad").exists()


def test_a_target_run_killed_mid_training_resumes_to_the_same_model_and_curve(built, tmp_path):
    """kill -9 once a checkpoint exists: the re-run resumes, its dev curve and kept weights are an uninterrupted
    run's (the curve lives in the checkpoints' log history, the best check's weights in best/)."""
    from safetensors.torch import load_file

    from .test_kill_matrix import _bench

    km = _bench()
    common = {**_common(built, "k"), "runs_dir": str(tmp_path), "save_steps": 2}
    args = [f"{k}={v}" for k, v in common.items()] + [
        "until={accuracy: 1.0, dev: 8, every: 2, sampling: {max_thinking: 24, max_answer_tokens: 4}}",
        f"until.problems={built / 't' / 'problems' / 'train.jsonl'}", "trl.max_steps=8"]
    ref = distill("sft", *args, "run=ref")
    out = tmp_path / "t" / "sft" / "k"
    killed = km.kill_after(["sft", *args], 0, lambda: km.has_partial_state("sft", out))
    assert killed and km.partial_state("sft", out).startswith("checkpoint-")
    again = distill("sft", *args)
    assert "sft: resuming from" in again.stdout, ref.stdout
    m, r = (json.loads((d / "manifest.json").read_text())["until"] for d in (out, tmp_path / "ref" / "sft" / "k"))
    assert m["curve"] == r["curve"] and m["kept_step"] == r["kept_step"] and [s for s, _ in m["curve"]] == [2, 4, 6, 8]
    mine, theirs = (load_file(d / "model" / "model.safetensors") for d in (out, tmp_path / "ref" / "sft" / "k"))
    assert all((mine[k] == theirs[k]).all() for k in theirs)
