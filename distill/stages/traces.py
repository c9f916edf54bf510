"""Stage `traces`: a teacher writes `n` chain-of-thought samples per problem.

Backends (distill/backends/): `transformers` (batched, KV cache, CPU or GPU), `vllm` (offline vLLM, from
.venv-vllm), `openai` (any OpenAI-compatible server; `api: chat` for chat-only servers), all through the
same sampling code (distill/generate.py); and `solver` (the built-in tasks' reference solver: the cold start
the demo's teacher is trained on, as R1 had).

One record per sample in runs/<run>/traces/<name>/traces.jsonl. The file is an append-only log, flushed
and fsynced after every chunk, so a run that dies (even by `kill -9`) resumes where it stopped: finished
(problem, sample) pairs are skipped and a torn last line is dropped. At the end the file is rewritten in
(problem, sample) order, atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from distill import generate as G
from distill import tasks
from distill.artifacts import (
    Fallbacks,
    UserError,
    check_identity,
    finish,
    flat,
    read_jsonl,
    stage_dir,
    write_jsonl,
)
from distill.config import NonNeg, Pos, opt
from distill.sampling import Engine, Sampling, group, open_backend


@dataclass
class TracesConfig:
    run: str = opt("demo", "the run: outputs go to runs_dir/run/traces/name/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("teacher", "this teacher's traces: runs/<run>/traces/<name>/")
    model: str = opt(
        "", "path or Hub id of the teacher (openai: where the served model's tokenizer comes from)")
    tokenizer: str = opt(
        "", "backend solver: counts tokens with this tokenizer (default runs/<run>/tokenizer)")
    problems: str = opt("", "problems JSONL (default runs/<run>/problems/train.jsonl)")
    limit: NonNeg = opt(0, "use only the first `limit` problems (0: all)")
    chunk: Pos = opt(256, "samples written (and fsynced) together; a resumed run restarts at a chunk")
    sampling: Sampling = group(Sampling, temperature=0.8, n=4, max_thinking=512)
    engine: Engine = group(Engine)
    RENAMED: ClassVar[dict] = {"max_new_tokens": "max_thinking"}

    def __post_init__(self):
        if self.engine.backend != "solver" and not self.model:
            raise ValueError(f"backend={self.engine.backend} needs `model` (a path or Hub id)")
        if self.engine.backend == "solver" and self.sampling.n != 1:
            raise ValueError("the solver is deterministic: use n=1")


def _resume(path: Path) -> set[tuple[str, int]]:
    """Finished (problem, sample) keys; drops a torn last line left by a killed run."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return {(r["problem_id"], r["sample"]) for r in read_jsonl(path)}


# what a sample depends on: a log made with other values of these is not resumed (n and limit may grow). The
# seeds follow the batches and chunks (a batch's seed is the chunk's plus its index), and the dtype, the
# attention kernel and the engine's settings change the logits.
SHAPING = ("backend", "model", "revision", "temperature", "top_p", "top_k", "max_thinking", "max_answer_tokens",
           "seed", "answer_cue", "min_thinking", "wait", "max_waits", "openai", "vllm", "llama_cpp", "batch_size",
           "chunk", "dtype", "attn_implementation")


def _identity(cfg, src: Path) -> dict:
    from distill.artifacts import flat, sha256

    values = flat(cfg)
    ident = {k: values[k] for k in SHAPING} | {"problems_sha256": sha256(src)}
    ident["max_new_tokens"] = ident.pop("max_thinking")  # its name before the rename: older logs still resume
    ident["openai"] = {k: v for k, v in cfg.engine.openai.items() if k not in ("base_urls", "concurrency", "timeout",
                                                                              "max_retries", "cache")}
    if cfg.model and Path(cfg.model).is_dir():
        ident["model_sha256"] = sha256(Path(cfg.model))
    return ident


def _check_resume(path: Path, ident: dict) -> None:
    """A log is resumed only by the settings that made it (one recorded before a setting joined SHAPING
    matches that setting's default)."""
    if path.exists():
        check_identity(path.parent / ".identity.json", ident, f"traces: {path}",
                       f"delete {path.parent} or give another name=", defaults=flat(TracesConfig(model="-")))


def _append(path: Path, rows: list[dict], ident: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    if ident is not None and not path.exists():  # a new log: record what makes its samples (atomically)
        from distill.artifacts import atomic_write_json

        atomic_write_json(path.parent / ".identity.json", ident)
    with path.open("a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _record(cfg, p, k, thinking, answer, finish_reason, n_think, n_answer, seconds) -> dict:
    return {"problem_id": p["id"], "sample": k, "prompt": prompt_of(p), "thinking": thinking, "answer": answer,
            "finish_reason": finish_reason, "thinking_tokens": n_think, "answer_tokens": n_answer,
            "wall_s": round(seconds, 4), "teacher": "solver" if cfg.engine.backend == "solver" else cfg.model}


def prompt_of(problem: dict) -> str:
    """What the teacher is asked: a benchmark's rendered `prompt` (its template, e.g. the \\boxed{}
    instruction) where there is one, else the problem text (as `eval` asks it)."""
    return problem.get("prompt") or problem["problem"]


def _solver_chunk(cfg, tok, todo) -> list[dict]:
    rows = []
    for p, k in todo:
        thinking, answer = tasks.reference_solution(p)
        n_t, n_a = (len(tok(x, add_special_tokens=False).input_ids) for x in (thinking, answer))
        rows.append(_record(cfg, p, k, thinking, answer, "stop", n_t, n_a, 0.0))
    return rows


def _model_chunk(cfg, backend, todo, seed) -> list[dict]:
    tok = backend.tok
    prompts = [G.think_prompt(tok, prompt_of(p)) for p, _ in todo]
    started = time.perf_counter()
    sm = cfg.sampling
    results = G.think_and_answer(backend, prompts, max_thinking=sm.max_thinking, max_answer=sm.max_answer_tokens,
                                 temperature=sm.temperature, top_p=sm.top_p, top_k=sm.top_k, seed=seed,
                                 desc="traces", min_thinking=sm.min_thinking, wait=sm.wait, max_waits=sm.max_waits)
    per_sample = (time.perf_counter() - started) / len(todo)  # the chunk's wall time, shared out
    rows = []
    for (p, k), (think, ans) in zip(todo, results):
        closed = ans is not None
        t_ids = think.ids[:-1] if think.stopped else think.ids
        reason = "stop" if closed and ans.stopped else "length"
        answer_text = G.decode(tok, ans.ids) if closed else ""
        rows.append(_record(cfg, p, k, G.decode(tok, t_ids), answer_text, reason, len(t_ids),
                            len(ans.ids) if closed else 0, per_sample))
    return rows


def _chat_chunk(cfg, backend, todo, seed) -> list[dict]:
    """A chat-only server: the thinking comes back apart from the answer; a reply cut by max_tokens is
    truncated (no forced answer: a chat endpoint cannot continue a cut thinking)."""
    tok = backend.tok
    started = time.perf_counter()
    sm = cfg.sampling
    got = backend.chat([prompt_of(p) for p, _ in todo], sm.max_thinking + sm.max_answer_tokens,
                       temperature=sm.temperature, top_p=sm.top_p, top_k=sm.top_k, seed=seed, desc="traces")
    per_sample = (time.perf_counter() - started) / len(todo)
    rows = []
    for (p, k), g in zip(todo, got):
        n_t, n_a = (len(tok(x, add_special_tokens=False).input_ids) for x in (g["thinking"], g["answer"]))
        rows.append(_record(cfg, p, k, g["thinking"], g["answer"], g["finish_reason"], n_t, n_a, per_sample))
    return rows


def run(cfg: TracesConfig) -> Path:
    from tqdm.auto import tqdm

    started = time.time()
    src = Path(cfg.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
    problems = read_jsonl(src, required=("id", "problem"))
    problems = problems[:cfg.limit] if cfg.limit else problems
    if not problems:
        raise UserError(f"{src}: no problems")
    out = stage_dir(cfg.runs_dir, cfg.run, "traces", cfg.name)
    log_path = out / "traces.jsonl"
    ident = _identity(cfg, src)
    _check_resume(log_path, ident)  # before any model is loaded
    done = _resume(log_path)
    todo = [(p, k) for p in problems for k in range(cfg.sampling.n) if (p["id"], k) not in done]
    if not todo and (out / "manifest.json").is_file():
        print(f"traces: up to date: {len(done)} samples made with these settings in {log_path}; nothing to "
              f"do (to make them again, delete {out} or give another name=)")
        return out
    fallbacks = Fallbacks()
    chat = cfg.engine.backend == "openai" and cfg.engine.openai.get("api") == "chat"
    G.set_threads(cfg.engine.threads)
    if cfg.engine.backend == "solver":
        from transformers import AutoTokenizer

        unknown = [p["id"] for p in problems if p.get("task") not in tasks.FAMILIES]
        if unknown:
            raise UserError(f"{src}: the solver backend only knows built-in tasks; e.g. {unknown[0]!r} is not")
        tok_dir = Path(cfg.tokenizer or stage_dir(cfg.runs_dir, cfg.run, "tokenizer"))
        if not (tok_dir / "tokenizer_config.json").is_file():
            raise UserError(f"tokenizer not found at {tok_dir} (run `distill tokenizer` first, or give tokenizer=)")
        backend, tok = None, AutoTokenizer.from_pretrained(tok_dir)
    else:
        if not chat:
            G.check_tokenizer(cfg.model)  # before the weights load
        backend = open_backend(cfg.engine, cfg.model, runs_dir=cfg.runs_dir, run=cfg.run, fallbacks=fallbacks)
        tok = backend.tok
        if not chat:
            G.stop_tokens(tok)  # a tokenizer without </think> is refused before anything is generated

    print(f"traces: {len(done)} samples already done, {len(todo)} to generate -> {log_path}")
    if todo:  # the log is about to grow: until it is finished again, no manifest says it is
        (out / "manifest.json").unlink(missing_ok=True)
    gen_started = time.time()
    with tqdm(total=len(todo), desc="traces", unit="sample") as bar:
        for c in range(0, len(todo), cfg.chunk):
            chunk = todo[c:c + cfg.chunk]
            # the seed depends on how many samples were done before, so a resumed run stays reproducible
            seed = cfg.sampling.seed + len(done) + c
            rows = (_solver_chunk(cfg, tok, chunk) if backend is None else
                    _chat_chunk(cfg, backend, chunk, seed) if chat else _model_chunk(cfg, backend, chunk, seed))
            _append(log_path, rows, ident)
            bar.update(len(chunk))
    gen_seconds = time.time() - gen_started

    rows = read_jsonl(log_path)
    rank = {p["id"]: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: (rank.get(r["problem_id"], len(rank)), r["sample"]))
    write_jsonl(log_path, rows)
    counts = {"problems": len(problems), "samples": len(rows), "generated_now": len(todo),
              "resumed_from": len(done),
              "finish_reasons": {r: sum(x["finish_reason"] == r for x in rows) for r in ("stop", "length")},
              "thinking_tokens_mean": round(sum(r["thinking_tokens"] for r in rows) / max(len(rows), 1), 2)}
    inputs = {"problems": src} | ({"model": Path(cfg.model)} if cfg.model and Path(cfg.model).is_dir() else {})
    if backend is not None:
        backend.close()
    finish(out, "traces", cfg, inputs, counts, started, fallbacks=fallbacks.items,
           timings={"generate_s": round(gen_seconds, 3)},
           backend=backend.info if backend is not None else {"backend": "solver"})
    print(f"traces: {len(rows)} samples ({counts['finish_reasons']}) in {gen_seconds:.1f}s -> {out}")
    return out
