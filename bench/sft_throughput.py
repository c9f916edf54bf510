"""Our `sft` stage's trained tokens/s divided by a bare PyTorch loop's, per student recipe, on the same batches.

    python bench/sft_throughput.py [--recipe students/demo-s.yaml --recipe students/demo-l.yaml]
                                   [--steps 150] [--threads 2] [--repeats 2] [--bare-optim adamw_torch_fused]

Each recipe (default: the demo's smallest and largest student) sets both sides: its `init.arch` (the model,
built here with `distill init` on the demo's tokenizer) and its `sft` batch_size, grad_accum, lr, warmup,
logging_steps, optim and the optimizer's betas/epsilon under `trl:`. The data is the demo solver's traces
(1,000 rows), made here; `--steps` optimizer steps each side (several epochs, as in the demo).

Both sides count non-padding tokens. The bare loop gets exactly the micro-batches our stage's SFTTrainer makes
(same tokenization, assistant-only masking, batch_rebalance grouping, padding and per-epoch reshuffle),
collated before its clock starts, and runs the model's own forward (labels, no KV cache) + backward, gradient
clipping at 1.0 (the Trainer's default max_grad_norm) and one optimizer step per grad_accum micro-batches. Its
optimizer is the very one our stage uses: the Trainer's `create_optimizer` for the `optim` our stage resolves
to here (bitsandbytes' 8-bit AdamW with its 32-bit override for embeddings, or torch AdamW where bitsandbytes
can't run), so the ratio measures the stage's overhead, not an optimizer choice; `--bare-optim NAME`
(repeatable) also times the bare loop with other TrainingArguments optimizers. Our side is the stage as the
demo runs it, minus checkpoints (save_steps past the end) and its tqdm bar (measured: no difference); its
tokens/s is the manifest's (tokens seen / the Trainer's train_runtime). The sides alternate, `--repeats` times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import yaml

from distill.config import make
from distill.stages import filter as filt
from distill.stages import init, problems, sft, tokenizer, traces

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["students/demo-s.yaml", "students/demo-l.yaml"]
OPTIM_KEYS = ("adam_beta1", "adam_beta2", "adam_epsilon")  # taken from a recipe's `trl:` (optimizer settings)


def recipe(path: str) -> dict:
    """What the bench takes from a student recipe: its model (`init.arch`) and its sft batching/optimizer."""
    y = yaml.safe_load((ROOT / path if not Path(path).is_absolute() else Path(path)).read_text())
    s = y.get("sft") or {}
    defaults = {f.name: f.default for f in fields(sft.SftConfig)}
    keys = ("batch_size", "grad_accum", "lr", "warmup", "logging_steps", "weight_decay", "optim")
    r = {k: s.get(k, defaults[k]) for k in keys}
    r["trl"] = {k: v for k, v in (s.get("trl") or {}).items() if k in OPTIM_KEYS}
    return {"path": path, "name": y.get("name") or Path(path).stem, "arch": y["init"]["arch"], **r}


def build(runs: str, recipes: list[dict]) -> tuple[dict[str, Path], Path]:
    problems.run(problems.ProblemsConfig(run="b", runs_dir=runs, train_per_task=500, eval_per_task=10))
    tokenizer.run(tokenizer.TokenizerConfig(run="b", runs_dir=runs))
    traces.run(make(traces.TracesConfig, run="b", runs_dir=runs, name="solver", backend="solver", n=1))
    data = filt.run(filt.FilterConfig(run="b", runs_dir=runs, name="solver", keep_per_problem=1))
    models = {r["name"]: init.run(init.InitConfig(run="b", runs_dir=runs, name=r["name"], arch=r["arch"]))
              for r in recipes}
    return models, data / "train.jsonl"


def sft_config(r: dict, runs: str, name: str, model: Path, data: Path, steps: int, threads: int):
    return sft.SftConfig(run="b", runs_dir=runs, name=name, model=str(model), data=str(data),
                         batch_size=r["batch_size"], grad_accum=r["grad_accum"], lr=r["lr"], warmup=r["warmup"],
                         weight_decay=r["weight_decay"], optim=r["optim"], logging_steps=r["logging_steps"],
                         save_steps=10 * steps, threads=threads,
                         trl={**r["trl"], "max_steps": steps, "disable_tqdm": True})


def ours(cfg) -> dict:
    out = sft.run(cfg)
    m = json.loads((out / "manifest.json").read_text())
    steps = m["counts"]["steps"]
    return {"tokens_per_s": m["timings"]["tokens_per_s"], "optimizer": m["optimizer"],
            "tokens": m["counts"]["tokens_seen"], "ms_per_step": 1000 * m["timings"]["train_s"] / steps}


def batches_and_args(cfg, steps: int):
    """The micro-batches our stage trains on (its own SFTTrainer's dataloader) and its resolved SFTConfig."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(cfg.model, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(cfg.model)
    from distill import capabilities as caps

    # what our stage resolves `optim` to on this machine
    optim = caps.decide(caps.Wants(optim=cfg.optim), caps.probe({"bnb"}))["optimizer"].used
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length,
                         gradient_accumulation_steps=cfg.grad_accum, assistant_only_loss=True, packing=False,
                         padding_free=False, train_sampling_strategy="batch_rebalance", report_to="none",
                         seed=cfg.seed, data_seed=cfg.seed, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                         optim=optim, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                         **{k: v for k, v in cfg.trl.items() if k in OPTIM_KEYS})
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft._dataset(Path(cfg.data)),
                             processing_class=tok)
        batches = []  # one list of micro-batches per optimizer step, epoch by epoch as the Trainer draws them
        for epoch in itertools.count():
            dl = trainer.get_train_dataloader()
            # the Trainer reshuffles every epoch: so do its set_epoch calls here (Trainer._run_epoch)
            for x in (dl, getattr(getattr(dl, "batch_sampler", None), "batch_sampler", None)):
                if hasattr(x, "set_epoch"):
                    x.set_epoch(epoch)
            epoch_batches = list(dl)  # the last optimizer step of an epoch takes what is left of it
            batches += [epoch_batches[i:i + cfg.grad_accum] for i in range(0, len(epoch_batches), cfg.grad_accum)]
            if len(batches) >= steps:
                return batches[:steps], args


def bare(cfg, batches: list, args, optim: str | None = None) -> dict:
    """forward (with labels) + backward per micro-batch, then clip at 1.0 and step: on a fresh model."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer
    from transformers.training_args import OptimizerNames

    model = AutoModelForCausalLM.from_pretrained(cfg.model, attn_implementation="sdpa")
    if optim:
        args.optim = OptimizerNames(optim)
    # the optimizer the Trainer would build for these args: same class, kwargs, param groups (and, for
    # bitsandbytes 8-bit, its 32-bit override for embeddings); only the object, none of the Trainer's loop
    opt = Trainer(model=model, args=args).create_optimizer()
    model.train()
    tokens, started = 0, time.perf_counter()
    for step in batches:
        for b in step:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                        use_cache=False)
            (out.loss / len(step)).backward()
            tokens += int(b["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "optimizer": OptimizerNames(args.optim).value,
            "tokens": tokens, "ms_per_step": 1000 * seconds / len(batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", help=f"student recipe YAML (repeatable; default {RECIPES})")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps each side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="measurements per recipe and side (alternating)")
    ap.add_argument("--bare-optim", action="append", default=[],
                    help="also time the bare loop with this TrainingArguments optim (e.g. adamw_torch)")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # before torch is imported (the stage sets torch's threads)
    import torch

    torch.set_num_threads(a.threads)
    recipes = [recipe(p) for p in (a.recipe or RECIPES)]
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        models, data = build(runs, recipes)
        for r in recipes:
            cfg = sft_config(r, runs, r["name"], models[r["name"]], data, a.steps, a.threads)
            batches, args = batches_and_args(cfg, a.steps)
            base_optim = args.optim
            res = {"bare": [], "ours": []} | {f"bare {o}": [] for o in a.bare_optim}
            for i in range(a.repeats):  # alternate the sides, so a slow spell of the machine hits both
                res["bare"].append(bare(cfg, batches, args, base_optim))
                for o in a.bare_optim:
                    res[f"bare {o}"].append(bare(cfg, batches, args, o))
                torch.set_num_threads(a.threads)
                res["ours"].append(ours(sft_config(r, runs, f"{r['name']}-{i}", models[r["name"]], data,
                                                   a.steps, a.threads)))
            rows.append((r, res))
    print(f"\nsft_throughput: {a.steps} optimizer steps each side, {a.threads} threads, {a.repeats} repeats "
          f"(median, then each run)")
    for r, res in rows:
        b, o = res["bare"], res["ours"]
        med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in res.items()}
        ms = {k: statistics.median(x["ms_per_step"] for x in v) for k, v in res.items()}
        same = all(x["tokens"] == b[0]["tokens"] for x in b + o)
        print(f"{r['path']} ({r['name']}, hidden {r['arch'].get('hidden_size')}, batches of {r['batch_size']} x "
              f"{r['grad_accum']}, lr {r['lr']}; same tokens both sides: {same}, {b[0]['tokens']:,})")
        for k, v in res.items():
            print(f"  {k:<28} ({v[0]['optimizer']:<16}) {med[k]:>9,.0f} tokens/s {ms[k]:7.1f} ms/step   runs: "
                  + ", ".join(f"{x['tokens_per_s']:,.0f}" for x in v))
        ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(o, b)]
        print(f"  ratio sft / bare: {med['ours'] / med['bare']:.2f}  (goal >= 0.9; per repeat: "
              + ", ".join(f"{x:.2f}" for x in ratios) + ")")


if __name__ == "__main__":
    main()
