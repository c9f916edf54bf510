"""`make gpu-check` at tiny scale on CPU: the same script a user runs on a new GPU box (capability table, measured
matmul ceiling, the 1.5B and 7B recipes trained with their own settings at the planned micro-batch, generation
tokens/s), with 2-layer models in place of the recipes' architectures."""

import json
import math

from .conftest import distill


def test_gpu_check_measures_every_cell_at_tiny_scale(tmp_path):
    proc = distill("gpu-check", "scale=tiny", "steps=3", "prompts=8", "budget=32", "with_vllm=false",
                   f"runs_dir={tmp_path}")
    out = tmp_path / "gpu-check" / "gpu-check"
    res = json.loads((out / "results.json").read_text())
    assert res["facts"]["device"] == "cpu" and res["matmul_flops"] > 0
    assert [r["recipe"] for r in res["training"]] == ["qwen2.5-1.5b", "qwen2.5-7b"]
    for r in res["training"]:
        assert "error" not in r, r
        for key in ("params", "micro_batch", "tokens_per_s", "mfu", "peak_gb", "plan_gb", "flops_per_token"):
            assert isinstance(r[key], int | float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["steps"] == 3 and 0 < r["mfu"] < 1
        # what ran, as the capabilities decided on this CPU
        assert r["decisions"]["attention"] == "sdpa" and r["decisions"]["optimizer"] == "adamw_bnb_8bit"
        # at this scale the fixed costs dominate both numbers; the plan is still of the measured peak's size
        assert 0.5 < r["plan_gb"] / r["peak_gb"] < 2
    (gen,) = res["generation"]
    assert gen["backend"] == "transformers" and gen["tokens"] > 0 and gen["tokens_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "failed" not in report and "qwen2.5-7b" in report and "matmul ceiling" in report
    assert "| qwen2.5-1.5b |" in proc.stdout
