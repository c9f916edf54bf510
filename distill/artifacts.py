"""Artifacts on disk: atomic writes, JSONL with line-numbered errors, manifests, stage directories."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger("distill")


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2, no traceback."""


def stage_dir(runs_dir: str, run: str, stage: str, tag: str = "") -> Path:
    return Path(runs_dir) / run / stage / tag if tag else Path(runs_dir) / run / stage


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


MAX_LINE_MB = float(os.environ.get("DISTILL_MAX_LINE_MB", "16"))  # a longer JSONL row is refused, not parsed


def jsonl_lines(path: Path):
    """(line number, text) of a JSONL file's non-blank lines. A line that is not UTF-8, or longer than
    MAX_LINE_MB, is a UserError naming file and line (never a traceback, never a 50 MB string in memory twice)."""
    limit = int(MAX_LINE_MB * 1e6)
    with Path(path).open("rb") as f:
        i = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            i += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise UserError(f"{path}:{i}: line longer than {MAX_LINE_MB:g} MB (DISTILL_MAX_LINE_MB)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{i}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if line.strip():
                yield i, line


def jsonl_rows(path: Path):
    """(line number, object) of a JSONL file; a line that is not a JSON object is a UserError naming it."""
    for i, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a malformed line or a missing field is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    rows = []
    for i, row in jsonl_rows(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def sha256(path: Path) -> str:
    """Hash of a file, or of every file under a directory (names and bytes)."""
    path, h = Path(path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if any(part.startswith("checkpoint") for part in p.parts) or (
                path.is_dir() and (p.name == "manifest.json" or p.name.startswith("."))):
            continue  # resume state, and a stage's record of when and how fast: not what the artifact is
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    from distill import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@contextlib.contextmanager
def staging(out: Path):
    """Write a stage's output into a hidden sibling directory; move it into place only on success,
    so a failed or interrupted stage never leaves a half-written artifact behind."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def flat(cfg) -> dict:
    """A stage's config as a recipe section gives it: its settings groups' keys inline (distill/sampling.py)."""
    out, values = {}, dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        value = values[f.name]
        if f.metadata.get("group"):
            out |= value
        else:
            out[f.name] = value
    return out


def finish(out: Path, stage: str, cfg, inputs: dict[str, Path], counts: dict, started: float,
           **extra) -> None:
    """Write the resolved config.yaml and manifest.json of a stage directory."""
    out = Path(out)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(flat(cfg), sort_keys=False))
    manifest = {
        "stage": stage,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {name: {"path": str(p), "sha256": sha256(p)} for name, p in inputs.items()},
        "counts": counts,
        "timings": {"total_s": round(time.time() - started, 3), **extra.pop("timings", {})},
        **extra,
    }
    atomic_write_json(out / "manifest.json", manifest)


def check_identity(saved: Path, ident: dict, what: str, fresh: str, defaults: dict | None = None) -> bool:
    """Is the work recorded beside `saved` (an .identity.json) made with these settings and inputs? True if
    so, False if there is no record; otherwise a UserError saying what differs and how to start afresh: work
    made another way is never resumed or kept silently (the stage's config.yaml would lie about it). A setting
    added since the record was written (absent from it) matches when it has its default (`defaults`)."""
    if not saved.is_file():
        return False
    old = json.loads(saved.read_text())
    defaults = defaults or {}
    differ = [k for k in sorted(set(old) | set(ident)) if old.get(k) != ident.get(k)
              and not (k not in old and k in defaults and ident.get(k) == defaults[k])]
    if not differ:
        return True
    diff = ", ".join(f"{k} changed" if k.endswith("sha256") else f"{k}: {old.get(k)!r} -> {ident.get(k)!r}"
                     for k in differ)
    raise UserError(f"{what} was made with other settings ({diff}); to start afresh, {fresh}")


@contextlib.contextmanager
def stage_lock(cfg, stage: str):
    """One writer per stage of a run: a second process writing runs/<run>/<stage>[/<name>] stops at once with
    one line naming the holder. An OS file lock (filelock, flock on Unix): the kernel releases it when its
    process dies, even by kill -9, so a stale lock is simply taken. The lock file lives in the temp folder,
    keyed by the stage folder's absolute path, so a run that fails on bad input leaves nothing under runs/."""
    import filelock

    name = getattr(cfg, "name", "")
    where = stage_dir(cfg.runs_dir, cfg.run, stage, name if stage not in ("eval", "report") else "")
    key = hashlib.sha256(str(where.resolve()).encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / "distill-locks"
    folder.mkdir(exist_ok=True)
    lock, holder = filelock.FileLock(folder / f"{key}.lock"), folder / f"{key}.holder"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        who = json.loads(holder.read_text()) if holder.is_file() else {}
        raise UserError(f"{where} is being written by another process (pid {who.get('pid', '?')} on "
                        f"{who.get('host', '?')} since {who.get('since', '?')}: {who.get('command', '?')}); wait "
                        "for it to finish, or give this run another run=") from None
    try:
        atomic_write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "path": str(where),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)})
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


class Fallbacks:
    """Fallbacks taken in a stage (e.g. flash-attn -> SDPA): each logged once and kept for the manifest."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, wanted: str, used: str, reason: str) -> None:
        if any(f["wanted"] == wanted for f in self.items):
            return
        log.warning("fallback: %s -> %s (%s)", wanted, used, reason)
        self.items.append({"wanted": wanted, "used": used, "reason": reason})
