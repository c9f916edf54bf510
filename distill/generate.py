"""The sampling semantics, written once over a backend's primitive (distill/backends/): a thinking phase
that stops at `</think>` or a token budget, s1's Wait extension, the answer phase, and budget forcing (a
capped thinking is closed for the model and the answer is forced with a cue). Used by `traces` (no cap: a
trace that never closes its thinking is truncated) and `eval` (budgets), whatever the backend.
"""

from __future__ import annotations

from distill.artifacts import UserError
from distill.backends import Gen

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def think_prompt(tok, problem: str | list[dict]) -> list[int]:
    """The chat prompt for a problem (or a whole conversation, as `serve` gets it), ending inside an opened
    `<think>` (added when the template doesn't)."""
    messages = [{"role": "user", "content": problem}] if isinstance(problem, str) else problem
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not text.rstrip().endswith(THINK_OPEN):
        text += THINK_OPEN + "\n"
    return tok(text, add_special_tokens=False).input_ids


def stop_tokens(tok) -> tuple[int, int]:
    close = tok.convert_tokens_to_ids(THINK_CLOSE)
    if close is None or close == tok.unk_token_id:
        raise UserError(f"tokenizer has no single {THINK_CLOSE} token; a reasoning model needs one")
    return close, tok.eos_token_id


def check_tokenizer(model: str) -> None:
    """Refuse a local model whose tokenizer has no `</think>` before its weights are loaded (a folder, or a
    .gguf file with the tokenizer beside it). A Hub id is checked once it is loaded."""
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(model).parent if model.endswith(".gguf") else Path(model)
    if (folder / "tokenizer_config.json").is_file():
        stop_tokens(AutoTokenizer.from_pretrained(folder))


def think_and_answer(backend, prompts: list[list[int]], *, max_thinking: int, max_answer: int,
                     temperature: float, top_p: float, seed: int, desc: str,
                     min_thinking: int = 0, wait: str = "Wait", max_waits: int = 0, top_k: int = 0):
    """Phase 1: thinking until `</think>` or `max_thinking` tokens, extended (s1) while it closed before
    `min_thinking`. Phase 2: the answer, only for samples that closed their thinking.
    Returns (thinking Gen, answer Gen or None) per prompt."""
    close, eos = stop_tokens(backend.tok)
    think = backend.generate(prompts, max_thinking, [close, eos], temperature=temperature, top_p=top_p,
                             top_k=top_k, seed=seed, desc=f"{desc} thinking")
    for round_ in range(max_waits if min_thinking > 0 else 0):
        think, extended = _extend(backend, prompts, think, close, eos, min_thinking, max_thinking, wait,
                                  temperature=temperature, top_p=top_p, top_k=top_k,
                                  seed=seed + 104729 * (round_ + 1), desc=f"{desc} wait {round_ + 1}")
        if not extended:
            break
    closed = [i for i, g in enumerate(think) if g.stopped and g.ids[-1] == close]
    answers = backend.generate([prompts[i] + think[i].ids for i in closed], max_answer, [eos],
                               temperature=temperature, top_p=top_p, top_k=top_k, seed=seed + 7919,
                               desc=f"{desc} answer", logprobs=True)  # the answer's confidence: cascades' signal
    by_index = dict(zip(closed, answers))
    return [(think[i], by_index.get(i)) for i in range(len(prompts))]


def _extend(backend, prompts, think, close, eos, min_thinking, max_thinking, wait, **kw):
    """s1's extension: a thinking closed before `min_thinking` gets its `</think>` replaced by the wait word
    and goes on. The remaining budget is computed after the wait word and a sample is only extended while
    it is > 0 (s1's code could ask for a budget <= 0)."""
    wait_ids = backend.tok(wait if wait.startswith((" ", "\n")) else "\n" + wait, add_special_tokens=False).input_ids
    todo = [i for i, g in enumerate(think) if g.stopped and g.ids[-1] == close
            and len(g.ids) - 1 < min_thinking and max_thinking - (len(g.ids) - 1 + len(wait_ids)) > 0]
    if not todo:
        return think, False
    think = list(think)
    base = [think[i].ids[:-1] + wait_ids for i in todo]
    rooms = [max_thinking - len(b) for b in base]
    # one call at the largest room; each sample is then cut to its own room (the first `room` tokens of a
    # longer sample are what a call capped at `room` would have produced)
    more = backend.generate([prompts[i] + b for i, b in zip(todo, base)], max(rooms), [close, eos], **kw)
    for i, b, room, g in zip(todo, base, rooms, more):
        think[i] = Gen(b + g.ids[:room], g.stopped and len(g.ids) <= room, think[i].seconds + g.seconds, think[i].waits + 1)
    return think, True


def forced_answers(backend, prompts: list[list[int]], thinking: list[list[int]], cue: str, *,
                   max_answer: int, temperature: float, top_p: float, seed: int, desc: str,
                   top_k: int = 0) -> list[Gen]:
    """Budget forcing (s1): close the capped thinking for the model, add the answer cue, and generate."""
    close, eos = stop_tokens(backend.tok)
    suffix = backend.tok(f"{THINK_CLOSE}\n{cue}", add_special_tokens=False).input_ids
    return backend.generate([p + t + suffix for p, t in zip(prompts, thinking)], max_answer, [eos],
                            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, desc=desc, logprobs=True)


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()
