import pytest
import yaml

from distill.artifacts import UserError, read_jsonl, staging
from distill.config import build, parse_overrides
from distill.stages.problems import ProblemsConfig

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
    from distill.stages.eval import EvalConfig
    from distill.stages.sft import SftConfig

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
    (["eval", "--config", "eval/demo.yaml", "cascades=[]", "models=[{name: x, role: student, path: runs/none/model}]"],
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


def test_sampling_and_backend_settings_are_declared_once():
    """temperature, top_p, ..., backend, vllm, ... are declared in distill/sampling.py alone: every stage that
    samples embeds them (with its own defaults), and no config class declares one of them itself."""
    import dataclasses

    from distill.cli import STAGES, _config_class
    from distill.config import groups, keys
    from distill.sampling import Engine, Sampling

    sampling = {f.name for f in dataclasses.fields(Sampling)}
    backend = {"backend", "vllm", "openai", "llama_cpp"}
    assert {"temperature", "top_p", "top_k", "n", "seed", "max_thinking", "max_answer_tokens", "answer_cue",
            "min_thinking", "wait", "max_waits"} == sampling
    declared = {}
    for stage in STAGES:
        cls = _config_class(stage)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("group"):
                declared.setdefault(f.name, []).append(stage)
    for key in sampling | backend:
        assert key not in declared or key == "seed", (key, declared.get(key))
    samplers = {s for s in STAGES if {"sampling", "engine"} <= set(groups(_config_class(s)))}
    assert samplers == {"traces", "eval", "serve", "chat"}
    for s in samplers:  # each gives the keys flat, as its recipes always did
        assert sampling | {f.name for f in dataclasses.fields(Engine)} <= set(keys(_config_class(s)))
    # a stage's own defaults: traces samples hotter and longer than eval
    traces, ev = (groups(_config_class(s))["sampling"] for s in ("traces", "eval"))
    assert (traces.temperature, traces.n, traces.max_thinking) == (0.8, 4, 512) and ev.temperature == 0.6


def test_choices_are_validated_in_one_line(tmp_path):
    for args, key in ((["sft", "model=m", "attn_implementation=flash_attn2"], "attn_implementation"),
                      (["sft", "model=m", "optim=adamw_8bitt"], "optim"),
                      (["sft", "model=m", "scheduler=cosin"], "scheduler"),
                      (["eval", "backend=vlm", "models=[{name: a, role: student, path: p}]"], "backend"),
                      (["traces", "model=m", "max_new_tokens=8"], "max_new_tokens")):
        proc = distill(*args, f"runs_dir={tmp_path}", check=False)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and key in err[0], (args, proc.stderr)
    assert "is now called 'max_thinking'" in proc.stderr  # a renamed key says what it is called now


def test_eval_models_take_a_revision():
    from distill.config import make
    from distill.stages.eval import EvalConfig

    cfg = make(EvalConfig, models=[{"name": "a", "role": "student", "path": "org/model", "revision": "v1.0"}])
    assert cfg.models[0]["revision"] == "v1.0"
    with pytest.raises(UserError, match=r"models\[0\]\.revison"):
        make(EvalConfig, models=[{"name": "a", "role": "student", "path": "org/model", "revison": "v1.0"}])


def test_the_scheduler_choices_are_transformers_own():
    import typing

    from transformers.trainer_utils import SchedulerType

    from distill.stages.sft import Scheduler

    assert set(typing.get_args(Scheduler)) == {s.value for s in SchedulerType}


def test_stage_help_lists_each_key_with_type_default_and_help():
    proc = distill("sft", "--help")
    lines = proc.stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if line.split()[:1] == ["max_length"])
    assert lines[i].split() == ["max_length", "int", ">", "0", "=", "2048"]
    assert "tokens per row at most" in lines[i + 1]
    assert "sampling (" not in proc.stdout  # sft has no sampling group (its dev checks' are under until:)
    i = next(k for k, line in enumerate(lines) if line.split()[:1] == ["until.every"])
    assert lines[i].split() == ["until.every", "int", ">", "0", "=", "50"]
    # a mapping setting is given whole or key by key, nested keys too, also when the recipe leaves it unset
    cfg = yaml.safe_load(distill("sft", "--print-config", "model=m", "until.accuracy=0.8",
                                 "until.sampling.max_thinking=64").stdout)
    assert cfg["until"]["accuracy"] == 0.8 and cfg["until"]["sampling"]["max_thinking"] == 64
    assert cfg["until"]["sampling"]["temperature"] == 0.0  # greedy unless told otherwise
    out = distill("traces", "--help").stdout
    assert "sampling (" in out and "backend (" in out and "temperature" in out and "= 0.8" in out


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    import yaml

    proc = distill("traces", "--config", "teachers/demo.yaml", "run=x", f"runs_dir={tmp_path}", "--n", "3",
                   "temperature=0.5", "--print-config")
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["run"] == "x" and cfg["n"] == 3 and cfg["temperature"] == 0.5  # flat, as a recipe gives it
    assert cfg["model"] == "runs/x/sft/teacher/model"  # the recipe's {run} filled in
    assert not any(tmp_path.iterdir())


def test_the_configuration_reference_is_generated_and_current():
    from distill import cli

    from .conftest import ROOT

    assert (ROOT / "docs" / "config.md").read_text() == cli.reference(), "stale: run `make docs`"
    assert "| `max_length` | int > 0 | `2048` |" in cli.reference()
