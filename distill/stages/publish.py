"""Stage `publish`: a trained model and its training data as Hugging Face Hub repositories.

    distill publish --config students/demo-l.yaml repo_id=ORG/NAME [--push] [revision=v1] [private=true]

Always writes the exact folders it would upload, runs/<run>/publish/<name>/{model,dataset}/, and the list of
huggingface_hub calls it would make (plan.json, also printed). model/: safetensors weights, tokenizer and chat
template, generation config, reasoning_effort.json (distill/effort.py), the accuracy-vs-thinking plot and
README.md, a model card (ModelCardData + EvalResult: `model-index` holds one accuracy per thinking budget)
with the eval, cost and training config. dataset/: Parquet files of the filtered SFT set (`sft`) and the raw
traces (`traces`), with a dataset card. With push=true (`--push`) the plan runs through `HfApi`: create_repo
(exist_ok), create_branch when a revision is given, upload_folder to that revision. The token is
huggingface_hub's own (HF_TOKEN or the login cache); it is never read into anything this stage writes.
A failed push is one line (exit 2) and leaves nothing behind locally; the Hub may keep what was already sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill import effort
from distill.artifacts import UserError, atomic_write_json, code_version, finish, stage_dir, staging
from distill.config import opt

log = logging.getLogger("distill")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


@dataclass
class PublishConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("student", "the sft stage's name: the defaults below are that stage's artifacts")
    repo_id: str = opt("", "ORG/NAME of the model repo (required)")
    dataset_repo_id: str = opt("", "default: <repo_id>-traces")
    model: str = opt("", "the trained model folder (default runs/<run>/sft/<name>/model)")
    training_config: str = opt("", "the sft stage's config.yaml (default: beside the model folder)")
    results: str = opt("", "eval results.json (default runs/<run>/eval/results.json)")
    eval_name: str = opt("", "the model's entry in results.json (default: name)")
    data: str = opt("", "filter's train.jsonl (default: the training config's `data`)")
    traces: str = opt("", "traces.jsonl (default: traces/<t>/traces.jsonl of the data's filter/<t>/)")
    base_model: str = opt("", "Hub id (default: the training config's `model` when it is a Hub id)")
    license: str = opt("apache-2.0", "the model card's license")
    datasets: list[str] = opt(list, "card metadata (default: [dataset_repo_id])")
    benchmark: str = opt("", "model-index dataset type (default: the eval problems' hf_id or benchmark name)")
    revision: str = opt("", "branch to upload to (created if missing); \"\" = main")
    private: bool = opt(False, "create the Hub repository private")
    push: bool = opt(False, "upload to the Hub (default: write the folder only; `--push` = push=true)")

    def __post_init__(self):
        if not REPO_ID.match(self.repo_id or ""):
            raise ValueError(f"repo_id must be ORG/NAME, got {self.repo_id!r}")
        self.dataset_repo_id = self.dataset_repo_id or self.repo_id + "-traces"
        if not REPO_ID.match(self.dataset_repo_id):
            raise ValueError(f"dataset_repo_id must be ORG/NAME, got {self.dataset_repo_id!r}")
        self.datasets = ([self.datasets] if isinstance(self.datasets, str) else list(self.datasets)) \
            or [self.dataset_repo_id]
        for key in ("private", "push"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")


def _need(path: Path, key: str, hint: str) -> Path:
    if not path.exists():
        raise UserError(f"publish: {key}: {path} not found ({hint})")
    return path


def _load_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None


def _inputs(cfg: PublishConfig) -> dict:
    """Every artifact publish reads, resolved from the config and the sft stage's own config.yaml."""
    sft_dir = stage_dir(cfg.runs_dir, cfg.run, "sft", cfg.name)
    model = _need(Path(cfg.model or sft_dir / "model"), "model", "run `distill sft` first or set model=")
    tc_path = _need(Path(cfg.training_config or model.parent / "config.yaml"), "training_config",
                    "the sft stage's config.yaml; set training_config=")
    train_cfg = _load_yaml(tc_path)
    data = Path(cfg.data or train_cfg.get("data") or stage_dir(cfg.runs_dir, cfg.run, "filter", "teacher") /
                "train.jsonl")
    if not cfg.traces and data.parent.parent.name != "filter":
        raise UserError(f"publish: traces: cannot tell the traces of {data}; set traces=")
    traces = Path(cfg.traces or data.parent.parent.parent / "traces" / data.parent.name / "traces.jsonl")
    results = _need(Path(cfg.results or stage_dir(cfg.runs_dir, cfg.run, "eval") / "results.json"), "results",
                    "run `distill eval` first or set results=")
    try:
        res = json.loads(results.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{results}: not valid JSON ({e.msg})") from None
    eval_name = cfg.eval_name or cfg.name
    entry = next((m for m in res.get("models", []) if m.get("name") == eval_name), None)
    if entry is None:
        names = ", ".join(m.get("name", "?") for m in res.get("models", []))
        raise UserError(f"publish: {results} has no model named {eval_name!r} (has: {names}); set eval_name=")
    base = cfg.base_model or str(train_cfg.get("model") or "")
    if not cfg.base_model and (Path(base).exists() or not REPO_ID.match(base)):
        base = ""  # trained from a local folder (e.g. a fresh init): no Hub base model to name
    return {"model": model, "training_config": tc_path, "train_cfg": train_cfg, "results": results,
            "res": res, "entry": entry,
            "teacher": next((m for m in res["models"] if m.get("role") == "teacher"), None),
            "data": _need(data, "data", "run `distill filter` first or set data="),
            "traces": _need(traces, "traces", "run `distill traces` first or set traces="),
            "base_model": base, "sft_manifest": model.parent / "manifest.json"}


def _benchmark(cfg: PublishConfig, res: dict) -> tuple[str, str]:
    """(model-index dataset type, display name) of the held-out problems the eval ran on."""
    pcfg_path = Path(res.get("problems", "")).parent / "config.yaml"
    pcfg = _load_yaml(pcfg_path) if pcfg_path.is_file() else {}
    if cfg.benchmark:
        return cfg.benchmark, cfg.benchmark
    if pcfg.get("hf_id") or pcfg.get("benchmark"):
        return pcfg.get("hf_id") or pcfg["benchmark"], pcfg.get("benchmark") or pcfg["hf_id"]
    tasks = ", ".join(pcfg.get("tasks") or []) or "built-in tasks"
    return "distill-builtin", f"distill built-in tasks ({tasks}), held-out split"


def _model_folder(src: Path, dst: Path) -> list[str]:
    """The model's publishable files (never training state such as training_args.bin)."""
    dst.mkdir(parents=True)
    files = sorted({p for pattern in MODEL_FILES for p in src.glob(pattern) if p.is_file()})
    for p in files:
        shutil.copyfile(p, dst / p.name)
    names = {p.name for p in files}
    if not any(n.endswith(".safetensors") for n in names) or "config.json" not in names:
        raise UserError(f"publish: model: {src} has no safetensors weights and config.json")
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json"}:
        raise UserError(f"publish: model: {src} has no tokenizer")
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text()) if "tokenizer_config.json" in names \
        else {}
    if not names & {"chat_template.jinja", "chat_template.json"} and not tok_cfg.get("chat_template"):
        raise UserError(f"publish: model: {src} has no chat template (the thinking format lives there)")
    if "generation_config.json" not in names:
        from transformers import AutoConfig, GenerationConfig

        GenerationConfig.from_model_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
    return sorted(p.name for p in dst.iterdir())


def _parquet(jsonl: Path, dst: Path, config: str, scratch: Path) -> int:
    """JSONL -> Parquet shards <config>/train-0000i-of-0000n.parquet (datasets' own layout on the Hub)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_json(str(jsonl), cache_dir=str(scratch / config))
    except Exception as e:  # the JSON loader's errors are long: keep the first line
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"publish: {jsonl}: not loadable as JSON lines ({first})") from None
    n = max(1, -(-ds.data.nbytes // (500 << 20)))
    (dst / config).mkdir(parents=True)
    for i in range(n):
        ds.shard(n, i, contiguous=True).to_parquet(str(dst / config / f"train-{i:05d}-of-{n:05d}.parquet"))
    return len(ds)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _size(p: int) -> str:
    return f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p / 1e3:.0f}k"


def _model_card(cfg: PublishConfig, inp: dict, efforts: dict, bench: tuple[str, str]) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    m, res, teacher = inp["entry"], inp["res"], inp["teacher"]
    args = {"samples_per_problem": res.get("n"), "temperature": res.get("temperature"),
            "problems": res.get("n_problems")}
    evals = [EvalResult(task_type="text-generation",
                        task_name="Reasoning with a thinking budget (budget forcing)",
                        dataset_type=bench[0], dataset_name=bench[1], dataset_split="held-out",
                        metric_type="accuracy", metric_value=b["accuracy"],
                        metric_name=f"accuracy (thinking budget {b['budget']} tokens)",
                        metric_config=f"thinking_budget={b['budget']}",
                        metric_args={"thinking_budget": b["budget"], **args}) for b in m["budgets"]]
    short = cfg.repo_id.split("/")[1]
    data = ModelCardData(model_name=short, base_model=inp["base_model"] or None, datasets=cfg.datasets,
                         license=cfg.license, library_name="transformers", pipeline_tag="text-generation",
                         tags=["reasoning", "distillation", "budget-forcing", "distill"], eval_results=evals)
    t_acc = {b["budget"]: b["accuracy"] for b in teacher["budgets"]} if teacher and teacher is not m else {}
    acc = [[b["budget"], f"{b['accuracy']:.3f} ± {b['accuracy_std']:.3f}", f"{b['mean_thinking_tokens']:.1f}",
            f"{b['self_closed']:.2f}"] + ([f"{t_acc[b['budget']]:.3f}" if b["budget"] in t_acc else "-"]
                                      if t_acc else []) for b in m["budgets"]]
    by_b = {b["budget"]: b["accuracy"] for b in m["budgets"]}
    c = m["cost"]
    cost = [[f"{c['tokens_per_s']:,.0f}", f"{c['latency_p50_s']:.2f}", f"{c['latency_p95_s']:.2f}",
             f"{c['peak_mem_mb']:.0f}", f"{c['flops_per_problem']:.2e}",
             "-" if c["cost_per_correct"] is None else f"{c['cost_per_correct']:.2e}", c["price_per_hour"]]]
    sft = json.loads(inp["sft_manifest"].read_text()) if inp["sft_manifest"].is_file() else {}
    counts = sft.get("counts", {})
    trained = (f" ({counts['steps']} steps on {counts['rows']} rows, loss {counts['first_loss']:.3f} → "
               f"{counts['final_loss']:.3f})" if {"steps", "rows", "first_loss", "final_loss"} <= set(counts)
               and counts["final_loss"] is not None else "")
    from_teacher = f" from the teacher `{teacher['name']}`'s" if teacher and teacher is not m else " from"
    body = [
        f"# {short}", "",
        f"A {_size(m['params'])}-parameter reasoning model distilled{from_teacher} verified chains of "
        f"thought with `distill` (published by `distill publish`, code {code_version()}). It thinks inside "
        "`<think> … </think>` (the chat template opens the thinking), then answers.", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tok = AutoTokenizer.from_pretrained("{cfg.repo_id}")',
        f'model = AutoModelForCausalLM.from_pretrained("{cfg.repo_id}")',
        'ids = tok.apply_chat_template([{"role": "user", "content": "..."}], add_generation_prompt=True, '
        'return_tensors="pt", return_dict=True)',
        "print(tok.decode(model.generate(**ids, max_new_tokens=256)[0]))", "```", "",
        "## Evaluation", "",
        f"{bench[1]}: {res.get('n_problems')} problems, {res.get('n')} samples each at temperature "
        f"{res.get('temperature')}. Budget forcing caps the thinking at B tokens, then closes it and forces "
        "the answer; accuracy is mean ± std over samples, self-closed is the share of samples that closed "
        "their thinking by themselves within B.", "",
        *_table(["thinking budget B", "accuracy", "mean thinking tokens", "self-closed"] +
                (["teacher accuracy"] if t_acc else []), acc), "",
        "![accuracy vs thinking budget](accuracy_vs_thinking.png)", "",
        "## Reasoning effort", "",
        "`reasoning_effort.json` maps an effort to a thinking budget, from the curve above: the smallest "
        f"budget reaching {effort.shares_text()} of the best accuracy.", "",
        *_table(["effort", "thinking budget", "accuracy"],
                [[k, v, f"{by_b[v]:.3f}"] for k, v in efforts.items()]), "",
        "## Serving cost", "",
        f"Measured in the same eval run ({m.get('backend', {}).get('backend', '?')} on "
        f"{m.get('backend', {}).get('device', '?')}, batched); FLOPs per problem = 2 × params × tokens; "
        "$ per correct answer at the largest budget, at the machine price below.", "",
        *_table(["tokens/s", "latency p50 s", "latency p95 s", "peak memory MB", "FLOPs/problem",
                 "$ per correct", "$ per hour"], cost), "",
        "## Training", "",
        f"Supervised fine-tuning (loss on assistant tokens only) on [{cfg.dataset_repo_id}]"
        f"(https://huggingface.co/datasets/{cfg.dataset_repo_id}) (`sft` config){trained}. "
        "Training config:", "",
        "```yaml", inp["training_config"].read_text().rstrip(), "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _dataset_card(cfg: PublishConfig, inp: dict, rows: dict) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    n = max(rows.values())
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    data = DatasetCardData(license=cfg.license, pretty_name=f"{cfg.repo_id.split('/')[1]} reasoning traces",
                           task_categories=["text-generation"], size_categories=[size],
                           tags=["reasoning", "distillation", "chain-of-thought", "distill"],
                           configs=[{"config_name": k, **({"default": True} if k == "sft" else {}),
                                     "data_files": [{"split": "train", "path": f"{k}/train-*"}]}
                                    for k in ("sft", "traces")])
    stats_path = inp["data"].parent / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    kept = (f" Filter: {stats['samples']} samples, correct rate {stats['correct_rate']:.3f}, kept "
            f"{stats['kept']}; dropped {json.dumps(stats['dropped'])}."
            if {"samples", "correct_rate", "kept", "dropped"} <= set(stats) else "")
    body = [f"# {cfg.repo_id.split('/')[1]} reasoning traces", "",
            f"The data [{cfg.repo_id}](https://huggingface.co/{cfg.repo_id}) was trained on, written by "
            "`distill publish`.", "",
            f"- `sft` ({rows['sft']} rows): the filtered SFT set, chat `messages` whose assistant turn is "
            "`<think>\\n…\\n</think>\\n` + the answer; only traces the task's checker verified, deduplicated."
            + kept,
            f"- `traces` ({rows['traces']} rows): every raw sample of the teacher, one row per (problem, "
            "sample): prompt, thinking, answer, finish reason, token counts.", "",
            "```python", "from datasets import load_dataset", "",
            f'sft = load_dataset("{cfg.dataset_repo_id}", "sft", split="train")',
            f'traces = load_dataset("{cfg.dataset_repo_id}", "traces", split="train")', "```", ""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _files(folder: Path) -> list[dict]:
    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def _plan(cfg: PublishConfig) -> list[dict]:
    """The huggingface_hub calls, in order; `folder_path` is relative to the publish folder."""
    calls = []
    for kind, repo in (("model", cfg.repo_id), ("dataset", cfg.dataset_repo_id)):
        calls.append({"call": "create_repo", "args": {"repo_id": repo, "repo_type": kind,
                                                       "private": cfg.private, "exist_ok": True}})
        if cfg.revision:
            calls.append({"call": "create_branch", "args": {"repo_id": repo, "repo_type": kind,
                                                             "branch": cfg.revision, "exist_ok": True}})
        calls.append({"call": "upload_folder", "args": {
            "repo_id": repo, "repo_type": kind, "folder_path": kind, "revision": cfg.revision or None,
            "commit_message": f"distill publish: {cfg.name} ({kind})"}})
    return calls


def _show(call: dict) -> str:
    return f"HfApi().{call['call']}({', '.join(f'{k}={v!r}' for k, v in call['args'].items())})"


def _push(calls: list[dict], root: Path) -> list[dict]:
    """Run the plan. Any failure is one line; the token is whatever huggingface_hub resolves itself."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    api, done = HfApi(), []
    for call in calls:
        args = dict(call["args"])
        if "folder_path" in args:
            args["folder_path"] = str(root / args["folder_path"])
        try:
            out = getattr(api, call["call"])(**args)
        except Exception as e:
            log.debug("push failed", exc_info=True)
            status = getattr(getattr(e, "response", None), "status_code", None) if isinstance(
                e, HfHubHTTPError) else None
            hint = " (check the token's write access to the namespace)" if status in (401, 403) else ""
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            token = get_token()
            msg = msg.replace(token, "***") if token else msg
            raise UserError(f"push: {call['call']} {args['repo_id']} failed: {msg}{hint}") from None
        if call["call"] == "upload_folder":
            done.append({"repo_id": args["repo_id"], "repo_type": args["repo_type"],
                         "commit_url": out.commit_url, "oid": out.oid})
        print(f"publish: done {_show(call)}")
    return done


def run(cfg: PublishConfig) -> Path:
    started = time.time()
    if cfg.push:  # fail before building anything: the token is huggingface_hub's own resolution
        from huggingface_hub import get_token

        if not get_token():
            raise UserError("push: no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    inp = _inputs(cfg)
    calibration = effort.from_curve(inp["entry"]["budgets"]) | {
        "source": {"results": str(inp["results"]), "model": inp["entry"]["name"], "path": inp["entry"].get("path")}}
    efforts = calibration["efforts"]
    out = stage_dir(cfg.runs_dir, cfg.run, "publish", cfg.name)
    calls = _plan(cfg)
    with staging(out) as tmp:
        _model_folder(inp["model"], tmp / "model")
        effort.save(tmp / "model", calibration)  # the file `distill serve` reads
        plot = inp["results"].parent / "accuracy_vs_thinking.png"
        if plot.is_file():
            shutil.copyfile(plot, tmp / "model" / plot.name)
        else:
            from distill import plots

            plots.accuracy_vs_thinking([m for m in (inp["teacher"], inp["entry"]) if m],
                                       tmp / "model" / plot.name)
        (tmp / "model" / "README.md").write_text(_model_card(cfg, inp, efforts, _benchmark(cfg, inp["res"])))
        with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
            rows = {k: _parquet(inp[src], tmp / "dataset", k, Path(scratch))
                    for k, src in (("sft", "data"), ("traces", "traces"))}
        (tmp / "dataset" / "README.md").write_text(_dataset_card(cfg, inp, rows))
        plan = {"repos": {"model": cfg.repo_id, "dataset": cfg.dataset_repo_id},
                "revision": cfg.revision or "main", "private": cfg.private, "calls": calls,
                "files": {k: _files(tmp / k) for k in ("model", "dataset")}}
        atomic_write_json(tmp / "plan.json", plan)
        for call in calls:
            print(f"publish: {'calling' if cfg.push else 'would call'} {_show(call)}")
        pushed = _push(calls, tmp) if cfg.push else []
        finish(tmp, "publish", cfg, {k: inp[k] for k in ("model", "training_config", "results", "data",
                                                         "traces")},
               {"model_files": len(list((tmp / "model").iterdir())), "sft_rows": rows["sft"],
                "trace_rows": rows["traces"]}, started, reasoning_effort=efforts, pushed=pushed)
    where = "pushed" if cfg.push else "dry run (add --push to upload)"
    print(f"publish: {where}: {out / 'model'} -> {cfg.repo_id}, {out / 'dataset'} -> {cfg.dataset_repo_id} "
          f"(revision {cfg.revision or 'main'}); reasoning effort {efforts}; plan: {out / 'plan.json'}")
    return out
