import dataclasses
import json
import shutil
import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.artifacts import UserError
from distill.config import make
from distill.stages import eval as ev
from distill.stages import filter as filt
from distill.stages import sft, traces


def _data(built):
    traces.run(make(traces.TracesConfig, run="t", runs_dir=str(built), name="solver", backend="solver", n=1))
    return filt.run(filt.FilterConfig(run="t", runs_dir=str(built), name="solver", keep_per_problem=1))


def test_sft_trains_assistant_tokens_and_resumes(built):
    data = _data(built) / "train.jsonl"
    init = built / "t" / "init" / "tiny"
    cfg = dict(run="t", runs_dir=str(built), name="s", model=str(init), data=str(data), epochs=2, lr=3e-3,
               batch_size=16, logging_steps=1, save_steps=5, threads=1)
    out = sft.run(sft.SftConfig(**cfg))
    before = AutoModelForCausalLM.from_pretrained(init)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not torch.equal(before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["steps"] == 10 and m["counts"]["final_loss"] < m["counts"]["first_loss"]
    assert {f["wanted"] for f in m["fallbacks"]} >= {"flash_attention_2"}  # no CUDA here: logged fallback
    assert (out / "loss.png").stat().st_size > 0 and (out / "log.jsonl").exists()
    assert AutoTokenizer.from_pretrained(out / "model").chat_template
    weights = (out / "model" / "model.safetensors").read_bytes()
    # the same settings again: up to date, nothing trained or rewritten
    before_text = (out / "manifest.json").read_text()
    assert sft.run(sft.SftConfig(**cfg)) == out and (out / "manifest.json").read_text() == before_text
    # other settings (a longer run changes the learning-rate schedule of the steps already taken): refused
    with pytest.raises(UserError, match=r"made with other settings \(epochs: 2 -> 3\)"):
        sft.run(sft.SftConfig(**{**cfg, "epochs": 3}))
    # an interrupted run (checkpoints, no final model): the same settings resume from the last checkpoint
    shutil.rmtree(out / "model")
    (out / "manifest.json").unlink()
    m2 = json.loads((sft.run(sft.SftConfig(**cfg)) / "manifest.json").read_text())
    assert m2["counts"]["resumed"] and m2["counts"]["steps"] == 10
    assert (out / "model" / "model.safetensors").read_bytes() == weights


def test_assistant_only_mask_covers_the_reasoning_and_answer_only(built):
    tok = AutoTokenizer.from_pretrained(built / "t" / "tokenizer")
    msgs = [{"role": "user", "content": "sum a1 b2 mod 10"},
            {"role": "assistant", "content": "<think>\na1+b2=3\n</think>\nThe answer is 3."}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert trained == msgs[1]["content"] + "<|im_end|>"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")


def test_eval_results_schema_budgets_and_plots(built):
    model = str(built / "t" / "init" / "tiny")
    cfg = make(ev.EvalConfig, run="t", runs_dir=str(built), budgets=[2, 6, 12], n=2, max_answer_tokens=4,
                        batch_size=8, threads=1, answer_cue="Final answer:",
                        models=[{"name": "teach", "role": "teacher", "path": model},
                                {"name": "stud", "role": "student", "path": model}])
    out = ev.run(cfg)
    res = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in res["models"]] == ["teach", "stud"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for m in res["models"]:
        assert m["params"] > 0 and [b["budget"] for b in m["budgets"]] == [2, 6, 12]
        used = [b["mean_thinking_tokens"] for b in m["budgets"]]
        assert all(u <= b for u, b in zip(used, [2, 6, 12])) and used == sorted(used)
        for b in m["budgets"]:
            mine = [r for r in rows if r["model"] == m["name"] and r["budget"] == b["budget"]]
            per_sample = [statistics.mean(r["correct"] for r in mine if r["sample"] == k) for k in range(2)]
            assert b["accuracy"] == pytest.approx(statistics.mean(per_sample))
            assert b["accuracy_std"] == pytest.approx(statistics.pstdev(per_sample))  # spread over the 2 samples
            assert b["self_closed"] == pytest.approx(statistics.mean(r["within_budget"] for r in mine))
        cost = m["cost"]
        assert cost["tokens_per_s"] > 0 and cost["latency_p95_s"] >= cost["latency_p50_s"] > 0
        assert cost["flops_per_problem"] > 2 * m["params"]
        assert m["grading"] == {"timeouts": 0, "errors": 0}
    # the first model in the process: loading it and its KV caches take memory above the level before
    assert res["models"][0]["cost"]["peak_mem_mb"] > 0
    assert len(rows) == 2 * 12 * 2 * 3  # models x problems x samples x budgets
    assert all(r["thinking_tokens"] <= r["budget"] for r in rows)
    assert all(r["forced"] == (not r["within_budget"]) for r in rows)
    assert all(r["answer"].startswith("Final answer:") for r in rows if r["forced"])
    for png in ("accuracy_vs_thinking.png", "accuracy_vs_cost.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.csv").read_text().count("\n") == 1 + 2 * 3
    # the untimed warm-up pass (on by default) samples with the same seeds: the timed pass is unchanged by it
    ev.run(dataclasses.replace(cfg, warmup=False))
    cold = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [{**r, "latency_s": 0} for r in cold] == [{**r, "latency_s": 0} for r in rows]
