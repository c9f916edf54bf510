"""Bad user input, stage by stage: every case exits 2 with ONE stderr line `distill <stage>: error: ...`
(with the expected words in it), no traceback, and nothing written under its fresh runs folder.

Arguments may name `{tmp}` (the test's folder, with the small bad files of FILES; its runs folder is
{tmp}/runs, absent), `{built}` (the session's problems, tokenizer and tiny model), `{nothink}` (the tiny model
with a tokenizer that lacks `</think>`) and `{other}` (solver traces made for the eval problems, not train).
"""

from __future__ import annotations

import json
import shutil

import pytest

from distill.config import make

from .conftest import distill

FILES = {
    "bad.yaml": b"run: demo\ntraces: n: 1\n",
    "latin1.yaml": "run: caf\xe9\n".encode("latin-1"),
    "list.yaml": b"- run: x\n- n: 1\n",
    "section.yaml": b"run: demo\ntraces:\n  bogus_key: 1\n",
    "shared.yaml": b"nonsense_key: 1\n",
    "notmap.yaml": b"eval: [1, 2]\n",
    "bad.jsonl": b'{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": \n',
    "nonutf8.jsonl": b'{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "\xff\xfe"}\n',
    "array.jsonl": b'[1, 2, 3]\n',
    "nofield.jsonl": b'{"id": "a", "answer": "1"}\n',
    "empty.jsonl": b"",
    "dup.jsonl": b'{"id": "a", "problem": "1+1", "answer": "2"}\n'
                 b'{"id": "a", "problem": "2+2", "answer": "4"}\n',
    "messages.jsonl": json.dumps({"messages": [
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": "<think>\n2\n</think>\n2"}]}).encode() + b"\n",
    "file.bin": b"\x1f\x8b\x08\x00\xff\xfe" + bytes(range(256)) * 8,
}
TINY = "models=[{name: s, role: student, path: {built}/t/init/tiny}]"
EVAL = "problems={built}/t/problems/eval.jsonl"
TRAIN = "problems={built}/t/problems/train.jsonl"


def C(case_id: str, stage: str, args: list[str], expected: str, bug: str = ""):
    """One case; `bug`: what the CLI does wrong today (an xfail that must start passing once it is fixed)."""
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(stage, args, expected, id=case_id, marks=marks)


CASES = [
    # recipe files
    C("yaml-malformed", "problems", ["--config", "{tmp}/bad.yaml"],
      "bad.yaml:2: not valid YAML (mapping values are not allowed here)"),
    C("yaml-not-utf8", "tokenizer", ["--config", "{tmp}/latin1.yaml"],
      "latin1.yaml: not UTF-8 text (byte 0xe9"),
    C("yaml-list", "init", ["--config", "{tmp}/list.yaml"], "expected a mapping of stage sections, got list"),
    C("unknown-key-section", "traces", ["--config", "{tmp}/section.yaml"],
      "[traces]: unknown key 'bogus_key' for stage 'traces'"),
    C("unknown-key-shared", "filter", ["--config", "{tmp}/shared.yaml"],
      "unknown key 'nonsense_key' (no stage has it)"),
    C("section-not-mapping", "eval", ["--config", "{tmp}/notmap.yaml"], "section 'eval' must be a mapping"),
    C("config-missing", "decontaminate", ["--config", "{tmp}/missing.yaml"],
      "missing.yaml: config file not found"),
    C("unknown-key-cli", "report", ["bogus=1"], "command line: unknown key 'bogus' for stage 'report'"),
    C("override-no-equals", "publish", ["oops"], "override 'oops': expected key=value"),
    # wrong types
    C("temperature-abc", "traces", ["model=x", "temperature=abc"],
      "temperature: Input should be a valid number"),
    C("n-2.5", "eval", [TINY, "n=2.5"],
      "n: Input should be a valid integer, got a number with a fractional part"),
    C("limit-x", "traces", ["model=x", "limit=x"], "limit: Input should be a valid integer"),
    C("lr-fast", "sft", ["model=x", "lr=fast"], "lr: Input should be a valid number"),
    C("chat-bool", "chat", ["url=http://127.0.0.1:9/v1", "show_thinking=maybe"],
      "show_thinking: Input should be a valid boolean"),
    C("publish-push-bool", "publish", ["repo_id=a/b", "push=maybe"], "push: Input should be a valid boolean"),
    # out of range
    C("top_p-2", "eval", [TINY, "top_p=2"], "top_p: Input should be less than or equal to 1"),
    C("temperature-neg", "traces", ["model=x", "temperature=-1"],
      "temperature: Input should be greater than or equal to 0"),
    C("limit-neg", "eval", [TINY, "limit=-1"], "limit: Input should be greater than or equal to 0"),
    C("n-0", "traces", ["model=x", "n=0"], "n: Input should be greater than 0"),
    C("batch_size-0", "sft", ["model=x", "batch_size=0"], "batch_size: Input should be greater than 0"),
    C("port-99999", "serve", ["model=x", "port=99999"], "port: Input should be less than or equal to 65535"),
    C("eval_fraction", "problems", ["eval_fraction=1.5"],
      "eval_fraction: Input should be less than or equal to 1"),
    C("vocab_size-small", "tokenizer", ["vocab_size=100"], "vocab_size must be at least"),
    # bad choices
    C("backend-foo", "traces", ["model=x", "backend=foo"], "backend: Input should be 'transformers'"),
    C("format-gguf-q3", "quantize", ["format=gguf-q3"], "format: Input should be 'gguf-q8_0'"),
    C("method-xyz", "sft", ["model=x", "method=xyz"],
      "method: Input should be 'sft', 'distill', 'gkd' or 'gold'"),
    C("select-longest", "filter", ["select=longest"], "select: Input should be 'random' or 'shortest'"),
    C("effort-max", "serve", ["model=x", "default_effort=max"],
      "default_effort: Input should be 'low', 'medium', 'high' or 'auto'"),
    # eval's models
    C("model-no-path", "eval", ["models=[{name: s, role: student}]"], "models[0].path: Field required"),
    C("model-unknown-key", "eval", ["models=[{name: s, role: student, path: p, size: 3}]"],
      "models[0].size: Extra inputs are not permitted"),
    C("model-bad-role", "eval", ["models=[{name: s, role: boss, path: p}]"],
      "models[0].role: Input should be 'teacher' or 'student'"),
    # eval's cascades
    C("cascade-budget", "eval", ["models=[{name: s, role: student, path: p}]",
                                 "cascades=[{name: c, stages: [{model: s, budget: 7}, {model: s, budget: 64}]}]"],
      "cascade c: budget 7 is not one of budgets"),
    C("cascade-rule", "eval", ["models=[{name: s, role: student, path: p}]",
                               "cascades=[{name: c, stages: [{model: s, budget: 16}], rule: vote}]"],
      "cascades[0].rule: Input should be 'agreement', 'thinking', 'logprob', 'both' or 'all'"),
    C("cascade-auto", "serve", ["model=x", "cascade=c"], "cascade needs results="),
    C("verifier-no-model", "verifier", [], "model is required"),
    C("verifier-no-verdicts", "verifier", ["model=x", "verdicts=nowhere.jsonl"], "nowhere.jsonl not found"),
    C("model-bad-backend", "eval", ["models=[{name: s, role: student, path: p, backend: foo}]"],
      "models[0].backend: Input should be"),
    C("model-names-repeat", "eval",
      ["models=[{name: s, role: student, path: p}, {name: s, role: teacher, path: q}]"],
      "model names must be unique"),
    C("models-empty", "eval", ["models=[]"], "models is empty"),
    # budgets
    C("budgets-order", "eval", [TINY, "budgets=[64, 16]"],
      "budgets must be increasing, without repeats, got [64, 16]"),
    C("budgets-zero", "eval", [TINY, "budgets=[0, 8]"], "budgets[0]: Input should be greater than 0"),
    C("budgets-repeat", "eval", [TINY, "budgets=[8, 8]"],
      "budgets must be increasing, without repeats, got [8, 8]"),
    # problem files
    C("jsonl-bad-line", "traces", ["backend=solver", "n=1", "problems={tmp}/bad.jsonl"],
      "bad.jsonl:2: not valid JSON"),
    C("jsonl-50mb-line", "tokenizer", ["problems={tmp}/huge.jsonl"], "huge.jsonl:2: line longer than 16 MB"),
    C("jsonl-not-utf8", "eval", [TINY, "problems={tmp}/nonutf8.jsonl"],
      "nonutf8.jsonl:2: not UTF-8 (byte 0xff"),
    C("jsonl-not-object", "traces", ["backend=solver", "n=1", "problems={tmp}/array.jsonl"],
      "array.jsonl:1: expected a JSON object, got list"),
    C("jsonl-missing-field", "traces", ["backend=solver", "n=1", "problems={tmp}/nofield.jsonl"],
      "nofield.jsonl:1: missing field(s) problem"),
    C("jsonl-empty", "traces", ["backend=solver", "n=1", "problems={tmp}/empty.jsonl"],
      "empty.jsonl: no problems"),
    C("tokenizer-empty", "tokenizer", ["problems={tmp}/empty.jsonl"], "no problems to train a tokenizer on"),
    C("problems-missing", "eval", [TINY, "problems={tmp}/nope.jsonl"], "nope.jsonl: file not found"),
    C("sft-data-empty", "sft", ["model={built}/t/init/tiny", "data={tmp}/empty.jsonl"],
      "empty.jsonl: empty dataset"),
    C("decontaminate-dup-ids", "decontaminate", ["train={tmp}/messages.jsonl", "against=[{tmp}/dup.jsonl]"],
      "duplicate id 'a'"),
    C("decontaminate-no-against", "decontaminate", ["against=[]"], "against is empty"),
    C("eval-dup-ids", "eval", [TINY, "problems={tmp}/dup.jsonl", "n=1", "budgets=[8]"],
      "duplicate"),
    # models
    C("eval-model-is-file", "eval", ["models=[{name: s, role: student, path: {tmp}/file.bin}]", EVAL],
      "eval: model 's' not found at"),
    C("sft-model-is-file", "sft", ["model={tmp}/file.bin", "data={tmp}/messages.jsonl"],
      "sft: model not found"),
    C("eval-model-missing", "eval", ["models=[{name: s, role: student, path: {tmp}/nomodel}]", EVAL],
      "eval: model 's' not found at"),
    C("traces-model-missing", "traces", ["model={tmp}/nomodel", TRAIN, "n=1"], "model not found: "),
    C("quantize-model-missing", "quantize", ["model={tmp}/nomodel"],
      "is not a model folder (no config.json)"),
    C("init-no-tokenizer", "init", ["tokenizer={tmp}/nomodel", "arch={hidden_size: 32}"],
      "tokenizer not found at"),
    C("init-bad-arch", "init", ["tokenizer={built}/t/tokenizer", "arch={hidden_sizes: 32}"],
      "unknown Qwen2Config field(s) in arch"),
    C("init-odd-head-size", "init", ["tokenizer={built}/t/tokenizer",
                                     "arch={hidden_size: 20, num_attention_heads: 4, num_hidden_layers: 1}"],
      "must give an even head size"),
    C("eval-no-think-token", "eval", ["models=[{name: s, role: student, path: {nothink}}]", EVAL, "n=1"],
      "tokenizer has no single </think> token"),
    C("traces-no-think-token", "traces", ["model={nothink}", EVAL, "n=1"],
      "tokenizer has no single </think> token"),
    # other stages
    C("filter-traces-of-other-problems", "filter", ["traces={other}/traces.jsonl", TRAIN],
      "such samples)"),
    C("filter-traces-missing", "filter", ["traces={tmp}/nope.jsonl", TRAIN], "nope.jsonl: file not found"),
    C("report-no-eval", "report", [], "results.json not found"),
    C("publish-bad-repo-id", "publish", ["repo_id=bad"], "repo_id must be ORG/NAME, got 'bad'"),
    C("serve-no-model", "serve", [], "model is required"),
    C("serve-model-missing", "serve", ["model={tmp}/nomodel", "port=0"], "model not found: "),
    C("chat-model-and-url", "chat", ["model={built}/t/init/tiny", "url=http://127.0.0.1:9/v1"],
      "give either model="),
    C("chat-model-missing", "chat", ["model={tmp}/nomodel"], "chat: model not found"),
    # the grade tool
    C("grade-binary", "grade", ["--input", "{tmp}/file.bin"], "file.bin:1: not UTF-8 (byte 0x8b"),
    C("grade-readme", "grade", ["--input", "README.md"], "README.md: no row to grade"),
    C("grade-input-missing", "grade", ["--input", "{tmp}/nope.jsonl"], "nope.jsonl: file not found"),
    C("grade-benchmark", "grade", ["--input", "{tmp}/messages.jsonl", "--benchmark", "foo"],
      "unknown benchmark 'foo'"),
]


@pytest.fixture(scope="session")
def nothink(built, tmp_path_factory):
    """The tiny model with `</think>` renamed in its tokenizer: no single `</think>` token any more."""
    out = tmp_path_factory.mktemp("nothink") / "model"
    shutil.copytree(built / "t/init/tiny", out)
    for f in out.iterdir():
        if f.suffix in (".json", ".jinja") and f.name.startswith(("tokenizer", "special", "chat")):
            f.write_text(f.read_text().replace("</think>", "</thonk>"))
    return out


@pytest.fixture(scope="session")
def other(built, tmp_path_factory):
    """Solver traces of the eval problems: given to filter with the train problems, their ids are unknown."""
    from distill.stages import traces

    runs = tmp_path_factory.mktemp("other")
    return traces.run(make(traces.TracesConfig, run="o", runs_dir=str(runs), name="solver", backend="solver", n=1,
                                          problems=str(built / "t/problems/eval.jsonl"),
                                          tokenizer=str(built / "t/tokenizer")))


@pytest.mark.parametrize("stage, args, expected", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(stage, args, expected, built, tmp_path, request):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    runs = tmp_path / "runs"
    subs = {"{tmp}": str(tmp_path), "{built}": str(built)}
    for name in ("nothink", "other"):
        if any("{" + name + "}" in a for a in args):
            subs["{" + name + "}"] = str(request.getfixturevalue(name))
    if any("{tmp}/huge.jsonl" in a for a in args):  # a valid JSON object of 50 MB after one good row
        with (tmp_path / "huge.jsonl").open("w") as f:
            f.write('{"id": "a", "problem": "p", "answer": "1"}\n')
            f.write(json.dumps({"id": "b", "problem": "x" * 50_000_000, "answer": "1"}) + "\n")
    filled = []
    for a in args:
        for key, value in subs.items():
            a = a.replace(key, value)
        filled.append(a)
    if stage == "grade":
        filled = ["grade", *filled, "--output", str(runs / "graded.jsonl")]
        if "--benchmark" not in filled:
            filled += ["--benchmark", "gsm8k"]
    else:
        filled = [stage, *filled, f"runs_dir={runs}"]
    before = sorted(tmp_path.rglob("*"))

    proc = distill(*filled, check=False)

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    shown = f"exit {proc.returncode}, stderr:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"distill {stage}: error:"), shown
    assert expected in lines[0], shown
    assert not runs.exists(), f"left under the runs folder: {sorted(runs.rglob('*'))}"
    assert sorted(tmp_path.rglob("*")) == before
