"""Batched sampling with transformers: a thinking phase that stops at `</think>` or a token budget, then an
answer phase. Used by `traces` (no cap: a trace that never closes its thinking is truncated) and by `eval`
(budget forcing: a capped thinking is closed for the model and the answer is forced with a cue).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from distill.artifacts import Fallbacks, UserError

log = logging.getLogger("distill")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class Gen:
    ids: list[int]  # generated tokens, ending with the stop token if one was hit
    stopped: bool  # a stop token ended it (else the token limit did)
    seconds: float  # wall time of the batch it ran in (its latency under batched serving)
    waits: int = 0  # times budget forcing replaced an early `</think>` with the wait word


def set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def load(path: str, dtype: str = "auto", attn: str = "sdpa", fallbacks: Fallbacks | None = None):
    """Load a causal LM and its tokenizer from a local path or a Hub id, on GPU when there is one."""
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
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def think_prompt(tok, problem: str) -> list[int]:
    """The chat prompt for a problem, ending inside an opened `<think>` (added when the template doesn't)."""
    text = tok.apply_chat_template([{"role": "user", "content": problem}], tokenize=False,
                                   add_generation_prompt=True)
    if not text.rstrip().endswith(THINK_OPEN):
        text += THINK_OPEN + "\n"
    return tok(text, add_special_tokens=False).input_ids


def stop_tokens(tok) -> tuple[int, int]:
    close = tok.convert_tokens_to_ids(THINK_CLOSE)
    if close is None or close == tok.unk_token_id:
        raise UserError(f"tokenizer has no single {THINK_CLOSE} token; a reasoning model needs one")
    return close, tok.eos_token_id


def sample(model, tok, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
           top_p: float, batch_size: int, seed: int, desc: str = "generate") -> list[Gen]:
    """Sample a continuation of each prompt, batched (KV cache), shortest prompts together."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(max_new_tokens=max_new, do_sample=temperature > 0, eos_token_id=stop,
                               pad_token_id=tok.pad_token_id,
                               **({"temperature": temperature, "top_p": top_p} if temperature > 0 else {}))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Gen | None] = [None] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
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
            res = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 generation_config=gen_cfg)
        seconds = time.perf_counter() - started
        for row, i in enumerate(idx):
            gen = res[row, width:].tolist()
            cut = next((k for k, t in enumerate(gen) if t in stop), None)
            out[i] = Gen(gen[:cut + 1] if cut is not None else gen, cut is not None, seconds)
    return out  # type: ignore[return-value]


def think_and_answer(model, tok, prompts: list[list[int]], *, max_thinking: int, max_answer: int,
                     temperature: float, top_p: float, batch_size: int, seed: int, desc: str,
                     min_thinking: int = 0, wait: str = "Wait", max_waits: int = 0):
    """Phase 1: thinking until `</think>` or `max_thinking` tokens, extended (s1) while it closed before
    `min_thinking`. Phase 2: the answer, only for samples that closed their thinking.
    Returns (thinking Gen, answer Gen or None) per prompt."""
    close, eos = stop_tokens(tok)
    think = sample(model, tok, prompts, max_thinking, [close, eos], temperature=temperature, top_p=top_p,
                   batch_size=batch_size, seed=seed, desc=f"{desc} thinking")
    for round_ in range(max_waits if min_thinking > 0 else 0):
        think, extended = _extend(model, tok, prompts, think, close, eos, min_thinking, max_thinking, wait,
                                  temperature=temperature, top_p=top_p, batch_size=batch_size,
                                  seed=seed + 104729 * (round_ + 1), desc=f"{desc} wait {round_ + 1}")
        if not extended:
            break
    closed = [i for i, g in enumerate(think) if g.stopped and g.ids[-1] == close]
    answers = sample(model, tok, [prompts[i] + think[i].ids for i in closed], max_answer, [eos],
                     temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed + 7919,
                     desc=f"{desc} answer")
    by_index = dict(zip(closed, answers))
    return [(think[i], by_index.get(i)) for i in range(len(prompts))]


def _extend(model, tok, prompts, think, close, eos, min_thinking, max_thinking, wait, **kw):
    """s1's extension: a thinking closed before `min_thinking` gets its `</think>` replaced by the wait word
    and goes on. The remaining budget is computed after the wait word and a sample is only extended while
    it is > 0 (s1's code could ask for a budget <= 0)."""
    wait_ids = tok(wait if wait.startswith((" ", "\n")) else "\n" + wait, add_special_tokens=False).input_ids
    todo = [i for i, g in enumerate(think) if g.stopped and g.ids[-1] == close
            and len(g.ids) - 1 < min_thinking and max_thinking - (len(g.ids) - 1 + len(wait_ids)) > 0]
    if not todo:
        return think, False
    think = list(think)
    base = [think[i].ids[:-1] + wait_ids for i in todo]
    rooms = [max_thinking - len(b) for b in base]
    # one call at the largest room; each sample is then cut to its own room (the first `room` tokens of a
    # longer sample are what a call capped at `room` would have produced)
    more = sample(model, tok, [prompts[i] + b for i, b in zip(todo, base)], max(rooms), [close, eos], **kw)
    for i, b, room, g in zip(todo, base, rooms, more):
        think[i] = Gen(b + g.ids[:room], g.stopped and len(g.ids) <= room, think[i].seconds + g.seconds, think[i].waits + 1)
    return think, True


def forced_answers(model, tok, prompts: list[list[int]], thinking: list[list[int]], cue: str, *,
                   max_answer: int, temperature: float, top_p: float, batch_size: int, seed: int,
                   desc: str) -> list[Gen]:
    """Budget forcing (s1): close the capped thinking for the model, add the answer cue, and generate."""
    close, eos = stop_tokens(tok)
    suffix = tok(f"{THINK_CLOSE}\n{cue}", add_special_tokens=False).input_ids
    return sample(model, tok, [p + t + suffix for p, t in zip(prompts, thinking)], max_answer, [eos],
                  temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, desc=desc)


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()
