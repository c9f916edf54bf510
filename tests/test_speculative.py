"""Speculative decoding: a smaller model with the same tokenizer as the teacher's draft (transformers assisted
generation). Greedy outputs must be the target's own, token for token; eval reports acceptance and speed-up.
Also the transformers backend's own CPU settings (a StaticCache, top-p without a sort): sampled tokens must be
transformers' defaults' (DynamicCache, TopPLogitsWarper), token for token."""

from __future__ import annotations

import dataclasses
import json

import pytest

from distill import generate as G
from distill.artifacts import UserError, read_jsonl
from distill.backends import transformers as T
from distill.config import make
from distill.stages import eval as ev

DRAFT_ARCH = {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32, "num_attention_heads": 2,
              "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def models(built):
    from distill.stages import init

    init.run(init.InitConfig(run="t", runs_dir=str(built), name="spec-draft", arch=DRAFT_ARCH, seed=1))
    return built / "t/init/tiny", built / "t/init/spec-draft"


def _prompts(built, tok, k=8):
    return [G.think_prompt(tok, p["problem"]) for p in read_jsonl(built / "t/problems/eval.jsonl")[:k]]


def test_greedy_with_draft_is_the_target_alone_token_for_token(built, models):
    teacher, draft = models
    b = T.load(str(teacher), settings={"draft": str(draft)}, fallbacks=None)
    prompts, stop = _prompts(built, b.tok), list(G.stop_tokens(b.tok))
    assert len(prompts) == 8
    kw = {"temperature": 0.0, "top_p": 1.0, "seed": 0}
    with_draft = b.generate(prompts, 40, stop, **kw)
    assert b.spec["proposed"] > 0 and 0 <= b.spec["accepted"] <= b.spec["proposed"]
    with b.without_draft():
        alone = b.generate(prompts, 40, stop, **kw)
    assert [g.ids for g in with_draft] == [g.ids for g in alone]
    assert sum(len(g.ids) for g in alone) > 8 * 5

    # the counter: a draft identical to the target proposes what the target would pick, so all is accepted
    same = T.load(str(teacher), settings={"draft": str(teacher)}, fallbacks=None)
    assert [g.ids for g in same.generate(prompts, 40, stop, **kw)] == [g.ids for g in alone]
    assert same.spec["proposed"] > 0 and same.spec["accepted"] / same.spec["proposed"] > 0.95


def test_cpu_generation_settings_sample_the_tokens_of_transformers_defaults(built, models):
    import torch
    from transformers import GenerationConfig

    b = T.load(str(models[0]), settings={}, fallbacks=None, batch_size=8)
    prompts, stop = _prompts(built, b.tok), list(G.stop_tokens(b.tok))
    gens = b.generate(prompts, 48, stop, temperature=0.7, top_p=0.8, seed=5)
    # the same batch (all 8 prompts, left-padded, shortest first) through generate with transformers' defaults
    order = sorted(range(8), key=lambda i: len(prompts[i]))
    width = max(map(len, prompts))
    ids = torch.tensor([[b.tok.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in order])
    torch.manual_seed(5)
    with torch.inference_mode():
        res = b.model.generate(input_ids=ids, attention_mask=(ids != b.tok.pad_token_id).long(),
                               generation_config=GenerationConfig(max_new_tokens=48, do_sample=True, temperature=0.7,
                                                                  top_p=0.8, top_k=0, eos_token_id=stop,
                                                                  pad_token_id=b.tok.pad_token_id))
    assert res.shape[1] - width == 48  # an untrained model: some rows run to the limit, with top-p cuts all along
    for row, i in enumerate(order):
        ref = res[row, width:].tolist()
        cut = next((k for k, t in enumerate(ref) if t in stop), None)
        assert gens[i].ids == (ref[:cut + 1] if cut is not None else ref)


def test_eval_reports_acceptance_and_speedup(built, models, tmp_path):
    teacher, draft = models
    cfg = make(ev.EvalConfig, run="sp", runs_dir=str(tmp_path), problems=str(built / "t/problems/eval.jsonl"),
                        models=[{"name": "teacher", "role": "teacher", "path": str(teacher),
                                 "draft": str(draft)}],
                        budgets=[8, 24], n=1, temperature=0.0, max_answer_tokens=6, limit=4, threads=2)
    out = ev.run(dataclasses.replace(cfg, warmup=False))
    cold = json.loads((out / "results.json").read_text())["models"][0]["cost"]["speculative"]
    out = ev.run(cfg)
    m = json.loads((out / "results.json").read_text())["models"][0]
    spec = m["cost"]["speculative"]
    assert spec["draft"] == str(draft) and m["backend"]["draft"] == str(draft)
    assert 0 <= spec["acceptance_rate"] <= 1 and spec["proposed_tokens"] > 0
    # the draft tokens of the eval run only: eval's warm-up (on by default) is not run with a draft
    counts = ("proposed_tokens", "accepted_tokens")
    assert [spec[k] for k in counts] == [cold[k] for k in counts]
    assert spec["tokens_per_s"] > 0 and spec["speedup_vs_target_alone"] > 0 and spec["speedup_prompts"] == 4
    assert spec["identical_to_target_alone"] is True
    from distill.stages import report

    lines = report._speculative_lines([m])  # the report's serving-cost section shows it
    assert any(line.startswith("| teacher | " + str(draft)) and "yes" in line for line in lines)

    with pytest.raises(UserError, match="draft"):
        make(ev.EvalConfig, models=[{"name": "t", "role": "teacher", "path": str(teacher), "draft": str(draft),
                               "backend": "vllm"}])


def test_logprobs_are_the_models_own_and_change_no_token(built, models):
    """generate(..., logprobs=True): the same tokens as without, and each sample's mean log-probability is the
    model's own, recomputed here by one forward pass over prompt + generated tokens (no padding)."""
    import torch

    b = T.load(str(models[0]), settings={}, fallbacks=None, batch_size=8)
    prompts, stop = _prompts(built, b.tok), list(G.stop_tokens(b.tok))
    kw = {"temperature": 0.7, "top_p": 0.8, "seed": 3}
    plain, scored = b.generate(prompts, 24, stop, **kw), b.generate(prompts, 24, stop, logprobs=True, **kw)
    assert [g.ids for g in plain] == [g.ids for g in scored] and all(g.logprob is None for g in plain)
    for p, g in zip(prompts, scored):
        with torch.inference_mode():
            logits = b.model(torch.tensor([p + g.ids])).logits[0, len(p) - 1:-1].float()
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(g.ids)[:, None]).mean().item()
        assert g.logprob == pytest.approx(want, abs=1e-4)
