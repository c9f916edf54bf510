"""How fast does a tiny model learn a task's trace format? A bare PyTorch loop, for designing tasks.

    .venv/bin/python bench/task_learnability.py distill:mix '{"steps": 200, "evals": [100, 150]}'

A character-level vocabulary (no tokenizer to train), a 0.3M-parameter Qwen2 (hidden 96, 2 layers, init
scale `ir` 0.02) unless told otherwise, fresh problems for every batch (so it measures learning the
procedure, not memorising a set), loss on the reasoning and answer only, AdamW lr 3e-3 with 30 warm-up
steps and cosine decay, batch 64. It prints the loss, then greedy accuracy by level on 200 problems drawn
with another seed. The first argument is `distill:<family>` or `distill:mix` (the built-in tasks). The formats
tried and dropped while designing them were measured with bench/task_variants.py, removed since; its results
stay in bench/RESULTS.md with the commits that produced them (task_variants.py is in the history up to 7c95955).
"""
import json
import math
import random
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

CHARS = list("0123456789+-*=:;,.?_|<>()/ abcdefghijklmnopqrstuvwxyzF\n") + ["<s>", "<a>", "<t>", "</t>", "<e>", "<p>"]
V = {c: i for i, c in enumerate(CHARS)}
PAD = V["<p>"]

def enc(prompt, thinking, answer):
    p = [V["<s>"]] + [V[c] for c in prompt] + [V["<a>"], V["<t>"]]
    a = [V[c] for c in thinking] + [V["</t>"]] + [V[c] for c in answer] + [V["<e>"]]
    return p, a

def batch(gen, rng, bs):
    seqs = [enc(*gen(rng)[:3]) for _ in range(bs)]
    L = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((bs, L), PAD); lab = torch.full((bs, L), -100); att = torch.zeros((bs, L), dtype=torch.long)
    for i, (p, a) in enumerate(seqs):
        s = p + a
        ids[i, :len(s)] = torch.tensor(s); att[i, :len(s)] = 1
        lab[i, len(p):len(s)] = torch.tensor(a)
    return ids, att, lab

def model_of(h, l, inter=None, heads=4, seed=0, ir=0.02):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(CHARS), hidden_size=h, num_hidden_layers=l, intermediate_size=inter or 4 * h,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                      initializer_range=ir,
                      tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=V["<e>"], bos_token_id=None)
    return Qwen2ForCausalLM(cfg)

@torch.no_grad()
def greedy(model, gen, rng, n=200, max_new=320):
    model.eval()
    probs = [gen(rng) for _ in range(n)]
    correct, bylev = 0, {}
    # left-pad batch generation, simple loop with kv cache via HF generate
    prompts = [enc(p, "", "")[0] for p, _, _, _, _ in probs]
    L = max(map(len, prompts))
    ids = torch.full((n, L), PAD); att = torch.zeros((n, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p); att[i, L - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=V["<e>"], pad_token_id=PAD)
    ex = None
    for i, (p, t, a, lev, chk) in enumerate(probs):
        toks = out[i, L:].tolist()
        s = "".join(CHARS[x] if x < len(CHARS) else "?" for x in toks)
        ans = s.split("</t>")[-1].split("<e>")[0] if "</t>" in s else None
        ok = ans is not None and chk(ans)
        correct += ok; bylev.setdefault(lev, []).append(ok)
        if not ok and (ex is None or len(ex) < 4): ex = (ex or []) + [(p, s[:120].split("<e>")[0], t)]
    model.train()
    return correct / n, {k: round(sum(v) / len(v), 2) for k, v in sorted(bylev.items())}, ex

def train(gen, h=96, l=2, steps=400, bs=64, lr=3e-3, warm=30, threads=2, evals=(), seed=0, log=True, inter=None, heads=4, b2=0.98, wd=0.0, ir=0.02):
    torch.set_num_threads(threads)
    model = model_of(h, l, inter, heads, seed, ir)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, b2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / steps))))
    rng = random.Random(seed)
    t0 = time.time(); toks = 0
    for s in range(steps):
        ids, att, lab = batch(gen, rng, bs)
        toks += int(att.sum())
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if log and (s % 100 == 0 or s == steps - 1):
            print(f"  step {s} loss {loss.item():.4f} {toks / (time.time() - t0):.0f} tok/s {time.time() - t0:.0f}s", flush=True)
        if s + 1 in evals:
            print("  eval@", s + 1, greedy(model, gen, random.Random(999))[:2], flush=True)
    acc = greedy(model, gen, random.Random(999))
    return params, time.time() - t0, acc


def distill_generator(name):
    """(prompt, thinking, answer, level label, checker) from distill.tasks: one family, or chain and search mixed
    (the two procedures; `mix` predates recall, and the rows in bench/RESULTS.md that use it are for those two)."""
    from distill import tasks

    levels = {"chain": [1, 2, 3, 4], "search": [1, 2], "recall": [1, 2, 3]}
    families = ["chain", "search"] if name == "mix" else [name]

    def gen(rng):
        family = rng.choice(families)
        level = rng.choice(levels[family])
        p = tasks.FAMILIES[family][0](rng, level)
        return (p["problem"], tasks.FAMILIES[family][1](p), p["answer"], f"{family[0]}{level}",
                lambda s, gold=p["answer"]: s.strip() == gold)
    return gen


def main():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    module, name = sys.argv[1].split(":")
    if module != "distill":
        raise SystemExit(f"{sys.argv[1]}: give distill:<family> or distill:mix")
    gen = distill_generator(name)
    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    kw["evals"] = tuple(kw.get("evals", ()))
    params, seconds, (acc, by_level, examples) = train(gen, **kw)
    print(f"RESULT {sys.argv[1]} {kw}: {params:,} params, {seconds:.0f} s, greedy accuracy {acc:.3f} {by_level}")
    for prompt, got, want in examples or []:
        print(f"  miss: {prompt!r}\n    got  {got!r}\n    want {want!r}")


if __name__ == "__main__":
    main()
