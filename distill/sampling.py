"""How a stage samples and on what: the sampling settings and the backend settings, each declared once here and
embedded in every stage that samples (traces, eval, serve, chat). A stage sets its own defaults where its
purpose needs another (traces samples hotter than eval). In a recipe their keys stay flat in the stage's
section (`temperature: 0.8`, `backend: vllm`, `vllm: {...}`), as on the command line (`temperature=0.8`);
`distill <stage> --help` lists them as their own groups. `open_backend` is the one place a backend is built
from them (distill/backends: the sampling semantics on top are distill/generate.py's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill import backends
from distill import capabilities as caps
from distill.config import NonNeg, NonNegFloat, Pos, Prob, opt


@dataclass
class Sampling:
    temperature: NonNegFloat = opt(0.6, "sampling temperature (0: greedy)")
    top_p: Prob = opt(0.95, "nucleus sampling: keep the smallest set of tokens holding this probability")
    top_k: NonNeg = opt(0, "keep the k most likely tokens (0: off; QwQ's card recommends 20-40)")
    n: Pos = opt(1, "samples per problem (or per request)")
    seed: int = opt(0, "seeds every draw: the same settings and inputs sample the same tokens")
    max_thinking: Pos = opt(256, "thinking tokens at most; a thinking cut there is closed and its answer forced")
    max_answer_tokens: Pos = opt(32, "answer tokens after the thinking")
    answer_cue: str = opt("Final answer:", "written after a cut thinking to force the answer (budget forcing)")
    min_thinking: NonNeg = opt(0, "s1's extension: a thinking closed before this many tokens is told to `wait`")
    wait: str = opt("Wait", "the word that replaces an early </think> (s1)")
    max_waits: NonNeg = opt(2, "extensions per sample at most")


Kind = Literal["transformers", "vllm", "openai", "llama_cpp", "solver"]  # solver: traces only


@dataclass
class Engine:
    backend: Kind = opt("transformers", "what samples: transformers, vllm, openai (a server), llama_cpp (GGUF); "
                                        "traces: solver (the built-in tasks' reference solver)")
    vllm: dict = opt(dict, "backend vllm: passed to vllm.LLM (tensor_parallel_size, max_model_len, ...)")
    openai: dict = opt(dict, "backend openai: base_urls, model, api_key_env, api, concurrency, ...")
    llama_cpp: dict = opt(dict, "backend llama_cpp: passed to llama_cpp.Llama (n_ctx, n_gpu_layers, ...)")
    dtype: caps.Dtype = opt("auto", "transformers: the weights as loaded (auto: the checkpoint's own)")
    attn_implementation: caps.Attention = opt("sdpa", "transformers: attention kernel (distill/capabilities.py "
                                                      "decides what runs)")
    batch_size: Pos = opt(64, "transformers: prompts generated together")
    threads: NonNeg = opt(0, "torch threads (0: torch's default)")
    revision: str = opt("", "a Hub model pinned to a tag, branch or commit")
    trust_remote_code: bool = opt(False, "run code shipped with the checkpoint (logged, in the manifest)")
    allow_pickle: bool = opt(False, "load weights that are not safetensors")


def open_backend(engine: Engine, model: str, *, runs_dir: str, run: str, fallbacks, kind: str = "",
                 revision: str = "", extra: dict | None = None):
    """The backend `kind` (default: engine.backend) on `model`, with its settings section, the loading policy
    and the transformers settings; `extra`: more settings for it (a draft model)."""
    kind = kind or engine.backend
    settings = {"transformers": {}, "vllm": engine.vllm, "openai": engine.openai,
                "llama_cpp": engine.llama_cpp}[kind] | (extra or {})
    if kind in ("transformers", "vllm"):  # the loading policy (distill/backends/__init__.py)
        settings = settings | backends.recipe_policy(engine, revision or engine.revision)
    return backends.load(kind, model, settings=settings, fallbacks=fallbacks, runs_dir=runs_dir, run=run,
                         dtype=engine.dtype, attn=engine.attn_implementation, batch_size=engine.batch_size)


def group(cls, **defaults):
    """A stage's field holding a settings group with the stage's own defaults: `sampling: Sampling =
    group(Sampling, temperature=0.8)`."""
    return field(default_factory=lambda: cls(**defaults), metadata={"group": True})
