"""Backend `transformers`: batched `generate` with a KV cache, in-process, on GPU when there is one.

Prompts are left-padded into batches of `batch_size`, shortest prompts together. A sample's latency is the
wall time of the batch it ran in (what it would wait under batched serving).

Speculative decoding: with a `draft` model (setting `draft: <path>`, e.g. the distilled student, same tokenizer)
`model.generate(..., assistant_model=draft)` runs transformers' assisted generation: the draft proposes tokens,
the target verifies them in one forward pass. Greedy outputs are the target's own; sampled ones follow the
target's distribution (speculative sampling). transformers only supports it at batch size 1, so with a draft
prompts run one at a time (a sample's latency is then its own). `spec` counts proposed and accepted draft tokens.
"""

from __future__ import annotations

import contextlib
import logging
import time

from distill.artifacts import UserError
from distill.backends import Gen, check_local_dir, loaded, mean_logprob, policy, tokenizer_kwargs


class TransformersBackend:
    def __init__(self, model, tok, batch_size: int, draft=None, draft_path: str | None = None):
        self.model, self.tok, self.batch_size, self.draft = model, tok, batch_size, draft
        self.name = "transformers"
        self.params = model.num_parameters()  # counts a 4-bit model's packed weights as the parameters they hold
        self.info = {"backend": "transformers", "device": str(model.device), "dtype": str(model.dtype),
                     "attn_implementation": model.config._attn_implementation}
        if draft is not None:
            self.info["draft"] = draft_path
        self.spec = {"proposed": 0, "accepted": 0, "target_passes": 0}

    @contextlib.contextmanager
    def without_draft(self):
        """The target alone, one prompt at a time: the baseline speculative decoding is measured against."""
        draft, batch_size = self.draft, self.batch_size
        self.draft, self.batch_size = None, 1
        try:
            yield self
        finally:
            self.draft, self.batch_size = draft, batch_size

    def _assisted(self, ids, mask, gen_cfg):
        """One prompt (batch 1, no padding) through assisted generation, counting its draft tokens.

        The acceptance rate is counted from the target's forward passes (a pre-hook sees each pass's input):
        every pass verifies the draft's candidates and keeps the accepted ones plus one token of its own, so
        accepted = generated tokens - passes; proposed = the candidate tokens fed to those passes (the first
        pass gets prompt + candidates, each later one the last kept token + candidates). This needs nothing
        from transformers' internals (its candidate generator keeps no counter)."""
        width, fed = ids.shape[1], []
        hook = self.model.register_forward_pre_hook(
            lambda _m, args, kw: fed.append((kw.get("input_ids") if kw.get("input_ids") is not None else args[0]).shape[1]),
            with_kwargs=True)
        try:
            res = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                                      assistant_model=self.draft)
        finally:
            hook.remove()
        if fed:
            self.spec["proposed"] += (fed[0] - width) + sum(n - 1 for n in fed[1:])
            self.spec["accepted"] += (res.shape[1] - width) - len(fed)
            self.spec["target_passes"] += len(fed)
        return res

    def generate(self, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
                 top_p: float, seed: int, desc: str = "generate", top_k: int = 0, logprobs: bool = False) -> list[Gen]:
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig, LogitsProcessorList, StaticCache

        tok = self.tok
        # top_k 0 = off, as in the other backends (GenerationConfig's own default is 50)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0 else {}
        cpu, warpers = self.model.device.type == "cpu" and self.draft is None, None
        if cpu and sampling and top_p < 1:  # CPU: see the note above _cpu_warpers
            warpers, sampling = _cpu_warpers(temperature, top_p, top_k), {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
        gen_cfg = GenerationConfig(max_new_tokens=max_new, do_sample=temperature > 0, eos_token_id=stop,
                                   pad_token_id=tok.pad_token_id, **sampling)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Gen | None] = [None] * len(prompts)
        size = 1 if self.draft is not None else self.batch_size  # assisted generation: batch size 1 only
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        for b, idx in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=len(batches) < 2)):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            torch.manual_seed(seed + b)
            # CPU: a static KV cache sized to this call (the same note); generate's own static cache would be as
            # long as the longest earlier call's (to spare torch.compile recompiles, none here)
            cache = {"cache": StaticCache(config=self.model.config.get_text_config(decoder=True),
                                          max_cache_len=width + max_new)} if cpu else {}
            # first in the list: it sees the model's logits before any warper (assisted generation: none)
            rec = _Logprobs() if logprobs and self.draft is None else None
            procs = LogitsProcessorList(([rec] if rec else []) + list(warpers or [])) or None
            started = time.perf_counter()
            with torch.inference_mode():
                if self.draft is not None:
                    res = self._assisted(ids.to(self.model.device), mask.to(self.model.device), gen_cfg)
                else:
                    res = self.model.generate(input_ids=ids.to(self.model.device),
                                              attention_mask=mask.to(self.model.device), generation_config=gen_cfg,
                                              logits_processor=procs, **cache)
            seconds = time.perf_counter() - started
            per_token = rec.per_token(res[:, width:]).tolist() if rec else None
            for row, i in enumerate(idx):
                gen = res[row, width:].tolist()
                cut = next((k for k, t in enumerate(gen) if t in stop), None)
                kept = gen[:cut + 1] if cut is not None else gen
                lp = per_token[row][:len(kept)] if per_token and kept else None
                out[i] = Gen(kept, cut is not None, seconds, logprob=mean_logprob(lp))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass


class _Logprobs:
    """A logits processor that changes nothing and records, per row, the log-probability of each generated
    token under the model's own logits: at every step the previous step's log-softmax is read at the token that
    step chose (the last column of input_ids), the last step's once generation ends. O(batch x vocab) memory,
    where `output_logits` would keep every step's. Rows that finished early read pad tokens after their end:
    the caller keeps only each row's own tokens."""

    def __init__(self):
        self.prev, self.chosen = None, []

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self.chosen.append(self.prev.gather(1, input_ids[:, -1:].to(self.prev.device)).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def per_token(self, generated):
        """[rows, steps] log-probabilities of `generated` (the generated part of generate's output)."""
        import torch

        last = self.prev.gather(1, generated[:, -1:].to(self.prev.device)).squeeze(1)
        return torch.stack(self.chosen + [last], dim=1).cpu()


# On CPU two generation settings differ from transformers' defaults; the outputs are the same, token for token.
# Measured with bench/eval_speed.py (bench/RESULTS.md; the demo's eval: batch 200, temperature 0.6, top_p 0.95,
# up to 256 thinking tokens, 2 threads). Its student-s (19k parameters) spent 9.2 ms per decoding step in a
# process's first long generation, 3.5 of them growing its KV cache and 2.3 choosing tokens:
# - a StaticCache: DynamicCache grows every layer's keys and values by torch.cat at every step,
#   each a new buffer; past glibc's mmap threshold each is fresh memory, page-faulted in. A process's first long
#   generation took 0.7M (student-s) to 2.8M (teacher) page faults: the teacher generated 5.1k tokens/s there
#   against 10.9k once the allocator had adapted, student-s 11.2k against 16.7k. A static cache is allocated
#   once and written in place: the adapted speed from the first call (2x, 1.6x), 5-15% below the adapted
#   DynamicCache (attention spans the whole preallocated length).
# - top-p by _SortFreeTopP in place of TopPLogitsWarper, whose torch.sort of a 200 x vocab batch took ~1.1 ms
#   per step: student-s 1.21-1.36x tokens/s, the teacher 1.01-1.05x.
def _cpu_warpers(temperature: float, top_p: float, top_k: int):
    """Temperature, top-k and top-p as transformers applies them (in that order), with `_SortFreeTopP`. They
    come as custom processors, which transformers runs before its own warpers: the config's are turned off."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    return LogitsProcessorList([*([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []),
                                *([TopKLogitsWarper(top_k)] if top_k > 0 else []), _SortFreeTopP(top_p)])


class _SortFreeTopP:
    """transformers' TopPLogitsWarper (sort ascending, softmax, cumsum, remove the prefix whose cumulative
    probability is <= 1 - top_p, keep at least one) with numpy's sort of the values in place of torch.sort's
    values and indices: the same sorted floats give the same cumulative sums, and the removed prefix is every
    score below the first kept value. Differs only when tied scores straddle the cut (the warper removes some
    of the ties, this keeps them all). CPU tensors."""

    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        ordered = torch.from_numpy(np.sort(scores.numpy(), axis=-1))
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        cut = (cumulative <= (1 - self.top_p)).sum(dim=-1, keepdim=True).clamp_(max=scores.shape[-1] - 1)
        return scores.masked_fill(scores < ordered.gather(-1, cut), -float("inf"))


def load(path: str, *, settings: dict, fallbacks, dtype: str = "auto", attn: str = "sdpa", batch_size: int = 64,
         **_):
    """Load a causal LM and its tokenizer from a local path or a Hub id. Setting `draft`: a smaller model with
    the same tokenizer, loaded alongside as the assistant for speculative decoding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_local_dir(path)
    # a bitsandbytes 8-bit model (distill quantize) warns of its fp16 cast on every forward pass
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    attn, dtype = _capable(path, attn, dtype, fallbacks)
    kw = policy(settings)
    try:
        tok = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs(kw))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **kw)
    except OSError as e:
        raise UserError(f"cannot load model {path}: {_load_error(e)}") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    prepare_tokenizer(tok)
    draft = None
    if settings.get("draft"):
        draft = _load_draft(settings["draft"], tok, dtype=dtype, attn=attn, device=model.device, kw=kw)
    backend = TransformersBackend(model, tok, batch_size, draft, settings.get("draft"))
    backend.info["loading"] = loaded(model, kw)
    return backend


def _capable(path: str, attn: str, dtype: str, fallbacks) -> tuple[str, str]:
    """The attention and dtype this machine runs for the asked ones (distill/capabilities.py), the fallbacks
    logged once and recorded. A local checkpoint's config.json says what dtype `auto` loads."""
    from pathlib import Path

    from distill import capabilities as caps
    from distill.artifacts import Fallbacks

    ckpt = caps.checkpoint_dtype(path) if (Path(path) / "config.json").is_file() else None
    facts = caps.probe({"flash"} if attn.startswith("flash") else set())
    choices = caps.decide(caps.Wants(attn=attn, dtype=dtype, checkpoint_dtype=ckpt or "float32"), facts)
    picked = {"attention": choices["attention"]} | ({"dtype": choices["dtype"]} if ckpt else {})
    caps.record(picked, fallbacks if fallbacks is not None else Fallbacks())
    return choices["attention"].used, dtype if not ckpt or not choices["dtype"].reason else choices["dtype"].used


def _load_error(e: OSError) -> str:
    """One line for a model from_pretrained refused; pickle-only weights say how to allow them."""
    first = str(e).splitlines()[0]
    if "safetensors" in first.lower() or "does not appear to have a file named model.safetensors" in str(e):
        return f"{first} (weights are loaded from safetensors only; `allow_pickle: true` loads others you trust)"
    return first


def _load_draft(path: str, tok, *, dtype: str, attn: str, device, kw: dict):
    """The draft model; its tokenizer must be the target's (same token ids), else its proposals mean nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_local_dir(path, "draft model")
    try:
        dtok = AutoTokenizer.from_pretrained(path, trust_remote_code=kw["trust_remote_code"])
        draft = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn,
                                                     **{k: v for k, v in kw.items() if k != "revision"})
    except OSError as e:
        raise UserError(f"cannot load draft model {path}: {_load_error(e)}") from None
    if dtok.get_vocab() != tok.get_vocab():
        raise UserError(f"draft model {path} has a different tokenizer from the target's: speculative decoding "
                        "here needs the same one")
    return draft.to(device).eval()


def prepare_tokenizer(tok):
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
