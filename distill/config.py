"""Recipes: a YAML file with one section per stage plus shared top-level keys, and `key=value` overrides.

    run: demo                 # shared: given to every stage whose config has the field
    sft: {lr: 3e-3, epochs: 2}
    eval: {budgets: [16, 64]}

`distill sft --config r.yaml lr=1e-3` builds `SFTConfig` from the shared keys, the `sft` section and the
override, in that order. A key that no config knows is an error naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from distill.artifacts import UserError


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key] = parsed
    return out


def load_recipe(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of stage sections, got {type(data).__name__}")
    return data


def build(cls, stage: str, recipe: dict, overrides: dict, source: str, sections: set[str],
          all_fields: set[str]):
    """Instantiate the stage's config dataclass, rejecting keys that do not exist."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in recipe.items():
        if key in sections:
            continue  # a stage's section, not a shared value
        if key not in all_fields:
            raise UserError(f"{source}: unknown key {key!r} (no stage has it)")
        if key in fields:
            values[key] = value
    section = recipe.get(stage) or {}
    if not isinstance(section, dict):
        raise UserError(f"{source}: section {stage!r} must be a mapping")
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(cls)
                if f.default_factory is not dataclasses.MISSING}
    for where, items in ((f"{source} [{stage}]", section), ("command line", overrides)):
        for key, value in items.items():
            head, dot, sub = key.partition(".")
            if dot and isinstance(values.get(head, defaults.get(head)), dict):
                # a dotted key sets one entry of a mapping field: vllm.tensor_parallel_size=4
                values[head] = {**values.get(head, defaults[head]), sub: value}
                continue
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise UserError(f"{where}: unknown key {key!r} for stage {stage!r} (known: {known})")
            values[key] = value
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise UserError(f"{source} [{stage}]: {e}") from None


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def check_positive(name: str, value) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")


def check_literals(obj) -> None:
    """Validate every field annotated with `Literal[...]` (called from each config's __post_init__)."""
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints.get(f.name)
        if typing.get_origin(hint) is typing.Literal:
            check_choice(f.name, getattr(obj, f.name), typing.get_args(hint))
