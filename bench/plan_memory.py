"""`distill plan`'s prediction vs the measured peak memory of CPU training, on tiny Qwen2 models.

    python bench/plan_memory.py            # every size x length, each in a fresh process; prints a table
    python bench/plan_memory.py --one M 1024   # one measurement, as JSON (what the table runs)

What is measured: the bare training loop sft.py's SFTTrainer runs (fp32 on CPU, SDPA attention, torch AdamW,
loss on every token), 3 steps of forward + backward + step + zero_grad, inside the same peak-memory probe `eval`
uses (distill.eval.PeakMemory: peak RSS above the level at entry). Model, optimizer and batches are created
inside the probe, so weights and optimizer states count. Each point runs in a fresh process: a process that
already freed a big heap would reuse resident pages and show a lower peak. A warm-up step on a throwaway model
comes first, so one-time costs (thread pools, kernels) are not charged to the model.
What is predicted: distill.plan's own formulas with precision fp32, engine ddp on 1 device, no reserve.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SIZES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "S": (128, 2, 512, 4, 2, 4096),
    "M": (256, 4, 1024, 8, 2, 8192),
    "L": (384, 6, 1536, 8, 4, 16384),
}
LENGTHS = (256, 1024)
BATCH, STEPS = 4, 3


def _config(size: str):
    from transformers import Qwen2Config

    h, n, i, a, g, v = SIZES[size]
    return Qwen2Config(hidden_size=h, num_hidden_layers=n, intermediate_size=i, num_attention_heads=a,
                       num_key_value_heads=g, vocab_size=v, tie_word_embeddings=False, max_position_embeddings=4096,
                       attn_implementation="sdpa")


def _train(config, seq: int, steps: int) -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (BATCH, seq))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def measure(size: str, seq: int) -> dict:
    import torch

    from distill.eval import PeakMemory

    torch.set_num_threads(2)
    torch.manual_seed(0)
    _train(_config("S"), 64, 1)  # warm-up on a throwaway model
    with PeakMemory() as mem:
        _train(_config(size), seq, STEPS)
    return {"size": size, "seq": seq, "measured_mb": mem.mb}


def predict(size: str, seq: int) -> dict:
    from distill.plan import activations, meta_model, model_states

    c = _config(size)
    h, n, i, a, g, v = SIZES[size]
    params = sum(p.numel() for p in meta_model(c).parameters())
    arch = {"hidden": h, "layers": n, "intermediate": i, "heads": a, "kv_heads": g, "head_dim": h // a, "vocab": v}
    ms = model_states(params, 1, "ddp", "adamw_torch", "fp32")
    act = activations(arch, BATCH, seq, 4, "flash", False, False)
    return {"params": params, "states_mb": sum(ms.values()) / 2**20, "activations_mb": act["total"] / 2**20,
            "predicted_mb": (sum(ms.values()) + act["total"]) / 2**20}


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    rows = []
    for size in SIZES:
        for seq in LENGTHS:
            out = subprocess.run([sys.executable, __file__, "--one", size, str(seq)], capture_output=True,
                                 text=True, check=True, cwd=Path(__file__).resolve().parents[1])
            row = json.loads(out.stdout.strip().splitlines()[-1]) | predict(size, seq)
            row["error"] = row["predicted_mb"] / row["measured_mb"] - 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| model | params | tokens/step | predicted MB (states + activations) | measured MB | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.2f}M | {BATCH} x {r['seq']} | {r['predicted_mb']:.0f} "
              f"({r['states_mb']:.0f} + {r['activations_mb']:.0f}) | {r['measured_mb']:.0f} | {r['error']:+.0%} |")


if __name__ == "__main__":
    main()
