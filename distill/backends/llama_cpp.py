"""Backend `llama_cpp`: a GGUF file through llama.cpp (llama-cpp-python), in-process, one stream.

The model is a folder `distill quantize` wrote (model.gguf beside the transformers tokenizer files) or a .gguf
file with those files in its folder. Prompts are built with the transformers tokenizer, as for every backend;
quantize's round-trip check has shown llama.cpp's token ids equal to it on that model. Prompts run one at a
time through `Llama.generate` (prefix reuse: a forced answer continues where its thinking's KV cache left
off), each with its own seed (seed + position). Single-stream on CPU is what llama.cpp is for; a sample's
latency is its own.

Settings (the recipe's `llama_cpp:` section) pass through to `llama_cpp.Llama`: n_ctx, n_gpu_layers, n_batch,
...; n_threads and n_threads_batch default to 1 (docs/cpu.md: on these VMs 2 OpenMP
threads stall at random and 1 thread is faster; n_threads_batch's own default is every core).
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.artifacts import UserError
from distill.backends import Gen
from distill.backends.transformers import prepare_tokenizer


class LlamaCppBackend:
    def __init__(self, llm, tok, path: Path, settings: dict):
        import llama_cpp

        self.llm, self.tok = llm, tok
        self.name = "llama_cpp"
        self.params = int(llama_cpp.llama_model_n_params(llm.model))
        self.info = {"backend": "llama_cpp", "llama_cpp": llama_cpp.__version__, "gguf": str(path),
                     "file_mb": round(path.stat().st_size / 1e6, 3), "settings": settings}

    def generate(self, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
                 top_p: float, seed: int, desc: str = "generate", top_k: int = 0, logprobs: bool = False) -> list[Gen]:
        # `logprobs`: this backend returns none (Gen.logprob stays None)
        from tqdm.auto import tqdm

        stop_set, out = set(stop), []
        for i, prompt in enumerate(tqdm(prompts, desc=desc, unit="sample", leave=False, disable=len(prompts) < 2)):
            self.llm.set_seed(seed + i)
            started = time.perf_counter()
            ids: list[int] = []
            if max_new > 0:
                # llama.cpp's sampler chain: top_k 0 = off, temp 0 = greedy; min_p and penalties off, as elsewhere
                for t in self.llm.generate(prompt, top_k=top_k, top_p=top_p if temperature > 0 else 1.0,
                                           min_p=0.0, typical_p=1.0, temp=temperature, repeat_penalty=1.0,
                                           reset=True):
                    ids.append(int(t))
                    if t in stop_set or len(ids) >= max_new:
                        break
            out.append(Gen(ids, bool(ids) and ids[-1] in stop_set, time.perf_counter() - started))
        return out

    def close(self) -> None:
        self.llm.close()


def load(path: str, *, settings: dict, fallbacks, **_):
    from transformers import AutoTokenizer

    try:
        import llama_cpp
    except ImportError:
        raise UserError("backend llama_cpp needs llama-cpp-python: run `make install-local`") from None
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) != 1:
            raise UserError(f"backend llama_cpp: {path} must hold exactly one .gguf file, found {len(found)}")
        p = found[0]
    elif not (p.is_file() and p.suffix == ".gguf"):
        raise UserError(f"backend llama_cpp: {path} is neither a .gguf file nor a folder with one")
    try:
        tok = AutoTokenizer.from_pretrained(str(settings.get("tokenizer") or p.parent))
    except (OSError, ValueError) as e:
        raise UserError(f"backend llama_cpp: no transformers tokenizer beside {p} (give llama_cpp.tokenizer=): "
                        f"{str(e).splitlines()[0]}") from None
    # n_ctx 0: the model's own training context (llama.cpp warns when asked for more)
    kwargs = {"n_ctx": 0, "n_threads": 1, "n_threads_batch": 1, "verbose": False,
              **{k: v for k, v in settings.items() if k != "tokenizer"}}
    try:
        llm = llama_cpp.Llama(str(p), **kwargs)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"backend llama_cpp: cannot load {p}: {e}") from None
    return LlamaCppBackend(llm, prepare_tokenizer(tok), p, settings)
