"""Recipes: a YAML file with one section per stage plus shared top-level keys, and `key=value` overrides.

    run: demo                 # shared: given to every stage whose config has the field
    sft: {lr: 3e-3, epochs: 2}
    eval: {budgets: [16, 64]}

`distill sft --config r.yaml lr=1e-3` builds `SFTConfig` from the shared keys, the `sft` section and the
override, in that order. A key that no config knows is an error naming the file and the key. `{run}` in any
text value is the run's name, so one recipe serves every run: `data: runs/{run}/filter/teacher/train.jsonl`
with `run=demo-seed1` reads that run's data (`make demo SEED=1`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from distill.artifacts import UserError

# Field types with bounds, checked by pydantic when a recipe becomes a stage's config (`build`): a config
# dataclass annotates a field `n: Pos = 4`, and `n=0` or `n=2.5` is a one-line error naming the key.
Pos = Annotated[int, Field(gt=0)]
NonNeg = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Prob = Annotated[float, Field(gt=0, le=1)]  # top_p
Share = Annotated[float, Field(ge=0, le=1)]
Port = Annotated[int, Field(ge=0, le=65535)]


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
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of stage sections, got {type(data).__name__}")
    return data


def opt(default, help: str = ""):
    """A config field with its one-line help, the one source of `distill <stage> --help` and docs/config.md.
    A callable default (dict, list, a lambda) makes a fresh value for every config."""
    if callable(default):
        return dataclasses.field(default_factory=default, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def groups(cls) -> dict[str, object]:
    """The settings groups a stage embeds (distill/sampling.py), by field name, with the stage's defaults."""
    return {f.name: f.default_factory() for f in dataclasses.fields(cls) if f.metadata.get("group")}


def keys(cls) -> dict[str, str]:
    """Every key a recipe section or the command line may give the stage, and the group it belongs to ("" for
    the stage's own fields): a group's keys are given flat (`temperature: 0.8`)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            out |= {g.name: f.name for g in dataclasses.fields(f.default_factory())}
        else:
            out[f.name] = ""
    return out


def build(cls, stage: str, recipe: dict, overrides: dict, source: str, sections: set[str],
          all_fields: set[str]):
    """Instantiate the stage's config dataclass, rejecting keys that do not exist."""
    known = keys(cls)
    values: dict = {}
    grouped = {g: dataclasses.asdict(d) for g, d in groups(cls).items()}  # the stage's defaults, then the recipe's
    factories = {f.name: f.default_factory() for f in dataclasses.fields(cls)
                 if f.default_factory is not dataclasses.MISSING and not f.metadata.get("group")}

    hints = typing.get_type_hints(cls)
    mappings = {f.name for f in dataclasses.fields(cls)  # settings that are a mapping of their own, unset
                if any(dataclasses.is_dataclass(a) for a in typing.get_args(hints[f.name]))}

    def current(key):
        g = known.get(key, "")
        return grouped[g].get(key) if g else values.get(key, factories.get(key))

    def put(key, value):
        g = known[key]
        if g:
            grouped[g][key] = value
        else:
            values[key] = value

    for section, key in getattr(cls, "SECTIONS", {}).items():  # another section the stage reads whole
        if isinstance(recipe.get(section), dict):
            values[key] = dict(recipe[section])
    for key, value in recipe.items():
        if key in sections:
            continue  # a stage's section, not a shared value
        if key not in all_fields:
            raise UserError(f"{source}: unknown key {key!r} (no stage has it)")
        if key in known:
            put(key, value)
    section = recipe.get(stage) or {}
    if not isinstance(section, dict):
        raise UserError(f"{source}: section {stage!r} must be a mapping")
    for where, items in ((f"{source} [{stage}]", section), ("command line", overrides)):
        for key, value in items.items():
            head, dot, sub = key.partition(".")
            now = {} if head in mappings and current(head) is None else current(head)
            if dot and head in known and isinstance(now, dict):
                # a dotted key sets one entry of a mapping field: vllm.tensor_parallel_size=4,
                # until.sampling.max_thinking=64
                put(head, _set(now, sub.split("."), value))
                continue
            if key not in known:
                moved = getattr(cls, "RENAMED", {}).get(key)
                if moved:
                    raise UserError(f"{where}: {key!r} is now called {moved!r}: rename it")
                raise UserError(f"{where}: unknown key {key!r} for stage {stage!r} (known: "
                                f"{', '.join(sorted(known))})")
            put(key, value)
    values |= grouped
    run = str(values.get("run", recipe.get("run", getattr(cls, "run", ""))))
    try:
        return _adapter(cls).validate_python(_with_run(values, run))
    except ValidationError as e:
        raise UserError(_one_line(e, source, stage, section, overrides, known)) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{_where(str(e).split()[0].split('=')[0], source, stage, section, overrides)}: {e}") from None


def _set(mapping: dict, path: list[str], value) -> dict:
    """A copy of `mapping` with the entry at `path` (nested keys) set to `value`."""
    inner = mapping.get(path[0])
    return {**mapping, path[0]: value if len(path) == 1 else _set(inner if isinstance(inner, dict) else {},
                                                                    path[1:], value)}


def make(cls, **values):
    """A stage's config from Python, as a recipe section would give it: a settings group's keys flat
    (`make(TracesConfig, backend="solver", n=1)`) over the stage's own defaults, validated like a recipe."""
    return build(cls, "", {}, values, "arguments", set(), set())


def defaults(cls) -> dict:
    """Each field's default value (a default_factory called), for a record made before the field existed."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


def _with_run(value, run: str):
    """`{run}` replaced by the run's name in every text value, also inside lists and mappings."""
    if isinstance(value, str):
        return value.replace("{run}", run)
    if isinstance(value, list):
        return [_with_run(v, run) for v in value]
    if isinstance(value, dict):
        return {k: _with_run(v, run) for k, v in value.items()}
    return value


@functools.cache
def _adapter(cls) -> TypeAdapter:
    """pydantic's validator for a config dataclass: types and bounds from its annotations, then its
    __post_init__ (cross-field checks). Numbers given where text is expected (`run=2024`) become text."""
    if "__pydantic_config__" not in cls.__dict__:
        cls.__pydantic_config__ = ConfigDict(coerce_numbers_to_str=True)
    return TypeAdapter(cls)


def _where(key: str, source: str, stage: str, section: dict, overrides: dict) -> str:
    if key in overrides or any(k.startswith(key + ".") for k in overrides):
        return "command line"
    return f"{source} [{stage}]"  # the stage's section, or a shared key the stage took


def _one_line(e: ValidationError, source: str, stage: str, section: dict, overrides: dict,
              known: dict | None = None) -> str:
    """The first error as `<where>: <key>: <problem> (got <value>)`; where = the command line, the file's
    stage section or the file's shared keys, whichever gave the key (a group's key as it was given: flat)."""
    err = e.errors()[0]
    loc = err["loc"]
    if len(loc) > 1 and known and loc[0] in set(known.values()) - {""}:
        loc = loc[1:]
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # raised by __post_init__: its message starts with the key
        return f"{_where(msg.split()[0].split('=')[0], source, stage, section, overrides)}: {msg}"
    key = str(loc[0])
    path = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    where = _where(key, source, stage, section, overrides)
    got = repr(err["input"])
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{where}: {path}: {msg} (got {got})" if err["type"] != "missing" else f"{where}: {path}: {msg}"


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


# ---------------------------------------------------------------- the reference: --help and docs/config.md
# help for keys many stages share, where a field gives none of its own
COMMON_HELP = {"run": "the run: every stage reads and writes under runs_dir/run/", "runs_dir": "where runs live",
               "name": "this output's name under its stage's folder", "threads": "torch threads (0: torch's default)",
               "seed": "seeds every random choice: the same settings and inputs give the same outputs"}
GROUP_TITLES = {"sampling": "sampling (distill/sampling.py; given flat: temperature=0.8)",
                "engine": "backend (distill/sampling.py; given flat: backend=vllm, vllm.max_model_len=4096)"}


def _type_name(hint) -> str:
    """A field's type as a user reads it: `int > 0`, `float in (0, 1]`, `sdpa|eager|...`, `list[str]`."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        base, bounds = _type_name(args[0]), []
        for meta in args[1:]:
            for m in getattr(meta, "metadata", []):
                for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(m, attr, None) is not None:
                        bounds.append(f"{sign} {getattr(m, attr)}")
        return f"{base} {' and '.join(bounds)}".strip()
    if origin is typing.Literal:
        return "|".join(str(a) if a != "" else "''" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]" if args else origin.__name__
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def describe(cls) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """A stage config's keys as (group title, [(key, type, default, help)]): its own settings first, then each
    settings group it embeds (with the stage's defaults)."""
    import typing

    def rows(klass, instance) -> list[tuple[str, str, str, str]]:
        hints = typing.get_type_hints(klass, include_extras=True)
        out = []
        for f in dataclasses.fields(klass):
            if f.metadata.get("group"):
                continue
            value = getattr(instance, f.name) if instance is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            out.append((f.name, _type_name(hints[f.name]), repr(value),
                        f.metadata.get("help") or COMMON_HELP.get(f.name, "")))
        return out

    out = [("settings", rows(cls, None))]
    for name, default in groups(cls).items():
        out.append((GROUP_TITLES.get(name, name), rows(type(default), default)))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # a setting that is a mapping of its own (sft's until:): its keys
        sub = next((a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)), None)
        if sub is not None and not f.metadata.get("group"):
            out.append((f"{f.name} (a mapping: {f.name}={{key: value, ...}})",
                        [(f"{f.name}.{k}", *rest) for k, *rest in rows(sub, None)]))
    return out
