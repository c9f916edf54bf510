"""How many of recall's facts does a model hold? Recall's problem accuracy hides it: a problem composes 2-6
lookups, so a model holding 60% of the facts solves few problems more than one holding 25%. Here each fact
"x then letter -> digit" is read off directly: the reference trace of a one-round problem fed to the model, and
the argmax at the fact's value compared with the table (each fact asked after every second letter: 10 times).

    .venv/bin/python bench/facts_held.py runs/demo/sft/student-s/model [more model folders ...]

Prints, per model, the fraction of facts whose value it puts first in a majority of those contexts, and the
fraction of all lookups right (chance: 0.1).
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill import reward, tasks


def lookups(path: str) -> dict[tuple[int, str], float]:
    """(x, letter) -> the fraction of its contexts in which the model's argmax is the fact's value."""
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "right"  # positions counted from the start, as in training
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    texts, keys, ats = [], [], []
    for c in tasks.LETTERS:
        for x in range(10):
            for d in tasks.LETTERS:
                meta = {"x": x, "ops": [c, d], "rounds": 1}
                p = {"task": "recall", "problem": f"1 {x}{c}=?{d}=?\n0 ?{c}=?{d}=?",
                     "answer": str(tasks._recall_end(meta)), "meta": meta}
                text = reward.text(tok, p["problem"], *tasks.reference_solution(p))  # as SFT saw it
                key = f"<think>\n1 {x}{c}="
                texts.append(text)
                keys.append((x, c))
                ats.append(text.index(key) + len(key))  # the character where the fact's value starts
    enc = tok(texts, return_offsets_mapping=True, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    hits: dict[tuple[int, str], list[bool]] = {}
    for row, (key, at) in enumerate(zip(keys, ats)):
        offsets = enc["offset_mapping"][row].tolist()
        i = next(j for j, (a, b) in enumerate(offsets) if a <= at < b)
        guess = tok.decode([int(logits[row, i - 1].argmax())]).strip()
        hits.setdefault(key, []).append(guess == str(tasks.TABLE[key[1]][key[0]]))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model folders (runs/<run>/sft/<name>/model)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for path in args.models:
        got = lookups(path)
        held = sum(v > 0.5 for v in got.values()) / len(got)
        print(f"{path}: facts held {held:.2f} of {len(got)}, lookups right {sum(got.values()) / len(got):.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
