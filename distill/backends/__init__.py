"""Sampling backends. Each adds one primitive, `generate(prompts, max_new, stop, ...)`: continue these
token-id prompts by up to `max_new` tokens, stopping at any id in `stop`, one sample per prompt. The
sampling semantics built on it (thinking phase, budget cut, forced answer, s1's Wait extension, `n`,
seeds) are written once, in distill/generate.py, and used by `traces` and `eval` whatever the backend.

    transformers  in-process `generate` (CPU or GPU)         distill/backends/transformers.py
    vllm          in-process offline `vllm.LLM`              distill/backends/vllm.py
    openai        any OpenAI-compatible server over HTTP     distill/backends/openai.py
    llama_cpp     a GGUF file through llama.cpp, one stream  distill/backends/llama_cpp.py

A backend object has `tok` (the Hugging Face tokenizer the prompts are built with), `name`, `params`
(parameter count, or None when unknown), `info` (what the manifest records), `generate(...)` and `close()`.
`generate(..., logprobs=True)` also returns each sample's mean token log-probability (`Gen.logprob`) where the
backend has it: transformers and vllm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

KINDS = ("transformers", "vllm", "openai", "llama_cpp")


@dataclass
class Gen:
    ids: list[int]  # generated tokens, ending with the stop token if one was hit
    stopped: bool  # a stop token ended it (else the token limit did)
    seconds: float  # its latency: wall time of the batch or request it ran in
    waits: int = 0  # times budget forcing replaced an early `</think>` with the wait word
    # with generate(..., logprobs=True): the mean log-probability of its tokens under the model's own
    # distribution (before temperature and top-p); None where the backend gives none (openai, llama_cpp)
    logprob: float | None = None


def mean_logprob(per_token: list[float] | None) -> float | None:
    """Gen.logprob from a sample's per-token log-probabilities (None when there are none)."""
    return sum(per_token) / len(per_token) if per_token else None


def load(kind: str, model: str, *, settings: dict, fallbacks, runs_dir: str = "runs", run: str = "",
         dtype: str = "auto", attn: str = "sdpa", batch_size: int = 64):
    """Open a backend on `model` (a path or Hub id; for `openai`, where the tokenizer comes from).
    `settings` is the recipe's section for that backend (`vllm:`, `openai:`, `llama_cpp:`), passed through;
    `batch_size` is the transformers backend's."""
    if kind not in KINDS:
        raise ValueError(f"backend={kind!r} is not one of {', '.join(KINDS)}")
    module = importlib.import_module(f"distill.backends.{kind}")
    return module.load(model, settings=settings, fallbacks=fallbacks, runs_dir=runs_dir, run=run,
                       dtype=dtype, attn=attn, batch_size=batch_size)


# Loading policy, the same for every model a recipe names: no code from a checkpoint runs unless the recipe
# says `trust_remote_code: true`; weights come only from safetensors unless `allow_pickle: true` (a pickle can
# run code when unpickled); a Hub model is pinned with `revision:` (a tag, branch or commit). The manifest
# records the policy and the commit resolved.
POLICY_KEYS = ("trust_remote_code", "allow_pickle", "revision")


def policy(settings: dict) -> dict:
    """from_pretrained keyword arguments for a recipe's loading settings (see POLICY_KEYS)."""
    import logging

    out = {"trust_remote_code": bool(settings.get("trust_remote_code", False)),
           "use_safetensors": not settings.get("allow_pickle", False)}
    if settings.get("revision"):
        out["revision"] = str(settings["revision"])
    if out["trust_remote_code"]:
        logging.getLogger("distill").warning("trust_remote_code is on: the checkpoint's own Python code runs here")
    return out


def recipe_policy(cfg, revision: str = "") -> dict:
    """A stage config's loading settings (its trust_remote_code and allow_pickle, and a model's revision)."""
    return {"trust_remote_code": cfg.trust_remote_code, "allow_pickle": cfg.allow_pickle, "revision": revision}


def tokenizer_kwargs(kw: dict) -> dict:
    """The part of `policy(...)` a tokenizer (and vLLM's engine) takes: trust_remote_code and the revision."""
    return {k: v for k, v in kw.items() if k != "use_safetensors"}


def loaded(model, kw: dict) -> dict:
    """What the manifest records about how a model was loaded: the policy and the Hub commit it resolved to."""
    return {"trust_remote_code": kw["trust_remote_code"], "safetensors_only": kw["use_safetensors"],
            "revision": kw.get("revision"), "commit": getattr(model.config, "_commit_hash", None)}


def check_local_dir(path: str, what: str = "model") -> None:
    """A model given as a local path (absolute, ./…, runs/…, or an existing file) must be a folder; anything
    else is a Hub id and is left to from_pretrained."""
    from pathlib import Path

    from distill.artifacts import UserError

    p = Path(path)
    if (p.is_absolute() or path.startswith((".", "runs/")) or p.exists()) and not p.is_dir():
        raise UserError(f"{what} not found: {path}")


def count_params(path: str) -> int | None:
    """Parameters stored in a local checkpoint's safetensors files (read from their headers, nothing
    loaded); None when the model is not a local folder of safetensors (a Hub id, a remote server)."""
    from pathlib import Path

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total
