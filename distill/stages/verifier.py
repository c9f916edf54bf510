"""Stage `verifier`: an outcome reward model trained from the filter's own verdicts.

Every teacher sample was graded by the task's checker in `filter` (verdicts.jsonl). The verifier is `model`'s
body with a scalar head (AutoModelForSequenceClassification, num_labels=1; a body that knows the tasks, e.g.
the SFT'd teacher), trained by TRL's RewardTrainer (Bradley-Terry: a correct sample's score above a wrong
one's) on pairs of a correct and a wrong sample: of the same problem, where the teacher both solved and
missed it, and, for each wrong sample, `partners` correct samples of other problems of the same task (a
teacher that solves most problems every time leaves few problems with both). Wrong includes a sample whose
thinking or answer was cut; contaminated problems are left out. The problems of `held_out` of the pairs (by a
hash of the id) are kept out of training and measure it: the share of their pairs ordered right.

What it scores is distill/reward.py's `text` (the chat template over the problem and the sample), which
`eval verifier=<model>` scores for best-of-k. Output: runs/<run>/verifier/<name>/{model/, manifest.json,
config.yaml}.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from distill import capabilities as caps
from distill import reward, tasks, training
from distill.artifacts import Fallbacks, UserError, finish, read_jsonl, stage_dir, staging
from distill.config import NonNeg, Pos, PosFloat, Share, opt


@dataclass
class VerifierConfig:
    run: str = opt("demo", "the run: outputs go to runs_dir/run/verifier/<name>/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("verifier", "the output's name")
    source: str = opt("teacher", "the traces and filter it learns from: runs/<run>/{traces,filter}/<source>/")
    traces: str = opt("", "default: runs/<run>/traces/<source>/traces.jsonl")
    verdicts: str = opt("", "default: runs/<run>/filter/<source>/verdicts.jsonl")
    problems: str = opt("", "default: runs/<run>/problems/train.jsonl")
    model: str = opt("", "the body it starts from: a causal LM folder (e.g. runs/<run>/sft/teacher/model)")
    partners: NonNeg = opt(4, "correct samples of other problems (same task) paired with each wrong sample")
    per_problem: Pos = opt(4, "pairs of the same problem at most")
    held_out: Share = opt(0.1, "the share of problems whose pairs measure the verifier instead of training it")
    lr: PosFloat = opt(1e-3, "learning rate")
    batch_size: Pos = opt(16, "pairs per step")
    max_steps: Pos = opt(300, "optimizer steps")
    max_length: Pos = opt(1024, "tokens of a scored sample at most (longer pairs are left out, counted)")
    seed: int = opt(0, "seeds the pairing, the split and the training")
    threads: NonNeg = opt(0, "torch threads (0: torch's default)")
    trl: dict = opt(dict, "TRL RewardConfig settings, over ours (e.g. {center_rewards_coefficient: 0.01})")

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is required (the body the verifier starts from, e.g. "
                             "runs/demo/sft/teacher/model)")


def pairs(samples: list[dict], cfg: VerifierConfig) -> tuple[list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    """(train, held-out) pairs of (correct, wrong) samples; each sample has problem_id, task, correct."""
    rng = random.Random(cfg.seed)
    by_problem: dict[str, list[dict]] = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
    right_by_task: dict[str, list[dict]] = {}
    for s in samples:
        if s["correct"]:
            right_by_task.setdefault(str(s.get("task")), []).append(s)
    train, held = [], []
    for pid, rows in by_problem.items():
        right = [s for s in rows if s["correct"]]
        wrong = [s for s in rows if not s["correct"]]
        out = held if tasks.split_of(pid, cfg.held_out) == "eval" else train  # by a hash of the id
        out += [(c, w) for c in right for w in wrong][:cfg.per_problem]
        for w in wrong:
            others = [s for s in right_by_task.get(str(w.get("task")), []) if s["problem_id"] != pid]
            out += [(c, w) for c in rng.sample(others, min(cfg.partners, len(others)))]
    rng.shuffle(train)
    return train, held


def run(cfg: VerifierConfig) -> Path:
    started = time.time()
    tr_path = Path(cfg.traces or stage_dir(cfg.runs_dir, cfg.run, "traces", cfg.source) / "traces.jsonl")
    vd_path = Path(cfg.verdicts or stage_dir(cfg.runs_dir, cfg.run, "filter", cfg.source) / "verdicts.jsonl")
    pr_path = Path(cfg.problems or stage_dir(cfg.runs_dir, cfg.run, "problems") / "train.jsonl")
    if not vd_path.is_file():
        raise UserError(f"verifier: {vd_path} not found (run `distill filter` first: it writes the verdicts)")
    traces = {(r["problem_id"], r["sample"]): r for r in read_jsonl(
        tr_path, required=("problem_id", "sample", "thinking", "answer"))}
    problems = {p["id"]: p for p in read_jsonl(pr_path, required=("id", "problem"))}
    verdicts = read_jsonl(vd_path, required=("problem_id", "sample", "correct"))
    missing = [(v["problem_id"], v["sample"]) for v in verdicts if (v["problem_id"], v["sample"]) not in traces]
    if missing:
        raise UserError(f"{vd_path}: sample {missing[0]} is not in {tr_path} ({len(missing)} such verdicts)")
    training.model_config(cfg.model)  # a folder with a config.json, or one line
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(cfg.model)
    samples = []
    for v in verdicts:
        if v.get("reason") == "contaminated":
            continue
        t, p = traces[(v["problem_id"], v["sample"])], problems[v["problem_id"]]
        samples.append({"problem_id": v["problem_id"], "task": p.get("task"), "correct": bool(v["correct"]),
                        "text": reward.text(tok, t.get("prompt") or p["problem"], t["thinking"], t["answer"])})
    train, held = pairs(samples, cfg)
    if not train:
        raise UserError(f"{vd_path}: no (correct, wrong) pairs to train on: the teacher's samples are all "
                        f"{'correct' if all(s['correct'] for s in samples) else 'wrong'}")
    ids = [{"chosen_ids": tok(c["text"], add_special_tokens=False).input_ids,
            "rejected_ids": tok(w["text"], add_special_tokens=False).input_ids} for c, w in train]
    kept = [r for r in ids if max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= cfg.max_length]
    facts = caps.probe()
    choices = caps.decide(caps.Wants(precision=caps.wanted_precision(cfg.trl)), facts)
    fallbacks = Fallbacks()
    caps.record(choices, fallbacks)
    precision = choices["precision"].used
    out = stage_dir(cfg.runs_dir, cfg.run, "verifier", cfg.name)
    with staging(out) as tmp:
        args = RewardConfig(**({
            "output_dir": str(tmp / "checkpoints"), "learning_rate": cfg.lr, "max_steps": cfg.max_steps,
            "per_device_train_batch_size": cfg.batch_size, "seed": cfg.seed, "logging_steps": 10,
            "save_strategy": "no", "report_to": "none", "gradient_checkpointing": False,
            "max_length": cfg.max_length, "use_cpu": not facts.cuda, "dataloader_num_workers": 0,
            "disable_tqdm": False} | cfg.trl | {"bf16": precision == "bf16", "fp16": precision == "fp16"}))
        model = AutoModelForSequenceClassification.from_pretrained(cfg.model, num_labels=1)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(kept), processing_class=tok)
        result = trainer.train()
        model.eval()
        ordered = None
        if held:
            tok.padding_side = "left"
            scores = reward.score(model, tok, [t for c, w in held for t in (c["text"], w["text"])])
            ordered = sum(a > b for a, b in zip(scores[::2], scores[1::2])) / len(held)
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        trainer.save_model(str(tmp / "model"))
        tok.save_pretrained(tmp / "model")
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        counts = {"samples": len(samples), "correct": sum(s["correct"] for s in samples),
                  "wrong": sum(not s["correct"] for s in samples), "pairs": len(train),
                  "pairs_too_long": len(ids) - len(kept), "held_out_pairs": len(held),
                  "held_out_ordered": ordered, "steps": trainer.state.global_step,
                  "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                  "train_s": round(result.metrics.get("train_runtime", 0.0), 1)}
        finish(tmp, "verifier", cfg, {"traces": tr_path, "verdicts": vd_path, "problems": pr_path}, counts,
               started, fallbacks=fallbacks.items)
    held_msg = f"; held-out pairs ordered right {ordered:.3f} ({len(held)})" if ordered is not None else ""
    print(f"verifier: {len(kept)} pairs ({counts['wrong']} wrong samples of {len(samples)}), "
          f"{counts['steps']} steps, loss {counts['first_loss']} -> {counts['final_loss']}{held_msg} -> "
          f"{out / 'model'}")
    return out
