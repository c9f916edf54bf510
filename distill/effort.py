"""Reasoning effort (`low|medium|high`) as thinking budgets calibrated from the model's own eval curve.

Each effort is the smallest evaluated budget whose accuracy reaches a share of the model's best accuracy
over all budgets: low 75%, medium 90%, high 100%. Only measured points are used (no interpolation between
budgets), so every budget claims an accuracy that `eval` measured. The result is saved with the model as
`reasoning_effort.json`; `distill serve` and `distill chat` read it, and a model card can show it.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.artifacts import UserError, atomic_write_json

FILE = "reasoning_effort.json"
# low 0.75: on the demo (seeds 0-2) the curves climb ~0.8 -> ~0.9 -> ~0.95 -> best over B=64..256; at 0.80 a
# seed whose B=64 lands just under it and B=128 at 0.90 would merge low and medium
SHARES = {"low": 0.75, "medium": 0.90, "high": 1.0}


def shares_text() -> str:
    """"75% (low), 90% (medium) and 100% (high)": what the report and a model card say of SHARES."""
    parts = [f"{s:.0%} ({level})" for level, s in SHARES.items()]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def calibrate(results: str | Path, model: str, name: str = "") -> dict:
    """The efforts of one model of an eval results.json: the entry named `name`, else the one whose path is
    `model` (compared resolved, relative to the current directory as eval wrote them)."""
    results = Path(results)
    try:
        data = json.loads(results.read_text())
        entries = data["models"]
    except FileNotFoundError:
        raise UserError(f"{results}: eval results not found") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{results}: not an eval results.json (expected a JSON object with `models`)") \
            from None
    if name:
        found = [m for m in entries if m.get("name") == name]
    else:
        found = [m for m in entries if Path(m.get("path", "")).resolve() == Path(model).resolve()]
    if not found:
        have = ", ".join(f"{m.get('name')} ({m.get('path')})" for m in entries)
        raise UserError(f"{results}: no model {'named ' + repr(name) if name else 'with path ' + model} "
                        f"(has: {have}); set eval_name=")
    entry = found[0]
    if not entry.get("budgets"):
        raise UserError(f"{results}: model {entry.get('name')!r} has no budgets")
    return from_curve(entry["budgets"]) | {
        "source": {"results": str(results), "model": entry.get("name"), "path": entry.get("path")}}


def from_curve(budgets: list[dict]) -> dict:
    """The calibration of one eval curve (a results.json model's `budgets`: [{budget, accuracy}, ...])."""
    curve = sorted((int(b["budget"]), float(b["accuracy"])) for b in budgets)
    best = max(a for _, a in curve)
    # 1e-9: 0.97 * best computed in floating point must not miss a budget whose accuracy equals it
    efforts = {level: next(b for b, a in curve if a >= share * best - 1e-9)
               for level, share in SHARES.items()}
    accuracy = dict(curve)
    return {"efforts": efforts, "shares": SHARES, "best_accuracy": best,
            "accuracy": {level: accuracy[b] for level, b in efforts.items()},
            "curve": [{"budget": b, "accuracy": a} for b, a in curve]}


def save(model_dir: str | Path, calibration: dict) -> Path:
    path = Path(model_dir) / FILE
    atomic_write_json(path, calibration)
    return path


def load(model_dir: str | Path) -> dict | None:
    """The saved efforts ({low, medium, high} -> budget), or None when the model has no calibration."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    try:
        efforts = json.loads(path.read_text())["efforts"]
        if set(efforts) != set(SHARES) or not all(isinstance(b, int) and b > 0 for b in efforts.values()):
            raise ValueError
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: malformed (expected efforts low, medium, high -> budgets > 0); "
                        "recalibrate with results=<eval results.json>") from None
    return efforts
