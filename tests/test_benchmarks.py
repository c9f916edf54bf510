"""Benchmark recipes (eval/*.yaml) load the real files in ../shared/data and normalise them to one schema."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from distill import benchmarks, cli
from distill.artifacts import UserError, read_jsonl
from distill.config import build, keys, load_recipe
from distill.stages import problems

from .conftest import ROOT, distill

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCHEMA = {"id", "problem", "prompt", "answer", "answer_type", "source", "benchmark", "task"}
ALL_FIELDS = {k for s in cli.STAGES for k in keys(cli._config_class(s))}

# recipe -> (data file, rows, answer_type, has level/subject, {id: gold} spot checks)
CASES = {
    "gsm8k": ("gsm8k/test.jsonl", 1319, "integer", False,
              {"gsm8k-eval-00000": "18", "gsm8k-eval-00146": "2125", "gsm8k-eval-00201": "114200"}),
    "math500": ("math500/test.jsonl", 500, "math", True,
                {"test/precalculus/807.json": "\\left( 3, \\frac{\\pi}{2} \\right)"}),
    "math": ("math/test.jsonl", 5000, "math", True,
             {"test/algebra/1.json": "2", "test/algebra/526.json": "\\frac{5\\sqrt{3}}{3}",
              "test/algebra/32.json": "7,9,12,13",  # several \boxed{}: the last one counts
              "test/precalculus/807.json": "\\left( 3, \\frac{\\pi}{2} \\right)"}),
    "aime24": ("aime24/test.jsonl", 30, "integer", False, {"60": "204", "67": "25"}),  # "025" -> "25"
    "aime25": ("aime25/test.jsonl", 30, "integer", False, {"2025-I-1": "70", "2025-II-15": "240"}),
    "amc23": ("amc23/test.jsonl", 40, "integer", False, {"0": "27", "17": "-1", "3": "3159"}),  # floats
}


def _config(name: str, runs_dir: Path, **overrides) -> problems.ProblemsConfig:
    recipe_path = ROOT / "eval" / f"{name}.yaml"
    recipe = load_recipe(str(recipe_path))
    overrides = {"runs_dir": str(runs_dir), **overrides}
    return build(problems.ProblemsConfig, "problems", recipe, overrides, str(recipe_path), set(cli.STAGES),
                 ALL_FIELDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe_loads_its_real_benchmark(name, tmp_path, monkeypatch):
    data, count, answer_type, has_level, golds = CASES[name]
    if not (SHARED / data).is_file():
        pytest.skip(f"{SHARED / data} is absent")
    monkeypatch.setenv("DISTILL_DATA", str(SHARED))
    cfg = _config(name, tmp_path)
    assert cfg.mirror == data and not cfg.path and cfg.hf_id  # a mirror under the data root, else the Hub
    out = problems.run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"eval": f"mirror:{(SHARED / data).resolve()}"}
    assert manifest["inputs"]["eval"]["path"] == str(SHARED / data)  # the mirror used is hashed
    rows = read_jsonl(out / "eval.jsonl")
    assert len(rows) == count and len({r["id"] for r in rows}) == count
    assert not (out / "train.jsonl").exists()  # eval-only benchmark
    for r in rows:
        assert SCHEMA <= set(r) and r["benchmark"] == name and r["answer_type"] == answer_type
        assert r["prompt"].startswith(r["problem"]) and r["prompt"].endswith("within \\boxed{}.")
        assert ("level" in r and "subject" in r) == has_level
        if answer_type == "integer":
            assert str(int(r["answer"])) == r["answer"]  # no commas, no ".0", no leading zeros
    by_id = {r["id"]: r["answer"] for r in rows}
    assert {k: by_id[k] for k in golds} == golds
    # the eval section uses only keys that EvalConfig has, and points at the file just written
    recipe = load_recipe(str(ROOT / "eval" / f"{name}.yaml"))
    assert set(recipe["eval"]) <= set(keys(cli._config_class("eval")))
    assert recipe["eval"]["problems"] == f"runs/{name}/problems/eval.jsonl" and recipe["run"] == name


def test_math_levels_and_subjects_are_normalised(tmp_path):
    if not (SHARED / "math/test.jsonl").is_file():
        pytest.skip("MATH is absent")
    cfg = dataclasses.replace(_config("math", tmp_path), path=str(SHARED / "math/test.jsonl"))
    rows = benchmarks.load(cfg, "eval")
    assert {r["level"] for r in rows} == {1, 2, 3, 4, 5}  # "Level 3" -> 3, as MATH-500 has it
    assert len({r["subject"] for r in rows}) == 7


def test_default_data_root_is_shared_data_next_to_the_repo(tmp_path, monkeypatch):
    """With DISTILL_DATA unset, or set to the relative ../shared/data, a mirror is looked up from the current
    directory (the repository root, where commands run), through the CLI as a user runs it."""
    if not (SHARED / "math500/test.jsonl").is_file():
        pytest.skip("MATH-500 is absent")
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    monkeypatch.chdir(ROOT)
    assert benchmarks.data_root() == Path("../shared/data")
    cfg = _config("math500", tmp_path)
    assert benchmarks.locate(cfg, "eval") == ("mirror", "../shared/data/math500/test.jsonl")
    monkeypatch.setenv("DISTILL_DATA", "../shared/data")
    proc = distill("problems", "--config", "eval/math500.yaml", f"runs_dir={tmp_path}")
    mirror = (SHARED / "math500/test.jsonl").resolve()
    assert f"problems: eval split from mirror:{mirror}" in proc.stdout and "loading hf:" not in proc.stdout
    manifest = json.loads((tmp_path / "math500/problems/manifest.json").read_text())
    assert manifest["source"] == {"eval": f"mirror:{mirror}"} and manifest["counts"]["eval"] == 500


def test_without_a_mirror_the_hub_is_tried_and_fails_in_one_line(tmp_path, monkeypatch):
    """DISTILL_DATA pointing at an empty directory: the recipe's hf_id is loaded through datasets (offline
    here: HF_HUB_OFFLINE and an empty cache make that fail at once on any machine), and the failure is one
    line naming the dataset and the mirror path looked at; exit 2, nothing written."""
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DISTILL_DATA", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    proc = distill("problems", "--config", "eval/math500.yaml", f"runs_dir={tmp_path / 'runs'}", check=False)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("distill problems: error: hf:HuggingFaceH4/MATH-500:test: could not load the "
                           "dataset")
    assert f"no mirror found at {empty.resolve() / 'math500/test.jsonl'}" in line
    assert "loading hf:HuggingFaceH4/MATH-500:test" in proc.stdout
    assert not (tmp_path / "runs" / "math500" / "problems").exists()


def test_path_wins_then_mirror_then_hub(tmp_path, monkeypatch):
    """An explicit path wins over the mirror; an absent mirror falls back to hf_id (read with hub_fields when
    given), and the manifest records which was used; an absent mirror with no hf_id is a one-line error."""
    import datasets

    (tmp_path / "data" / "toy").mkdir(parents=True)
    mirror = _write(tmp_path / "data" / "toy" / "test.jsonl",
                    [{"question": "Two plus two?", "answer": "#### 4"}])
    other = _write(tmp_path / "other.jsonl", [{"question": "Three plus three?", "answer": "#### 6"}])
    hub = [{"q": f"How many apples are in basket {i}?", "a": f"#### {i}"} for i in range(2)]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or hub)  # no network
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    cfg = problems.ProblemsConfig(source="benchmark", benchmark="toy", mirror="toy/test.jsonl",
                                  hf_id="org/toy", fields={"problem": "question"},
                                  hub_fields={"problem": "q", "answer": "a"},
                                  answer_extract="gsm8k", answer_type="integer", runs_dir=str(tmp_path / "r"))

    def run(cfg) -> tuple[list, dict]:
        out = problems.run(cfg)
        manifest = json.loads((out / "manifest.json").read_text())
        return [r["answer"] for r in read_jsonl(out / "eval.jsonl")], manifest

    answers, manifest = run(cfg)
    assert answers == ["4"] and manifest["source"] == {"eval": f"mirror:{mirror.resolve()}"} and not calls
    answers, manifest = run(dataclasses.replace(cfg, path=str(other)))
    assert answers == ["6"] and manifest["source"] == {"eval": f"path:{other.resolve()}"} and not calls
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "nothing-here"))
    answers, manifest = run(cfg)
    assert answers == ["0", "1"] and manifest["source"] == {"eval": "hub:org/toy:test"}
    assert "eval" not in manifest["inputs"]  # nothing local to hash
    assert calls == [(("org/toy", None), {"split": "test"})]
    with pytest.raises(UserError, match=r"no mirror found at .*nothing-here/toy/test\.jsonl and no hf_id"):
        problems.run(dataclasses.replace(cfg, hf_id=""))


def test_rows_without_a_gold_answer(tmp_path):
    """A solution whose last \\boxed{} is empty (two MATH train rows) is an error naming the row, unless
    skip_missing_gold leaves such rows out; they are then listed in the manifest."""
    rows = [{"problem": "One?", "solution": "so $\\boxed{1}$", "unique_id": "a"},
            {"problem": "None?", "solution": "there are $\\boxed{}$ of them", "unique_id": "b"}]
    data = _write(tmp_path / "t.jsonl", rows)
    cfg = problems.ProblemsConfig(source="benchmark", benchmark="toy", path=str(data),
                                  fields={"answer": "solution", "id": "unique_id"}, answer_extract="boxed",
                                  runs_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match=r"t\.jsonl:2: field 'solution' gives an empty answer"):
        problems.run(cfg)
    out = problems.run(dataclasses.replace(cfg, skip_missing_gold=True))
    assert [r["id"] for r in read_jsonl(out / "eval.jsonl")] == ["a"]
    assert json.loads((out / "manifest.json").read_text())["skipped_no_gold"] == {"eval": ["b"]}


def test_gold_extraction():
    assert benchmarks.last_boxed("so $\\boxed{1}$ and then $\\boxed{\\frac{a}{b^{2}}}$.") == "\\frac{a}{b^{2}}"
    assert benchmarks.last_boxed("thus $\\boxed 2$.") == "2"  # two MATH train solutions are written so
    assert benchmarks.last_boxed("\\boxed{\\frac{1}{2}") is None and benchmarks.last_boxed("no box") is None
    assert [benchmarks.canonical_integer(v) for v in ("1,450", 27.0, "025", "-3", "2.5", "x")] == \
        ["1450", "27", "25", "-3", None, None]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tmp_path: Path, data: Path, **problems_section) -> Path:
    section = {"source": "benchmark", "benchmark": "toy", "path": str(data),
               "fields": {"problem": "question", "answer": "answer"}, "answer_extract": "gsm8k",
               "answer_type": "integer", **problems_section}
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps({"run": "toy", "runs_dir": str(tmp_path / "runs"), "problems": section}))
    return path


def test_train_split_parquet_and_hub(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": f"How many apples are in basket {i}?", "answer": f"count\n#### 1,00{i}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    train = _write(tmp_path / "train.jsonl", [{"question": "Two plus two?", "answer": "#### 4"}])
    cfg = problems.ProblemsConfig(source="benchmark", benchmark="toy", path=str(tmp_path / "test.parquet"),
                                  train_path=str(train), fields={"problem": "question"}, answer_extract="gsm8k",
                                  answer_type="integer", runs_dir=str(tmp_path / "r"))
    out = problems.run(cfg)
    assert [r["answer"] for r in read_jsonl(out / "eval.jsonl")] == ["1000", "1001", "1002"]
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == ["toy-train-00000"]

    import datasets  # with path empty, hf_id is read through datasets.load_dataset (stubbed: no network)

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or rows)
    hub = dataclasses.replace(cfg, path="", train_path="", hf_id="org/toy", hf_config="main")
    assert [r["answer"] for r in benchmarks.load(hub, "eval")] == ["1000", "1001", "1002"]
    assert calls == [(("org/toy", "main"), {"split": "test"})]
    assert benchmarks.load(hub, "train") == []  # no train_split: eval-only


@pytest.mark.parametrize(("rows", "section", "message"), [
    ([{"question": "q"}], {}, ":1: missing field(s) answer"),
    ([{"question": "q", "answer": "#### 3"}, {"question": "q2", "answer": "no marker"}], {},
     ":2: field 'answer' has no '#### <answer>' line"),
    ([{"question": "q", "answer": "#### 3.5"}], {}, ":1: answer '3.5' (field 'answer') is not an integer"),
    ([{"question": "q", "answer": "#### 3"}], {"fields": {"problem": "question", "gold": "answer"}},
     "fields: unknown key(s) gold"),
    ([{"question": "q", "answer": "#### 3"}], {"prompt_template": "Solve it."}, "must contain {problem}"),
    ([], {"path": "/nonexistent/test.jsonl"}, "/nonexistent/test.jsonl: file not found"),
])
def test_bad_benchmark_input_is_a_one_line_error(tmp_path, rows, section, message):
    data = _write(tmp_path / "data.jsonl", rows)
    proc = distill("problems", "--config", str(_recipe(tmp_path, data, **section)), check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_loader_errors_name_the_row(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"question": "a", "answer": "#### 1", "i": 1},
                                         {"question": "b", "answer": "#### 2", "i": 1}])
    cfg = problems.ProblemsConfig(source="benchmark", benchmark="toy", path=str(data), answer_extract="gsm8k",
                                  fields={"problem": "question", "id": "i"})
    with pytest.raises(UserError, match=r"d\.jsonl:2: duplicate id '1' \(first at .*d\.jsonl:1\)"):
        benchmarks.load(cfg, "eval")
    with pytest.raises(UserError, match="the eval set is empty"):
        problems.run(dataclasses.replace(cfg, path=str(_write(tmp_path / "e.jsonl", [])),
                                         runs_dir=str(tmp_path / "r")))


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_runs_each_recipe_end_to_end_on_a_tiny_model(name, built, tmp_path, monkeypatch):
    """`distill problems` then `distill eval` with the shipped recipe, only the model, the size and the
    budgets overridden: a tiny untrained model scores ~0, but the run, the grading and the files are real."""
    if not (SHARED / CASES[name][0]).is_file():
        pytest.skip(f"{SHARED / CASES[name][0]} is absent")
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the repository root
    recipe, runs = f"eval/{name}.yaml", f"runs_dir={tmp_path}"
    assert cli.main(["problems", "--config", recipe, runs]) == 0
    model = f"models=[{{name: tiny, role: student, path: {built / 't' / 'init' / 'tiny'}}}]"
    assert cli.main(["eval", "--config", recipe, runs, model, f"problems={tmp_path}/{name}/problems/eval.jsonl",
                     "limit=3", "budgets=[4,8]", "n=2", "max_answer_tokens=6", "threads=1"]) == 0
    out = tmp_path / name / "eval"
    results = json.loads((out / "results.json").read_text())
    [m] = results["models"]
    assert [b["budget"] for b in m["budgets"]] == [4, 8] and m["params"] > 0
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 3 * 2 * 2 and all(isinstance(s["correct"], bool) for s in samples)
    assert all((out / p).stat().st_size > 0 for p in ("accuracy_vs_thinking.png", "results.csv"))
