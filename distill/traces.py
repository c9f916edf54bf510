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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill import backends, tasks
from distill import capabilities as caps
from distill import generate as G
from distill.artifacts import Fallbacks, UserError, check_identity, finish, read_jsonl, stage_dir, write_jsonl
from distill.config import NonNeg, NonNegFloat, Pos, Prob, check_literals, check_positive, defaults


@dataclass
class TracesConfig:
    run: str = "demo"
    runs_dir: str = "runs"
    name: str = "teacher"
    backend: Literal["transformers", "vllm", "openai", "llama_cpp", "solver"] = "transformers"
    model: str = ""  # path or Hub id (openai: where the served model's tokenizer comes from)
    tokenizer: str = ""  # solver backend: counts tokens with this tokenizer (default runs/<run>/tokenizer)
    vllm: dict = field(default_factory=dict)  # backend=vllm: passed to vllm.LLM (tensor_parallel_size, ...)
    openai: dict = field(default_factory=dict)  # backend=openai: base_urls, model, api_key_env, api, ...
    llama_cpp: dict = field(default_factory=dict)  # backend=llama_cpp: passed to llama_cpp.Llama
    revision: str = ""  # a Hub model pinned to a tag, branch or commit
    trust_remote_code: bool = False  # run code shipped with the checkpoint (logged, in the manifest)
    allow_pickle: bool = False  # load weights that are not safetensors
    problems: str = ""  # default: runs/<run>/problems/train.jsonl
    limit: NonNeg = 0  # use only the first `limit` problems (0: all)
    n: Pos = 4
    temperature: NonNegFloat = 0.8
    top_p: Prob = 0.95
    top_k: NonNeg = 0  # 0: off (QwQ's card recommends 20-40)
    max_new_tokens: Pos = 512  # thinking tokens; a trace that has not closed </think> by then is truncated
    max_answer_tokens: Pos = 32
    batch_size: Pos = 64
    chunk: Pos = 256  # samples written (and fsynced) together
    seed: int = 0
    threads: NonNeg = 0  # torch threads (0: torch's default)
    dtype: caps.Dtype = "auto"  # transformers backend: the weights as loaded (auto: the checkpoint's own)
    attn_implementation: caps.Attention = "sdpa"  # transformers backend (distill/capabilities.py decides)

    def __post_init__(self):
        check_literals(self)
        check_positive("n", self.n)
        check_positive("max_new_tokens", self.max_new_tokens)
        check_positive("batch_size", self.batch_size)
        check_positive("chunk", self.chunk)
        if self.backend != "solver" and not self.model:
            raise ValueError(f"backend={self.backend} needs `model` (a path or Hub id)")
        if self.backend == "solver" and self.n != 1:
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
SHAPING = ("backend", "model", "revision", "temperature", "top_p", "top_k", "max_new_tokens", "max_answer_tokens", "seed",
           "openai", "vllm", "llama_cpp", "batch_size", "chunk", "dtype", "attn_implementation")


def _identity(cfg, src: Path) -> dict:
    from distill.artifacts import sha256

    ident = {k: getattr(cfg, k) for k in SHAPING} | {"problems_sha256": sha256(src)}
    ident["openai"] = {k: v for k, v in cfg.openai.items() if k not in ("base_urls", "concurrency", "timeout",
                                                                       "max_retries", "cache")}
    if cfg.model and Path(cfg.model).is_dir():
        ident["model_sha256"] = sha256(Path(cfg.model))
    return ident


def _check_resume(path: Path, ident: dict) -> None:
    """A log is resumed only by the settings that made it (one recorded before a setting joined SHAPING
    matches that setting's default)."""
    if path.exists():
        check_identity(path.parent / ".identity.json", ident, f"traces: {path}",
                       f"delete {path.parent} or give another name=", defaults=defaults(TracesConfig))


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
            "wall_s": round(seconds, 4), "teacher": "solver" if cfg.backend == "solver" else cfg.model}


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
    results = G.think_and_answer(backend, prompts, max_thinking=cfg.max_new_tokens,
                                 max_answer=cfg.max_answer_tokens, temperature=cfg.temperature,
                                 top_p=cfg.top_p, top_k=cfg.top_k, seed=seed, desc="traces")
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
    got = backend.chat([prompt_of(p) for p, _ in todo], cfg.max_new_tokens + cfg.max_answer_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seed, desc="traces")
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
    todo = [(p, k) for p in problems for k in range(cfg.n) if (p["id"], k) not in done]
    if not todo and (out / "manifest.json").is_file():
        print(f"traces: up to date: {len(done)} samples made with these settings in {log_path}; nothing to "
              f"do (to make them again, delete {out} or give another name=)")
        return out
    fallbacks = Fallbacks()
    chat = cfg.backend == "openai" and cfg.openai.get("api") == "chat"
    G.set_threads(cfg.threads)
    if cfg.backend == "solver":
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
        settings = {"transformers": {}, "vllm": cfg.vllm, "openai": cfg.openai, "llama_cpp": cfg.llama_cpp}[cfg.backend]
        if cfg.backend in ("transformers", "vllm"):  # the loading policy (distill/backends/__init__.py)
            settings = settings | backends.recipe_policy(cfg, cfg.revision)
        backend = backends.load(cfg.backend, cfg.model, settings=settings, fallbacks=fallbacks, runs_dir=cfg.runs_dir,
                                run=cfg.run, dtype=cfg.dtype, attn=cfg.attn_implementation, batch_size=cfg.batch_size)
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
            seed = cfg.seed + len(done) + c
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
