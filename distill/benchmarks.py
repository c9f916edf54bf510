"""Benchmarks as data: read a benchmark from a local JSONL/Parquet file or a Hugging Face dataset and
normalise every row to one problem schema.

A benchmark is described by the `problems:` section of a recipe in eval/ (source: benchmark); see
eval/gsm8k.yaml. The normalised row, written by the `problems` stage to runs/<run>/problems/eval.jsonl:

    id           str   the mapped id field, or "<benchmark>-<split>-<index>" when none is mapped
    problem      str   the raw problem text (what decontamination compares)
    prompt       str   prompt_template with {problem} filled in (what the model sees)
    answer       str   the gold answer, after answer_extract and, for answer_type integer, as a plain integer
    answer_type  str   integer | math (how a response is graded)
    benchmark    str   the benchmark's name
    task         str   the benchmark's name again: eval groups its accuracy by task and level
    source       str   the file path, or hf:<id>[/<config>]:<split>
    level        int | str   (when mapped) "Level 3" becomes 3
    subject      str   (when mapped)

Where a split's rows come from (`locate`), first match wins: an explicit `path` (`train_path`); the local
mirror `mirror` (`train_mirror`), a path relative to the data root, used when that file exists; else the
Hub dataset `hf_id` at `split` (`train_split`). The data root is $DISTILL_DATA, by default ../shared/data
relative to the current directory (the repository root, where commands are run).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

from distill.artifacts import UserError, jsonl_rows

FIELDS = ("problem", "answer", "id", "level", "subject")  # the keys a field mapping may have
EXTRACTORS = ("none", "gsm8k", "boxed")
DATA_ENV, DEFAULT_DATA_ROOT = "DISTILL_DATA", "../shared/data"


def data_root() -> Path:
    """The directory local mirrors are read from: $DISTILL_DATA, else ../shared/data (relative to the
    current directory)."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def check_fields(fields: dict) -> None:
    """A field mapping {our field: input field}; raises ValueError (a config error) for an unknown key."""
    if not isinstance(fields, dict):
        raise TypeError(f"fields must be a mapping of {', '.join(FIELDS)} to input field names, got {fields!r}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"fields: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(FIELDS)})")
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"fields.{bad[0]} must name an input field, got {fields[bad[0]]!r}")


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a local JSONL or Parquet file; `where` is "file:line" (JSONL) or
    "file row N" (Parquet), so every later error can point at the offending row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a corrupt file
            raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
        for i, row in enumerate(rows, 1):
            yield f"{path} row {i}", row
        return
    for i, row in jsonl_rows(path):
        yield f"{path}:{i}", row


def hub_label(hf_id: str, hf_config: str, split: str) -> str:
    return f"{hf_id}" + (f"/{hf_config}" if hf_config else "") + f":{split}"


def hub_rows(hf_id: str, hf_config: str, split: str,
             hint: str = "set `path` to a local copy instead", revision: str = "") -> Iterator[tuple[str, dict]]:
    """(where, row) for a Hugging Face dataset split, loaded through `datasets` (cached or online)."""
    label = "hf:" + hub_label(hf_id, hf_config, split) + (f"@{revision}" if revision else "")
    print(f"loading {label} through datasets.load_dataset (Hub or its cache)", flush=True)
    from datasets import load_dataset  # (imported first: importing it sets the Hub logger's level)

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings (a dozen lines offline): the error below says why
    try:
        ds = load_dataset(hf_id, hf_config or None, split=split, **({"revision": revision} if revision else {}))
    except Exception as e:  # noqa: BLE001 -- offline, unknown id or split...: all the user's to fix
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"{label}: could not load the dataset ({type(e).__name__}: {msg}); {hint}") from None
    finally:
        hub_log.setLevel(level)
    for i, row in enumerate(ds, 1):
        yield f"{label} row {i}", row


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (nested braces balanced), or of `\boxed 2` (no braces, as in two
    MATH train solutions); None when there is none or its braces never close."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    rest = text[start + len("\\boxed"):]
    if not rest.lstrip().startswith("{"):
        m = re.match(r"\s+([^\s$]+)", rest)
        return m.group(1) if m else None
    rest = rest.lstrip()
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return None


def canonical_integer(value) -> str | None:
    """'1,450' -> '1450', 27.0 -> '27', '025' -> '25'; None when the value is not a whole number, so the
    integer grader's exact match compares like with like."""
    text = str(value).replace(",", "").strip()
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None
    if not d.is_finite() or d != d.to_integral_value():
        return None
    return str(int(d))


class NoGold(UserError):
    """A row whose answer field gives no gold answer at all (skipped with `skip_missing_gold`)."""


def extract_gold(value, how: str, answer_type: str, where: str, field: str) -> str:
    if how == "gsm8k":  # a worked solution ending "#### 1,450"
        text = str(value)
        if "####" not in text:
            raise NoGold(f"{where}: field {field!r} has no '#### <answer>' line")
        gold = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif how == "boxed":  # a worked solution whose final answer is its last \boxed{}
        gold = last_boxed(str(value))
        if gold is None:
            raise NoGold(f"{where}: field {field!r} has no complete \\boxed{{...}} answer")
        gold = gold.strip()
    else:
        gold = str(value).strip()
    if not gold:  # e.g. "\boxed{}" in two MATH train solutions
        raise NoGold(f"{where}: field {field!r} gives an empty answer")
    if answer_type == "integer":
        number = canonical_integer(gold)
        if number is None:
            raise UserError(f"{where}: answer {gold!r} (field {field!r}) is not an integer, "
                            f"but answer_type is integer")
        gold = number
    return gold


def _level(value):
    m = re.fullmatch(r"Level (\d+)", str(value).strip())
    return int(m.group(1)) if m else value


def normalise(cfg, where: str, row: dict, index: int, split: str, fields: dict | None = None) -> dict:
    """One input row -> the normalised schema. `cfg` is a ProblemsConfig (source=benchmark); `fields`
    replaces cfg.fields (the Hub copy's mapping, `hub_fields`)."""
    mapping = {"problem": "problem", "answer": "answer", **(fields if fields is not None else cfg.fields)}
    missing = [mapping[k] for k in FIELDS if k in mapping and mapping[k] not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)} (known: {', '.join(map(str, row))})")
    problem = row[mapping["problem"]]
    if not isinstance(problem, str) or not problem.strip():
        raise UserError(f"{where}: field {mapping['problem']!r} (problem) is empty or not text")
    out = {"id": str(row[mapping["id"]]) if "id" in mapping else f"{cfg.benchmark}-{split}-{index:05d}",
           "problem": problem,
           "prompt": cfg.prompt_template.replace("{problem}", problem),
           "answer": extract_gold(row[mapping["answer"]], cfg.answer_extract, cfg.answer_type, where,
                                  mapping["answer"]),
           "answer_type": cfg.answer_type, "benchmark": cfg.benchmark, "task": cfg.benchmark}
    if "level" in mapping:
        out["level"] = _level(row[mapping["level"]])
    if "subject" in mapping:
        out["subject"] = row[mapping["subject"]]
    return out


def locate(cfg, split: str) -> tuple[str, str] | None:
    """Where the eval or train split comes from: ("path", file), ("mirror", file), ("hub", hub split), or
    None when the benchmark has no such split. A recipe that names a mirror that is absent and has no Hub
    id to fall back on is an error naming the path looked at."""
    if split == "eval":
        path, mirror, hub_split = cfg.path, cfg.mirror, cfg.split
    else:
        path, mirror, hub_split = cfg.train_path, cfg.train_mirror, cfg.train_split
    if path:
        return "path", str(path)
    if mirror:
        local = data_root() / mirror
        if local.is_file():
            return "mirror", str(local)
        if not (cfg.hf_id and hub_split):
            raise UserError(f"no mirror found at {local.resolve()} and no hf_id to load instead "
                            f"(set {DATA_ENV} to the directory that holds {mirror})")
    if cfg.hf_id and hub_split:
        return "hub", hub_split
    return None


def describe(cfg, located: tuple[str, str]) -> str:
    """What the manifest records: mirror:/abs/file, path:/abs/file or hub:<id>[/<config>]:<split>."""
    kind, where = located
    return f"hub:{hub_label(cfg.hf_id, cfg.hf_config, where)}" if kind == "hub" else \
        f"{kind}:{Path(where).resolve()}"


def load(cfg, split: str, skipped: list | None = None) -> list[dict]:
    """The normalised rows of the eval split or the train split, read from where `locate` says;
    [] for a benchmark without a train split. With cfg.skip_missing_gold, a row without a gold answer is
    left out and its id (or location) appended to `skipped`, instead of being an error."""
    located = locate(cfg, split)
    if located is None:
        return []
    kind, loc = located
    fields = None
    if kind == "hub":  # loc is the Hub split
        mirror = cfg.mirror if split == "eval" else cfg.train_mirror
        hint = (f"no mirror found at {(data_root() / mirror).resolve()} (set {DATA_ENV} to the directory "
                f"that holds {mirror})" if mirror else "set `path` to a local copy instead")
        rev = getattr(cfg, "hf_revision", "")
        source = f"hf:{hub_label(cfg.hf_id, cfg.hf_config, loc)}" + (f"@{rev}" if rev else "")
        rows = hub_rows(cfg.hf_id, cfg.hf_config, loc, hint, rev)
        fields = cfg.hub_fields or None
    else:  # loc is a local file
        source, rows = loc, read_rows(loc)
    out, seen = [], {}
    for index, (where, row) in enumerate(rows):
        try:
            r = {**normalise(cfg, where, row, index, split, fields), "source": source}
        except NoGold:
            if not cfg.skip_missing_gold:
                raise
            id_field = (fields if fields is not None else cfg.fields).get("id")
            if skipped is not None:
                skipped.append(str(row[id_field]) if id_field in row else where)
            continue
        if r["id"] in seen:
            raise UserError(f"{where}: duplicate id {r['id']!r} (first at {seen[r['id']]})")
        seen[r["id"]] = where
        out.append(r)
    return out
