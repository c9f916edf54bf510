"""Stage `problems`: write the train and held-out eval problem sets as JSONL.

Sources: the built-in procedural tasks (the embedded default), a local JSONL file with `id`, `problem` and
`answer` per row, or a benchmark (source: benchmark): a local JSONL/Parquet file (`path`), a local mirror
under the data root ($DISTILL_DATA, default ../shared/data; `mirror`) or a Hugging Face dataset (`hf_id`,
used when the mirror is absent), read through a field mapping and normalised to one schema with a rendered
`prompt` (distill/benchmarks.py, recipes in eval/). Output: runs/<run>/problems/{train,eval}.jsonl; a
benchmark may be eval-only, and then no train.jsonl is written. The manifest's `source` says where each
split was read from (mirror:/abs/file, path:/abs/file or hub:<id>[/<config>]:<split>).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill import benchmarks, tasks
from distill.artifacts import UserError, finish, read_jsonl, stage_dir, staging, write_jsonl
from distill.config import Pos, Share, check_literals, check_positive, opt


@dataclass
class ProblemsConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    source: Literal["builtin", "jsonl", "benchmark"] = opt(
        "builtin", "builtin (the demo's tasks), jsonl (your files) or benchmark (eval/*.yaml)")
    tasks: list[str] = opt(lambda: ["chain", "search"], "source builtin: the task families")
    levels: dict = opt(lambda: {"chain": [1, 2, 3, 4], "search": [1, 2]}, "per task")
    train_per_task: Pos | dict[str, Pos] = opt(
        500, "or {task: count}; each task has ~600-800 distinct training problems")
    eval_per_task: Pos = opt(100, "held-out problems per task")
    eval_fraction: Share = opt(0.2, "share of the problem space reserved for eval (by a hash of the text)")
    seed: int = opt(
        0, "seeds every random choice of the stage: the same settings and inputs give the same outputs")
    train_path: str = opt(
        "", "source=jsonl: files with id, problem, answer per row; benchmark: optional train file")
    eval_path: str = opt("", "source jsonl: the eval file")
    # source=benchmark (distill/benchmarks.py; recipes in eval/)
    benchmark: str = opt("", "name written into every row (default: the run name)")
    path: str = opt("", "local JSONL or Parquet of the eval split; wins over mirror and hf_id")
    mirror: str = opt(
        "", "the eval split's file relative to the data root ($DISTILL_DATA), used when present")
    train_mirror: str = opt("", "the same for the train split")
    hf_id: str = opt(
        "", "Hugging Face dataset id, read through datasets.load_dataset when no local file is used")
    hf_config: str = opt("", "hf_id's configuration (subset)")
    hf_revision: str = opt("", "pin hf_id to a tag, branch or commit (\"\": the Hub's main)")
    split: str = opt("test", "hf_id's eval split")
    train_split: str = opt("", "hf_id's train split, if any (\"\": the benchmark is eval-only)")
    fields: dict = opt(dict, "{problem, answer, id, level, subject} -> input field name")
    hub_fields: dict = opt(dict, "replaces `fields` for hf_id rows (other columns)")
    answer_extract: Literal["none", "gsm8k", "boxed"] = opt(
        "none", "how the gold comes out of the answer field")
    answer_type: Literal["integer", "math"] = opt(
        "math", "how answers are compared: integer, or math (math-verify)")
    skip_missing_gold: bool = opt(False, "leave out rows whose answer gives no gold (listed in the manifest)")
    prompt_template: str = opt("{problem}", "how a problem is asked; {problem} is its text")

    def __post_init__(self):
        check_literals(self)
        for t in self.tasks:
            if t not in tasks.FAMILIES:
                raise ValueError(f"unknown task {t!r} (known: {', '.join(tasks.FAMILIES)})")
        for t in self.tasks:
            if t not in self.levels:
                raise ValueError(f"levels has no entry for task {t!r}")
            check_positive(f"levels.{t}", self.levels[t])
        check_positive("eval_per_task", self.eval_per_task)
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.source == "jsonl" and not (self.train_path and self.eval_path):
            raise ValueError("source=jsonl needs train_path and eval_path")
        if self.source == "benchmark":
            self._check_benchmark()

    def _check_benchmark(self):
        self.benchmark = self.benchmark or self.run
        if not (self.path or self.mirror or self.hf_id):
            raise ValueError("source=benchmark needs path (a local JSONL/Parquet file), mirror or hf_id")
        if self.benchmark in tasks.FAMILIES:
            raise ValueError(f"benchmark {self.benchmark!r} is the name of a built-in task")
        benchmarks.check_fields(self.fields)
        benchmarks.check_fields(self.hub_fields)
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {problem}")


def _builtin(cfg: ProblemsConfig, split: str, n: int | dict) -> list[dict]:
    rows = []
    for task in cfg.tasks:
        count = n[task] if isinstance(n, dict) else n
        rows += tasks.generate(task, cfg.levels[task], count, split, cfg.seed, cfg.eval_fraction)
    return rows


def _local(path: str, split: str) -> list[dict]:
    rows = read_jsonl(Path(path), required=("id", "problem", "answer"))
    return [{"task": "math", "level": 0, "source": str(path), **r, "answer": str(r["answer"])} for r in rows]


def _inputs(cfg: ProblemsConfig, located: dict) -> dict[str, Path]:
    """Local input files (a benchmark's: the path or mirror used), hashed into the manifest so a changed
    benchmark file is visible."""
    paths = {"builtin": {}, "jsonl": {"train": cfg.train_path, "eval": cfg.eval_path},
             "benchmark": {name: loc for name, (kind, loc) in located.items() if kind != "hub"}}[cfg.source]
    return {name: Path(p) for name, p in paths.items() if p}


def run(cfg: ProblemsConfig) -> Path:
    started = time.time()
    located, skipped = {}, {"train": [], "eval": []}  # benchmark: where splits come from, rows left out
    if cfg.source == "builtin":
        train, held_out = _builtin(cfg, "train", cfg.train_per_task), _builtin(cfg, "eval", cfg.eval_per_task)
    elif cfg.source == "jsonl":
        train, held_out = _local(cfg.train_path, "train"), _local(cfg.eval_path, "eval")
    else:
        located = {s: loc for s in ("eval", "train") if (loc := benchmarks.locate(cfg, s))}
        train = benchmarks.load(cfg, "train", skipped["train"])
        held_out = benchmarks.load(cfg, "eval", skipped["eval"])
    if not held_out:
        raise UserError("problems: the eval set is empty")
    overlap = {r["problem"] for r in train} & {r["problem"] for r in held_out}
    if overlap:
        raise UserError(f"problems: {len(overlap)} eval problems also appear in train, e.g. {min(overlap)!r}")
    # where each split came from (mirror:/abs/file, path:/abs/file, hub:<id>:<split>); rows with no gold
    extra = {"source": {s: benchmarks.describe(cfg, loc) for s, loc in located.items()}} if located else {}
    if any(skipped.values()):
        extra["skipped_no_gold"] = {s: ids for s, ids in skipped.items() if ids}
    out = stage_dir(cfg.runs_dir, cfg.run, "problems")
    # an eval-only benchmark has no train.jsonl at all, so nothing downstream mistakes it for an empty set
    write_train = cfg.source != "benchmark" or bool(train)
    with staging(out) as tmp:
        if write_train:
            write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", held_out)
        finish(tmp, "problems", cfg, _inputs(cfg, located), {"train": len(train), "eval": len(held_out)},
               started, **extra)
    for split, where in extra.get("source", {}).items():
        print(f"problems: {split} split from {where}")
    for split, ids in extra.get("skipped_no_gold", {}).items():
        print(f"problems: left out {len(ids)} {split} rows with no gold answer ({', '.join(ids[:5])})")
    print(f"problems: {len(train)} train, {len(held_out)} held-out eval -> {out}")
    return out
