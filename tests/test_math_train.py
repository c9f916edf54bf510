"""MATH train as training problems (the teacher recipes' `problems:` section, read from the mirror in
../shared/data), traces of a tiny model, and `filter` grading them with math-verify against the MATH gold."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from distill.artifacts import read_jsonl

from .conftest import ROOT, SHARED, distill

MATH_TRAIN = SHARED / "math" / "train.jsonl"
TEACHERS = ("r1-distill-qwen-32b", "qwq-32b", "hosted-r1")
ANSWER = "\\boxed{-1}"  # the hand-wired model's only answer: gold of 3 of the first 16 MATH train problems
NEG_ONE = ["train/algebra/7.json", "train/algebra/16.json", "train/algebra/19.json"]

pytestmark = pytest.mark.skipif(not MATH_TRAIN.is_file(), reason=f"{MATH_TRAIN} is absent")


def _recipe(tmp_path: Path, teacher: str = "r1-distill-qwen-32b", **sections) -> Path:
    """A recipe with the teacher recipe's `problems:` section as it is (only that section is read from it:
    its traces section is for a GPU) and the given test-sized sections."""
    problems = yaml.safe_load((ROOT / "teachers" / f"{teacher}.yaml").read_text())["problems"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"run": "m", "runs_dir": str(tmp_path / "runs"), "problems": problems,
                                    **sections}))
    return path


@pytest.fixture(scope="module")
def boxed_model(built, tmp_path_factory) -> Path:
    """A tiny Qwen2 wired by hand, whatever the prompt: `</think>` at once, then ANSWER, then end of text.
    A randomly initialised model almost never closes its thinking and then stops, so `filter` would have no
    answer to grade; this one sends every trace to math-verify. It is a bigram model: each token's embedding
    is a one-hot state (0: any other token, 1: `</think>`, 2 + i: the i-th token of ANSWER), attention and
    MLP write nothing (o_proj and down_proj are zero), and lm_head maps each state to the next token."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(built / "t" / "tokenizer")
    chain, close = tok(ANSWER, add_special_tokens=False).input_ids, tok.convert_tokens_to_ids("</think>")
    assert len(set(chain + [close])) == len(chain) + 1  # each token must name one successor
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    steps = [(None, close), (close, chain[0]), *itertools.pairwise(chain), (chain[-1], tok.eos_token_id)]
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0
        head.zero_()
        for state, (token, successor) in enumerate(steps):
            if token is not None:
                emb[token] = 0.0
                emb[token, state] = 1.0
            head[successor, state] = 10.0  # after the final norm: a logit of ~57, every other token's 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("boxed")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("teacher", TEACHERS)
def test_teacher_recipes_read_math_train_from_the_mirror(teacher, tmp_path, monkeypatch):
    """`distill problems` with each teacher recipe's problems section: MATH train (less the 2 rows whose
    solution boxes nothing) and MATH test as the held-out split, from the mirror, recorded in the manifest."""
    monkeypatch.setenv("DISTILL_DATA", str(SHARED))
    proc = distill("problems", "--config", str(_recipe(tmp_path, teacher)))
    out = tmp_path / "runs" / "m" / "problems"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 7498, "eval": 5000}
    assert manifest["source"] == {"train": f"mirror:{MATH_TRAIN.resolve()}",
                                  "eval": f"mirror:{(SHARED / 'math' / 'test.jsonl').resolve()}"}
    assert manifest["skipped_no_gold"] == {"train": ["train/number_theory/7115.json",
                                                     "train/number_theory/7117.json"]}
    assert f"train split from mirror:{MATH_TRAIN.resolve()}" in proc.stdout
    train = read_jsonl(out / "train.jsonl")
    assert train[0]["id"] == "train/algebra/0.json" and train[0]["answer"] == "0"
    assert {(r["answer_type"], r["task"]) for r in train} == {("math", "math")}  # graded by math-verify
    assert all(r["prompt"].endswith("within \\boxed{}.") for r in train)


def test_problems_traces_filter_on_math_train_with_a_tiny_model(boxed_model, tmp_path, monkeypatch):
    """The three stages through the CLI on the first 16 MATH train problems: every trace reaches the grader,
    math-verify keeps exactly the problems whose gold is -1, and the stats say so."""
    monkeypatch.setenv("DISTILL_DATA", str(SHARED))
    traces = {"backend": "transformers", "model": str(boxed_model), "limit": 16, "n": 2, "temperature": 0.6,
              "max_thinking": 8, "max_answer_tokens": 16, "batch_size": 16, "threads": 1}
    recipe = str(_recipe(tmp_path, name="tiny", traces=traces, filter={"keep_per_problem": 2}))
    for stage in ("problems", "traces", "filter"):
        distill(stage, "--config", recipe)
    run = tmp_path / "runs" / "m"
    rows = read_jsonl(run / "traces" / "tiny" / "traces.jsonl")
    problems = read_jsonl(run / "problems" / "train.jsonl")[:16]
    assert [(r["problem_id"], r["sample"]) for r in rows] == [(p["id"], k) for p in problems for k in (0, 1)]
    assert {(r["thinking"], r["answer"], r["finish_reason"]) for r in rows} == {("", ANSWER, "stop")}
    stats = json.loads((run / "filter" / "tiny" / "stats.json").read_text())
    assert stats["graded_by"] == {"math-verify": 32}
    assert stats["dropped"] == {"truncated": 0, "wrong": 26, "overlong": 0, "duplicate": 3, "surplus": 0}
    assert stats["kept"] == stats["problems_with_a_kept_sample"] == 3 and stats["correct_rate"] == 0.1875
    by_text = {p["prompt"]: p["id"] for p in problems}  # the user turn is what the teacher was asked
    kept = read_jsonl(run / "filter" / "tiny" / "train.jsonl")
    assert [by_text[r["messages"][0]["content"]] for r in kept] == NEG_ONE


# (problem id, its gold, answer text, correct?): equivalent forms are graded by math-verify, not by string
HAND_WRITTEN = [
    ("train/algebra/335.json", "\\frac{1}{2}", "Thus the answer is $\\boxed{0.5}$.", True),
    ("train/algebra/335.json", "\\frac{1}{2}", "$\\boxed{\\frac{1}{3}}$", False),
    ("train/algebra/92.json", "\\frac12", "\\boxed{\\dfrac{1}{2}}", True),
    ("train/algebra/92.json", "\\frac12", "\\boxed{2}", False),
    ("train/algebra/3.json", "8+4i", "So $A-O+P+S=\\boxed{4i+8}$.", True),
    ("train/algebra/3.json", "8+4i", "\\boxed{8-4i}", False),
    ("train/geometry/247.json", "2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("train/geometry/247.json", "2\\sqrt{2}", "\\boxed{2.83}", False),
    ("train/algebra/9.json", "(-4,4)", "\\boxed{(-4, 4)}", True),
    ("train/algebra/9.json", "(-4,4)", "\\boxed{[-4,4]}", False),
    ("train/algebra/27.json", "\\frac{1}{3}", "Final answer: 1/3", True),
    ("train/algebra/7.json", "-1", "\\boxed{1}", False),  # the right value only inside the thinking
]


def test_filter_keeps_exactly_the_answers_math_verify_accepts(tmp_path, monkeypatch):
    """A hand-written traces.jsonl (the schema `traces` writes) on MATH train problems: exactly the correct
    answers are kept, whatever their LaTeX form; a truncated sample is never graded."""
    monkeypatch.setenv("DISTILL_DATA", str(SHARED))
    recipe = str(_recipe(tmp_path, name="hand", filter={"keep_per_problem": 4}))
    distill("problems", "--config", recipe)
    run = tmp_path / "runs" / "m"
    problems = {p["id"]: p for p in read_jsonl(run / "problems" / "train.jsonl")}
    assert {pid: problems[pid]["answer"] for pid, gold, _, _ in HAND_WRITTEN} == \
        {pid: gold for pid, gold, _, _ in HAND_WRITTEN}
    rows, samples = [], {}
    for pid, _, answer, _ in HAND_WRITTEN + [("train/algebra/7.json", "-1", "", None)]:
        k = samples[pid] = samples.get(pid, -1) + 1
        thinking = "x = -1, so the answer is -1." if pid == "train/algebra/7.json" else f"Working ({k})."
        rows.append({"problem_id": pid, "sample": k, "prompt": problems[pid]["prompt"], "thinking": thinking,
                     "answer": answer, "finish_reason": "stop" if answer else "length",
                     "thinking_tokens": 12, "answer_tokens": 6, "wall_s": 0.1, "teacher": "hand"})
    (run / "traces" / "hand").mkdir(parents=True)
    (run / "traces" / "hand" / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    distill("filter", "--config", recipe)
    out = run / "filter" / "hand"
    stats = json.loads((out / "stats.json").read_text())
    correct = [(pid, answer) for pid, _, answer, ok in HAND_WRITTEN if ok]
    assert stats["dropped"] == {"truncated": 1, "wrong": len(HAND_WRITTEN) - len(correct), "overlong": 0,
                                "duplicate": 0, "surplus": 0}
    assert stats["graded_by"] == {"math-verify": len(HAND_WRITTEN)}  # the truncated sample is not graded
    by_text = {p["prompt"]: pid for pid, p in problems.items()}
    kept = [(by_text[r["messages"][0]["content"]], r["messages"][1]["content"].rsplit("</think>\n", 1)[1])
            for r in read_jsonl(out / "train.jsonl")]
    assert sorted(kept) == sorted(correct)
