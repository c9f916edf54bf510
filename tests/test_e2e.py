"""The whole pipeline through the CLI, as `make demo` runs it, at a small scale, under the three seeds
`bench/demo_seeds.py` runs at full scale (`make demo SEED=k`: other problems, weights, batches and samples)."""

import json

import pytest
import yaml

from .conftest import distill as run_distill


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_pipeline_small(tmp_path, seed):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(f"""
run: e2e
runs_dir: {tmp_path / 'runs'}
threads: 2
problems: {{levels: {{chain: [1, 2], search: [1, 2]}}, train_per_task: 150, eval_per_task: 10}}
init: {{arch: {{hidden_size: 48, num_hidden_layers: 2, intermediate_size: 96, num_attention_heads: 4,
               num_key_value_heads: 4, initializer_range: 0.1}}}}
sft: {{epochs: 2, lr: 3.0e-3, batch_size: 32, save_steps: 50, logging_steps: 5}}
traces: {{n: 2, max_thinking: 64, max_answer_tokens: 8, batch_size: 64}}
filter: {{keep_per_problem: 2}}
eval:
  budgets: [4, 16, 64]
  n: 2
  max_answer_tokens: 8
  answer_cue: "Final answer:"
  batch_size: 64
  models:
    - {{name: teacher, role: teacher, path: {tmp_path}/runs/e2e/sft/teacher/model}}
    - {{name: student, role: student, path: {tmp_path}/runs/e2e/sft/student/model}}
""")
    runs = tmp_path / "runs" / "e2e"

    def distill(stage, *args):  # every seeded stage under the seed, as the Makefile passes `seed=$(SEED)`
        return run_distill(stage, *args, *([] if stage in ("tokenizer", "report") else [f"seed={seed}"]))
    r = str(recipe)
    distill("problems", "--config", r)
    distill("tokenizer", "--config", r)
    distill("traces", "--config", r, "name=solver", "backend=solver", "n=1")
    distill("filter", "--config", r, "name=solver", "keep_per_problem=1")
    distill("init", "--config", r, "name=teacher")
    distill("sft", "--config", r, "name=teacher", f"model={runs}/init/teacher", "trl.max_steps=150",
            f"data={runs}/filter/solver/train.jsonl")
    distill("traces", "--config", r, "name=teacher", f"model={runs}/sft/teacher/model")
    distill("filter", "--config", r, "name=teacher")
    distill("init", "--config", r, "name=student", "arch={hidden_size: 32, num_hidden_layers: 1, "
            "intermediate_size: 64, num_attention_heads: 2, num_key_value_heads: 2}")
    distill("sft", "--config", r, "name=student", f"model={runs}/init/student",
            f"data={runs}/filter/teacher/train.jsonl")
    distill("eval", "--config", r)
    # the demo's ablation: the student on every trace the teacher wrote, evaluated into runs/e2e/ablation-filter
    distill("filter", "--config", r, "name=teacher-unfiltered", "drop=[]",
            f"traces={runs}/traces/teacher/traces.jsonl")
    distill("sft", "--config", r, "name=student-unfiltered", f"model={runs}/init/student",
            f"data={runs}/filter/teacher-unfiltered/train.jsonl")
    distill("eval", "--config", r, f"runs_dir={runs}", "run=ablation-filter", f"problems={runs}/problems/eval.jsonl",
            f"models=[{{name: student-unfiltered, role: student, path: {runs}/sft/student-unfiltered/model}}]")
    distill("report", "--config", r)

    for stage in ("problems", "tokenizer", "traces/teacher", "filter/teacher", "sft/teacher", "eval"):
        manifest = json.loads((runs / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage.split("/")[0] and (runs / stage / "config.yaml").exists()
    assert json.loads((runs / "traces" / "teacher" / "manifest.json").read_text())["counts"]["samples"] == 600
    res = json.loads((runs / "eval" / "results.json").read_text())
    assert {m["role"] for m in res["models"]} == {"teacher", "student"}
    report = (runs / "report.md").read_text()
    for heading in ("## 1. Problems", "## 2. Traces", "## 3. Filter", "## 4. Training", "## 5. Evaluation",
                    "## 6. Serving cost", "accuracy_vs_thinking.png", "## 7. Ablation: filtered vs unfiltered",
                    "| student-unfiltered | teacher-unfiltered | 600 |"):
        assert heading in report
    assert "## Summary" in report and "keeps >= 0.9 of the teacher's accuracy" in report
    for stage in ("problems", "sft/teacher", "traces/teacher", "sft/student", "eval"):
        assert yaml.safe_load((runs / stage / "config.yaml").read_text())["seed"] == seed
    problems = [json.loads(line)["problem"] for line in (runs / "problems" / "eval.jsonl").open()]
    assert (problems[0] == "1 1+1=?+1=?\n0 ?+1=?+1=?") == (seed == 0)  # each seed draws its own problems
    assert all(b["flops_per_correct"] is None or b["flops_per_correct"] > 0
               for m in res["models"] for b in m["budgets"])
