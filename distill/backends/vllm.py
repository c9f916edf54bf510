"""Backend `vllm`: offline `vllm.LLM` in this process (its engine and workers in processes it spawns).

vLLM pins its own torch and transformers, so it runs from its own venv: `make install-vllm` builds
`.venv-vllm`, and `.venv-vllm/bin/distill traces|eval ... backend=vllm` uses it. Prompts go in as token ids
(exactly the transformers backend's), one request per prompt with its own seed; prefix caching is on (eval's
forced answers and a problem's `n` samples share long prefixes). Everything under the recipe's `vllm:`
passes through to `vllm.LLM` (tensor_parallel_size, data_parallel_size, gpu_memory_utilization,
max_model_len, dtype, ...). Without a GPU the defaults are the ones measured on CPU (docs/cpu.md): float32 (bf16 is ~4x slower without AVX512-BF16), eager mode, OpenMP threads bound to every
core, a bounded KV cache, and the compile cache under the run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from distill.artifacts import UserError
from distill.backends import POLICY_KEYS, Gen, check_local_dir, count_params, mean_logprob, policy, tokenizer_kwargs
from distill.backends.transformers import prepare_tokenizer

# vLLM's CPU attention kernels take only these head sizes (get_supported_head_sizes of its CPU backend)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class VllmBackend:
    def __init__(self, llm, tok, path: str, settings: dict):
        self.llm, self.tok = llm, tok
        self.name = "vllm"
        self.params = count_params(path)
        self.info = {"backend": "vllm", "vllm": __import__("vllm").__version__, "settings": settings}

    def generate(self, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
                 top_p: float, seed: int, desc: str = "generate", top_k: int = 0, logprobs: bool = False) -> list[Gen]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        # one SamplingParams per prompt: each sample has its own seed, so a sample's tokens do not depend on
        # what else is in the batch (seed + position, as the transformers backend seeds per batch)
        params = [SamplingParams(max_tokens=max_new, stop_token_ids=list(stop), temperature=temperature,
                                 top_p=top_p if temperature > 0 else 1.0, top_k=top_k if top_k > 0 else -1,
                                 seed=seed + i, logprobs=0 if logprobs else None,  # 0: the chosen token's only
                                 skip_special_tokens=False, detokenize=False) for i in range(len(prompts))]
        started = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=len(prompts) > 1)
        seconds = time.perf_counter() - started  # one engine run for all: each sample waited for it
        gens = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            # vLLM's logprobs are the model's own (logprobs_mode raw_logprobs: before temperature and top-p)
            lp = [step[t].logprob for t, step in zip(ids, c.logprobs or []) if t in step]
            stopped = c.finish_reason == "stop"
            if stopped and (not ids or ids[-1] not in stop):
                # the engine may leave the stop id out of token_ids; put it back (which one: stop_reason)
                ids.append(c.stop_reason if isinstance(c.stop_reason, int) else stop[-1])
            gens.append(Gen(ids, stopped, seconds, logprob=mean_logprob(lp)))
        return gens

    def close(self) -> None:
        del self.llm


def _cpu_defaults(runs_dir: str, run: str) -> dict:
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; otherwise a fraction of RAM
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(runs_dir, run or ".", ".vllm-cache").resolve()))
    # chunked prefill off: with it, vLLM 0.32's CPU runner crashes on seeded sampling ("CPU Generator does not
    # use offset") as soon as a prompt's prefill is split across steps (measured: 256 prompts at temperature 0.8)
    return {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False}


def _cpu_head_size(path: str) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def load(path: str, *, settings: dict, fallbacks, runs_dir: str = "runs", run: str = "", **kw):
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError("backend=vllm needs vLLM: run `make install-vllm`, then use .venv-vllm/bin/distill") \
            from None
    import torch
    from transformers import AutoTokenizer

    check_local_dir(path)
    engine = {"enable_prefix_caching": True, "seed": 0}
    if not torch.cuda.is_available():
        head = _cpu_head_size(path)
        if head not in CPU_HEAD_SIZES:  # e.g. the demo's smallest students: run them, with the same sampling
            from distill.backends import transformers as tf

            fallbacks.add("vllm", "transformers", f"head size {head} is not one vLLM's CPU kernels take "
                          f"({', '.join(map(str, CPU_HEAD_SIZES))})")
            return tf.load(path, settings={k: v for k, v in settings.items() if k in POLICY_KEYS},
                           fallbacks=fallbacks, **kw)
        engine |= _cpu_defaults(runs_dir, run)
    # the loading policy (distill/backends/__init__.py) in vLLM's words; the rest of `vllm:` passes through
    pol = policy(settings)
    engine |= tokenizer_kwargs(pol)
    if pol["use_safetensors"]:
        engine["load_format"] = "safetensors"
    engine |= {k: v for k, v in settings.items() if k not in POLICY_KEYS}
    from vllm import LLM

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path, **tokenizer_kwargs(pol)))
    try:
        llm = LLM(model=path, tokenizer=path, **engine)
    except TypeError as e:  # an unknown key under `vllm:`
        raise UserError(f"vllm: {e}") from None
    return VllmBackend(llm, tok, path, engine)
