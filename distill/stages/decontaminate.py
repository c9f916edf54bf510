"""Stage `decontaminate`: drop training problems that share a word n-gram with an eval benchmark.

Text is compared as words: lowercased, split at anything that is not a letter or digit (so punctuation,
LaTeX backslashes and braces vanish: "$\\frac{1}{2}$" gives frac, 1, 2). Two problems overlap when they
share an n-gram of n consecutive words (n = 8 by default). A problem shorter than n words is one n-gram of
all its words, and it overlaps when that whole word sequence occurs inside the other problem: otherwise a
short benchmark problem ("Compute $\\dbinom{8}{4}$.") could never be found in training data.

Training rows are read from a JSONL file with `problem` (runs/<run>/problems/train.jsonl) or chat `messages`
(filter's train.jsonl; the first user turn is compared). Eval sets are normalised eval.jsonl files
(runs/<bench>/problems/eval.jsonl) or benchmark recipes (eval/gsm8k.yaml), loaded by the same loader as
the `problems` stage. Output: runs/<run>/decontaminate/{train.jsonl (the kept rows, unchanged),
overlaps.jsonl (train_id, benchmark, eval_id, ngram), manifest.json}. `filter` runs the same check when
`decontaminate_against` is set.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from distill import benchmarks
from distill.artifacts import UserError, finish, stage_dir, staging, write_jsonl
from distill.config import Pos, check_positive, load_recipe, opt
from distill.stages.problems import ProblemsConfig

N = 8  # the word n-gram length (filter's step uses this default)
_WORD = re.compile(r"[^\W_]+")


@dataclass
class DecontaminateConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    train: str = opt("", "default: runs/<run>/problems/train.jsonl (rows with problem, or chat messages)")
    against: list[str] = opt(list, "eval sets: normalised eval.jsonl files or eval/*.yaml")
    ngram: Pos = opt(N, "words in an n-gram (a shared one is an overlap)")

    def __post_init__(self):
        check_positive("ngram", self.ngram)
        self.against = as_paths("against", self.against)
        if not self.against:
            raise ValueError("against is empty: list eval sets (runs/<bench>/problems/eval.jsonl or "
                             "eval/<bench>.yaml)")


def as_paths(name: str, value) -> list[str]:
    """A list of paths; one path given as a plain string (`against=eval/gsm8k.yaml`) is a list of one."""
    value = [value] if isinstance(value, str) and value else value or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of paths, got {value!r}")
    return value


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _grams(ws: list[str], n: int) -> list[tuple]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def _index(evals: list[tuple[str, str, str]], n: int, short_train: set[int]):
    """Eval n-grams -> [(benchmark, eval_id)]. `exact[L]` holds the whole text of each eval problem of
    L < n words; `sliding[L]` all L-grams of every eval problem, for training problems of L < n words."""
    full, exact, sliding = {}, {}, {L: {} for L in short_train}
    for bench, eid, text in evals:
        ws, ref = words(text), (bench, eid)
        if not ws:
            continue
        if len(ws) >= n:
            for g in _grams(ws, n):
                full.setdefault(g, []).append(ref)
        else:
            exact.setdefault(len(ws), {}).setdefault(tuple(ws), []).append(ref)
        for L, index in sliding.items():
            for g in _grams(ws, L):
                index.setdefault(g, []).append(ref)
    return full, exact, sliding


def find_overlaps(train: list[tuple[str, str]], evals: list[tuple[str, str, str]], n: int = N) -> list[dict]:
    """Every (training problem, eval problem) pair sharing a word n-gram, with the first shared n-gram.

    train: [(train_id, text)]; evals: [(benchmark, eval_id, text)]. Used by this stage and by `filter`."""
    train_words = [(tid, words(text)) for tid, text in train]
    short_train = {len(ws) for _, ws in train_words if 0 < len(ws) < n}
    full, exact, sliding = _index(evals, n, short_train)
    out = []
    for tid, ws in train_words:
        if not ws:
            continue
        if len(ws) < n:  # the whole short problem must occur inside an eval problem
            candidates = [(tuple(ws), sliding[len(ws)])]
        else:  # its n-grams, and its shorter spans that equal a whole short eval problem
            candidates = [(g, full) for g in _grams(ws, n)]
            candidates += [(g, exact[L]) for L in exact for g in _grams(ws, L)]
        seen = set()
        for g, index in candidates:
            if not any(w.isalpha() for w in g):  # numbers alone ("2 5 5 2 5 5") are not shared text
                continue
            for ref in index.get(g, ()):
                if ref not in seen:
                    seen.add(ref)
                    out.append({"train_id": tid, "benchmark": ref[0], "eval_id": ref[1], "ngram": " ".join(g)})
    return out


def _jsonl_problems(path: str, label: str) -> list[tuple[str, str, dict]]:
    """(id, problem text, row) of a JSONL file whose rows have `problem` or chat `messages`."""
    out, seen = [], set()
    for i, (where, row) in enumerate(benchmarks.read_rows(path)):
        text = row.get("problem")
        if text is None and isinstance(row.get("messages"), list):
            text = next((m.get("content") for m in row["messages"]
                         if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(text, str):
            raise UserError(f"{where}: no `problem` field or user message to compare ({label})")
        pid = str(row.get("id", i))  # chat rows (filter's output) have no id: their 0-based row number
        if pid in seen:  # rows are dropped by id, so an id must name one row
            raise UserError(f"{where}: duplicate id {pid!r} ({label})")
        seen.add(pid)
        out.append((pid, text, row))
    return out


def load_eval_sets(paths: list[str]) -> list[tuple[str, str, str]]:
    """[(benchmark, eval_id, problem)] from normalised eval.jsonl files or benchmark recipes (YAML)."""
    out = []
    for p in paths:
        if Path(p).suffix in (".yaml", ".yml"):
            recipe = load_recipe(p)
            section = recipe.get("problems") or {}
            try:
                cfg = ProblemsConfig(**{"run": recipe.get("run", Path(p).stem), **section})
            except (TypeError, ValueError) as e:
                raise UserError(f"{p} [problems]: {e}") from None
            if cfg.source != "benchmark":
                raise UserError(f"{p}: its problems section is not a benchmark (source: {cfg.source})")
            out += [(r["benchmark"], r["id"], r["problem"]) for r in benchmarks.load(cfg, "eval")]
        else:
            out += [(row.get("benchmark") or str(p), pid, text) for pid, text, row in _jsonl_problems(p, "eval")]
    if not out:
        raise UserError(f"no eval problems in {', '.join(map(str, paths))}")
    return out


def run(cfg: DecontaminateConfig) -> Path:
    started = time.time()
    train_path = Path(cfg.train or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
    train = _jsonl_problems(str(train_path), "train")
    evals = load_eval_sets(cfg.against)
    overlaps = find_overlaps([(tid, text) for tid, text, _ in train], evals, cfg.ngram)
    dirty = {o["train_id"] for o in overlaps}
    kept = [row for tid, _, row in train if tid not in dirty]
    by_bench = Counter(bench for _, bench in {(o["train_id"], o["benchmark"]) for o in overlaps})
    counts = {"train": len(train), "kept": len(kept), "dropped": len(train) - len(kept), "overlaps": len(overlaps),
              "eval_problems": dict(Counter(b for b, _, _ in evals)), "dropped_by_benchmark": dict(by_bench)}
    out = stage_dir(cfg.runs_dir, cfg.run, "decontaminate")
    inputs = {"train": train_path, **{f"against:{p}": Path(p) for p in cfg.against}}
    with staging(out) as tmp:
        write_jsonl(tmp / "train.jsonl", kept)
        write_jsonl(tmp / "overlaps.jsonl", overlaps)
        finish(tmp, "decontaminate", cfg, inputs, counts, started)
    print(f"decontaminate: dropped {counts['dropped']} of {len(train)} training problems "
          f"(overlapping {dict(by_bench) or 'nothing'}) -> {out}")
    return out
