"""Our `sft` stage's trained tokens/s divided by a bare PyTorch loop's, on the same tiny model and batches.

    python bench/sft_throughput.py [--steps 60] [--threads 2]

Both sides count non-padding tokens. The bare loop gets exactly the batches our stage's SFTTrainer makes
(same tokenization, masking, batch_rebalance grouping and padding: micro-batches of 8, an optimizer step
every 8) and runs forward + backward + AdamW (torch) on them; our stage runs with its default optimizer
(bitsandbytes 8-bit AdamW where it can run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distill import filter as filt
from distill import init, problems, sft, tokenizer, traces

MICRO, ACCUM = 8, 8  # the demo recipes' batching
ARCH = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 384, "num_attention_heads": 4,
        "num_key_value_heads": 4}


def build(runs: str) -> tuple[Path, Path]:
    problems.run(problems.ProblemsConfig(run="b", runs_dir=runs, train_per_task=500, eval_per_task=10))
    tokenizer.run(tokenizer.TokenizerConfig(run="b", runs_dir=runs))
    traces.run(traces.TracesConfig(run="b", runs_dir=runs, name="solver", backend="solver", n=1))
    data = filt.run(filt.FilterConfig(run="b", runs_dir=runs, name="solver", keep_per_problem=1))
    model = init.run(init.InitConfig(run="b", runs_dir=runs, name="m", arch=ARCH))
    return model, data / "train.jsonl"


def ours(runs: str, model: Path, data: Path, steps: int, threads: int) -> dict:
    out = sft.run(sft.SftConfig(run="b", runs_dir=runs, name="ours", model=str(model), data=str(data),
                                batch_size=MICRO, grad_accum=ACCUM, lr=3e-3, save_steps=10_000, logging_steps=10, threads=threads,
                                trl={"max_steps": steps, "disable_tqdm": True}))
    m = json.loads((out / "manifest.json").read_text())
    return {"tokens_per_s": m["timings"]["tokens_per_s"], "optimizer": m["optimizer"]}


def bare(model_path: Path, data: Path, steps: int, threads: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.sft import _dataset

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(model_path)
    with tempfile.TemporaryDirectory() as tmp:  # only to get the very batches our stage trains on
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=MICRO, assistant_only_loss=True,
                         gradient_accumulation_steps=ACCUM, train_sampling_strategy="batch_rebalance", report_to="none", seed=0, data_seed=0,
                         bf16=torch.cuda.is_available())
        trainer = SFTTrainer(model=model, args=args, train_dataset=_dataset(data), processing_class=tok)
        batches = []
        while len(batches) < steps * ACCUM:
            batches += list(trainer.get_train_dataloader())
    batches = batches[:steps * ACCUM]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    tokens, started = 0, time.perf_counter()
    for i, b in enumerate(batches):
        out = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"), labels=b["labels"])
        (out.loss / ACCUM).backward()
        if (i + 1) % ACCUM == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
    return {"tokens_per_s": tokens / (time.perf_counter() - started), "optimizer": "torch AdamW"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        model, data = build(runs)
        b = bare(model, data, a.steps, a.threads)
        o = ours(runs, model, data, a.steps, a.threads)
    print(f"bare PyTorch loop ({b['optimizer']}): {b['tokens_per_s']:,.0f} tokens/s")
    print(f"distill sft ({o['optimizer']}):        {o['tokens_per_s']:,.0f} tokens/s")
    print(f"ratio sft / bare: {o['tokens_per_s'] / b['tokens_per_s']:.2f}  (goal >= 0.9; {a.steps} steps, "
          f"batches of {MICRO} x {ACCUM}, {a.threads} threads)")


if __name__ == "__main__":
    main()
