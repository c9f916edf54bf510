"""The verifier (an outcome reward model) as a library: the text it scores, loading it, scoring with it.

A verifier is a causal LM's body with a scalar head (AutoModelForSequenceClassification, num_labels=1), trained
by `distill verifier` (distill/stages/verifier.py) to score a correct sample above a wrong one. What it scores
is a whole sample as the students were trained on it: the chat template over the problem and the assistant's
`<think>` thinking `</think>` answer (filter's `assistant_text`), so `verifier` trains and `eval` scores the
same text, whichever model wrote the sample.
"""

from __future__ import annotations

from pathlib import Path

from distill.artifacts import UserError


def assistant_text(thinking: str, answer: str) -> str:
    """The assistant turn as `filter` writes it for SFT."""
    return f"<think>\n{thinking}\n</think>\n{answer}"


def text(tok, problem: str, thinking: str, answer: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": problem},
                                    {"role": "assistant", "content": assistant_text(thinking, answer)}],
                                   tokenize=False)


def load(path: str | Path):
    """(model, tokenizer) of a trained verifier, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"verifier: {path} is not a model folder (run `distill verifier` first)")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    if model.config.num_labels != 1:
        raise UserError(f"verifier: {path} has {model.config.num_labels} labels; a verifier has one score")
    return model.eval(), tok


def score(model, tok, texts: list[str], batch_size: int = 64, max_length: int = 1024) -> list[float]:
    """The verifier's score of each text (higher: more likely correct)."""
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length, add_special_tokens=False).to(model.device)
            out += model(**enc).logits[:, 0].float().tolist()
    return out
