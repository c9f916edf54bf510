"""Backend `transformers`: batched `generate` with a KV cache, in-process, on GPU when there is one.

Prompts are left-padded into batches of `batch_size`, shortest prompts together. A sample's latency is the
wall time of the batch it ran in (what it would wait under batched serving).
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.artifacts import UserError
from distill.backends import Gen


class TransformersBackend:
    def __init__(self, model, tok, batch_size: int):
        self.model, self.tok, self.batch_size = model, tok, batch_size
        self.name = "transformers"
        self.params = sum(p.numel() for p in model.parameters())
        self.info = {"backend": "transformers", "device": str(model.device), "dtype": str(model.dtype),
                     "attn_implementation": model.config._attn_implementation}

    def generate(self, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
                 top_p: float, seed: int, desc: str = "generate", top_k: int = 0) -> list[Gen]:
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        tok = self.tok
        gen_cfg = GenerationConfig(max_new_tokens=max_new, do_sample=temperature > 0, eos_token_id=stop,
                                   pad_token_id=tok.pad_token_id,
                                   # top_k 0 = off, as in the other backends (GenerationConfig's own default is 50)
                                   **({"temperature": temperature, "top_p": top_p, "top_k": top_k}
                                      if temperature > 0 else {}))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Gen | None] = [None] * len(prompts)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b, idx in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=len(batches) < 2)):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            torch.manual_seed(seed + b)
            started = time.perf_counter()
            with torch.inference_mode():
                res = self.model.generate(input_ids=ids.to(self.model.device),
                                          attention_mask=mask.to(self.model.device), generation_config=gen_cfg)
            seconds = time.perf_counter() - started
            for row, i in enumerate(idx):
                gen = res[row, width:].tolist()
                cut = next((k for k, t in enumerate(gen) if t in stop), None)
                out[i] = Gen(gen[:cut + 1] if cut is not None else gen, cut is not None, seconds)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass


def load(path: str, *, settings: dict, fallbacks, dtype: str = "auto", attn: str = "sdpa", batch_size: int = 64,
         **_):
    """Load a causal LM and its tokenizer from a local path or a Hub id (no settings of its own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if (p.is_absolute() or path.startswith((".", "runs/")) or p.exists()) and not p.is_dir():
        raise UserError(f"model not found: {path}")
    if attn == "flash_attention_2" and not torch.cuda.is_available():
        if fallbacks is not None:
            fallbacks.add("flash_attention_2", "sdpa", "no CUDA device")
        attn = "sdpa"
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except OSError as e:
        raise UserError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    prepare_tokenizer(tok)
    return TransformersBackend(model, tok, batch_size)


def prepare_tokenizer(tok):
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
