"""Stage `init`: build a randomly initialised Qwen2 model from an architecture given in the recipe and a
tokenizer path, and save both with `save_pretrained`, so every later stage loads it by path exactly as it
would load a Hub id. This is how the demo gets its tiny teacher and students without any download.
Output: runs/<run>/init/<name>/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from distill.artifacts import UserError, finish, stage_dir, staging
from distill.config import opt


@dataclass
class InitConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("model", "the model's name: runs/<run>/init/<name>/")
    tokenizer: str = opt("", "default: runs/<run>/tokenizer")
    arch: dict = opt(dict, "Qwen2Config keyword arguments")
    seed: int = opt(
        0, "seeds every random choice of the stage: the same settings and inputs give the same outputs")

    def __post_init__(self):
        if not self.arch:
            raise ValueError("arch is empty: give Qwen2Config fields (hidden_size, num_hidden_layers, ...)")


def run(cfg: InitConfig) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    started = time.time()
    tok_path = Path(cfg.tokenizer or stage_dir(cfg.runs_dir, cfg.run, "tokenizer"))
    if not tok_path.is_dir():
        raise UserError(f"init: tokenizer not found at {tok_path} (run `distill tokenizer` first)")
    tok = AutoTokenizer.from_pretrained(tok_path)
    known = set(Qwen2Config().to_dict())
    unknown = sorted(set(cfg.arch) - known)
    if unknown:
        raise UserError(f"init: unknown Qwen2Config field(s) in arch: {', '.join(unknown)}")
    arch = {"tie_word_embeddings": True, "max_position_embeddings": 1024, **cfg.arch}
    # a shape Qwen2 builds but cannot run: rotary embeddings rotate pairs of a head's dimensions
    heads = arch.get("num_attention_heads", Qwen2Config().num_attention_heads)
    width = arch.get("hidden_size", Qwen2Config().hidden_size)
    head_dim = arch.get("head_dim") or (width // heads if heads and width % heads == 0 else None)
    if head_dim is None or head_dim % 2:
        raise UserError(f"init: arch: hidden_size {width} / num_attention_heads {heads} must give an even head size "
                        f"(rotary embeddings rotate pairs of dimensions)")
    # the vocabulary is the tokenizer's, or larger (a model shaped like a real one's, for memory and speed)
    if arch.get("vocab_size", len(tok)) < len(tok):
        raise UserError(f"init: arch: vocab_size {arch['vocab_size']} is smaller than the tokenizer's {len(tok)}")
    config = Qwen2Config(**{"vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                            "eos_token_id": tok.eos_token_id, "bos_token_id": None, **arch})
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    params = sum(p.numel() for p in model.parameters())
    out = stage_dir(cfg.runs_dir, cfg.run, "init", cfg.name)
    with staging(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        finish(tmp, "init", cfg, {"tokenizer": tok_path}, {"params": params}, started)
    print(f"init: {cfg.name} with {params:,} parameters -> {out}")
    return out
