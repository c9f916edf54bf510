"""The pipeline's stages, one module each with one public `run(cfg) -> Path` and its config beside it, in
the order they run:

    problems -> tokenizer -> init -> traces -> filter (decontaminate) -> sft (plan) [-> verifier] -> eval -> report
    then publish, quantize, serve, chat; gpu-check checks a GPU box before a long run.

They hand off through artifacts under runs/<run>/<stage>/, and use the library in distill/ (generate, verify,
tasks, benchmarks, backends, capabilities, planner, training, artifacts, config, metrics, plots). `distill
<stage> --config recipe.yaml key=value` runs one (distill/cli.py).
"""
