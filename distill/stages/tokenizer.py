"""Stage `tokenizer`: train a small byte-level BPE tokenizer on the problems and the reference solver's
traces, and save it as a `PreTrainedTokenizerFast` with a ChatML chat template that puts the assistant's
reasoning in `<think> … </think>` before the answer (as Qwen/DeepSeek reasoning models do).

Digits, spaces and signs are one token each, so that arithmetic and fixed-width layouts stay simple.
Output: runs/<run>/tokenizer/ (loadable with AutoTokenizer.from_pretrained, like a Hub id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from distill import tasks
from distill.artifacts import UserError, finish, read_jsonl, stage_dir, staging
from distill.config import Pos, opt

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# {% generation %} marks what the assistant writes, so TRL's assistant_only_loss can mask the rest.
# An assistant message's reasoning may come inline in `content` ("<think>\n…\n</think>\n…") or in
# `reasoning_content`; the generation prompt opens the thinking, as R1-style templates do.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n' }}"
    "{%- endif %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


@dataclass
class TokenizerConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    problems: str = opt("", "default: runs/<run>/problems/train.jsonl")
    vocab_size: Pos = opt(384, "BPE vocabulary size (bytes + merges + the special tokens)")

    def __post_init__(self):
        if self.vocab_size < 256 + len(SPECIAL):
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL)} (bytes + special tokens)")


def corpus(problems: list[dict]):
    yield "user\nassistant\nsystem\n"
    for p in problems:
        yield p["problem"]
        if p.get("task") in tasks.FAMILIES:
            thinking, answer = tasks.reference_solution(p)
            yield f"{thinking}\n{answer}"
        elif p.get("answer"):
            yield str(p["answer"])


def build(texts, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Every character but letters is its own token (words are learned by BPE): digits, spaces and signs
    # one token each, so equal-width text is equal-width in tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[^A-Za-z]"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=SPECIAL[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def run(cfg: TokenizerConfig) -> Path:
    started = time.time()
    src = Path(cfg.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
    problems = read_jsonl(src, required=("problem",))
    if not problems:
        raise UserError(f"{src}: no problems to train a tokenizer on")
    tok = build(corpus(problems), cfg.vocab_size)
    out = stage_dir(cfg.runs_dir, cfg.run, "tokenizer")
    with staging(out) as tmp:
        tok.save_pretrained(tmp)
        finish(tmp, "tokenizer", cfg, {"problems": src}, {"vocab_size": len(tok)}, started)
    print(f"tokenizer: {len(tok)} tokens -> {out}")
    return out
