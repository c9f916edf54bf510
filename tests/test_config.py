import pytest

from distill.artifacts import UserError, read_jsonl, staging
from distill.config import build, parse_overrides
from distill.problems import ProblemsConfig

from .conftest import distill


def test_overrides_parse_yaml_values():
    assert parse_overrides(["n=4", "lr=5e-3", "budgets=[8, 16]", "name=x"]) == \
        {"n": 4, "lr": 0.005, "budgets": [8, 16], "name": "x"}
    with pytest.raises(UserError, match="expected key=value"):
        parse_overrides(["oops"])


def test_unknown_keys_are_errors_that_name_the_key():
    recipe = {"run": "r", "problems": {"train_per_task": 5, "typo_key": 1}}
    with pytest.raises(UserError, match="typo_key"):
        build(ProblemsConfig, "problems", recipe, {}, "r.yaml", {"problems"}, {"run", "train_per_task"})
    cfg = build(ProblemsConfig, "problems", {"run": "r", "problems": {"train_per_task": 5}}, {"seed": 2},
                "r.yaml", {"problems"}, {"run", "train_per_task", "seed"})
    assert (cfg.run, cfg.train_per_task, cfg.seed) == ("r", 5, 2)


def test_run_name_fills_recipe_paths():
    """`{run}` in a recipe's text values is the run's name: one recipe serves `make demo SEED=k`'s runs."""
    from distill.eval import EvalConfig
    from distill.sft import SftConfig

    recipe = {"run": "demo", "sft": {"model": "runs/{run}/init/s", "data": "runs/{run}/filter/t/train.jsonl"},
              "eval": {"problems": "runs/{run}/problems/eval.jsonl",
                       "models": [{"name": "s", "role": "student", "path": "runs/{run}/sft/s/model"}]}}
    fields = {"run", "seed"}
    sft = build(SftConfig, "sft", recipe, {"run": "demo-seed2"}, "r.yaml", {"sft", "eval"}, fields)
    assert (sft.model, sft.data) == ("runs/demo-seed2/init/s", "runs/demo-seed2/filter/t/train.jsonl")
    ev = build(EvalConfig, "eval", recipe, {}, "r.yaml", {"sft", "eval"}, fields)
    assert ev.problems == "runs/demo/problems/eval.jsonl" and ev.models[0]["path"] == "runs/demo/sft/s/model"


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n{"b": 2}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: missing field\(s\) a"):
        read_jsonl(p, required=("a",))


def test_staging_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with staging(out) as tmp:
            (tmp / "data.jsonl").write_text("partial")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["problems", "--config", "eval/demo.yaml", "bogus=1"], "unknown key 'bogus'"),
    (["problems", "--config", "nope.yaml"], "nope.yaml: config file not found"),
    (["problems", "--config", "eval/demo.yaml", "eval_per_task=0"],
     "command line: eval_per_task: Input should be greater than 0 (got 0)"),
    (["eval", "--config", "eval/demo.yaml", "budgets=[0, 8]"], "command line: budgets[0]: Input should be greater than 0"),
    (["eval", "--config", "eval/demo.yaml", "models=[{name: x, role: student, path: runs/none/model}]"],
     "model 'x' not found at runs/none/model"),
    (["eval", "--config", "eval/demo.yaml", "models=[{name: x, role: boss, path: p}]"],
     "command line: models[0].role: Input should be 'teacher' or 'student' (got 'boss')"),
])
def test_cli_user_errors_are_one_line_without_traceback(args, expected):
    proc = distill(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"distill {args[0]}: error:") and expected in last


def test_cli_malformed_jsonl_and_empty_problem_set(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": \n')
    proc = distill("traces", f"problems={bad}", "backend=solver", "n=1", f"runs_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"{bad}:2: not valid JSON (Expecting value)")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = distill("traces", f"problems={empty}", "backend=solver", "n=1", f"runs_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "no problems" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "demo").exists()  # nothing half-written
