"""Training to a target (sft's `until:`): stop on the task's own metric, not on a guessed step count.

Every `every` optimizer steps (and at the last one) the model answers a dev split of the training problems
greedily, with budget forcing at `sampling.max_thinking` (distill/generate.py, as `eval` samples), graded by the
checker `eval` uses (distill/verify.py). Training stops at the first check that reaches `accuracy`, bounded by
max_steps (or the epochs). The best check's weights are kept (under best/ while training), so a run that never
reaches its target ends with the best model it had, not merely its last. The dev split is drawn only from
problems that have rows in the training data (never the held-out ones), and those problems' rows are held out
of training, so the check measures problems the model has not trained on.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter

from distill import generate as G
from distill import verify
from distill.artifacts import UserError, atomic_write_json, read_jsonl, staging
from distill.config import Pos, Share, opt
from distill.sampling import Sampling

log = logging.getLogger("distill")


@dataclass
class Until:
    accuracy: Share = opt(0.9, "stop once the dev split's accuracy reaches this")
    problems: str = opt("", "the training problems with their answers (default runs/<run>/problems/train.jsonl)")
    dev: Pos = opt(100, "problems in the dev split (drawn from those with training rows; held out of training)")
    every: Pos = opt(50, "optimizer steps between checks (and one at the last step)")
    batch_size: Pos = opt(64, "dev prompts generated together")
    sampling: dict = opt(dict, "how the dev split is sampled: any sampling key (distill <stage> --help); "
                               "default greedy, thinking up to 256 tokens")
    __pydantic_config__ = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    def __post_init__(self):
        if isinstance(self.sampling, dict):  # the sampling keys as declared once, greedy unless told otherwise
            unknown = set(self.sampling) - {f.name for f in fields(Sampling)}
            if unknown:
                raise ValueError(f"until.sampling: unknown key(s) {sorted(unknown)}")
            self.sampling = TypeAdapter(Sampling).validate_python({"temperature": 0.0} | self.sampling)


def _user_text(row: dict) -> str:
    return next((m["content"] for m in row["messages"] if m["role"] == "user"), "")


def dev_split(until: Until, problems_path: Path, rows: list[dict], seed: int) -> tuple[list[dict], list[int]]:
    """(the dev problems, the indices of the training rows left): `until.dev` problems drawn (by `seed`) from
    those whose text is a user turn of the training rows; every row of a drawn problem is held out."""
    problems = read_jsonl(problems_path, required=("problem", "answer"))
    texts = {_user_text(r) for r in rows}
    pool = [p for p in problems if (p.get("prompt") or p["problem"]) in texts]
    if not pool:
        raise UserError(f"sft: until.problems {problems_path}: none of its problems is in the training data "
                        "(the dev split is drawn from the problems the model trains on)")
    dev = random.Random(seed).sample(pool, min(until.dev, len(pool)))
    held = {p.get("prompt") or p["problem"] for p in dev}
    keep = [i for i, r in enumerate(rows) if _user_text(r) not in held]
    if not keep:
        raise UserError(f"sft: until.dev={until.dev} holds out every training row; lower it")
    return dev, keep


def accuracy(model, tok, problems: list[dict], until: Until) -> float:
    """The share of `problems` answered right: thinking up to max_thinking tokens, a cut thinking closed and its
    answer forced with the cue (budget forcing), graded as `eval` grades."""
    from distill.backends.transformers import TransformersBackend

    s = until.sampling
    backend = TransformersBackend(model, tok, until.batch_size)
    prompts = [G.think_prompt(tok, p.get("prompt") or p["problem"]) for p in problems for _ in range(s.n)]
    gen = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    results = G.think_and_answer(backend, prompts, max_thinking=s.max_thinking, max_answer=s.max_answer_tokens,
                                 seed=s.seed, desc="dev", min_thinking=s.min_thinking, wait=s.wait,
                                 max_waits=s.max_waits, **gen)
    cut = [i for i, (_, ans) in enumerate(results) if ans is None]
    thinking = [t.ids[:-1] if t.stopped else t.ids for t, _ in results]
    forced = G.forced_answers(backend, [prompts[i] for i in cut], [thinking[i] for i in cut], s.answer_cue,
                              max_answer=s.max_answer_tokens, seed=s.seed + 1, desc="dev forced", **gen)
    texts = [G.decode(tok, ans.ids) if ans is not None else None for _, ans in results]
    for i, ans in zip(cut, forced):
        texts[i] = s.answer_cue + " " + G.decode(tok, ans.ids)
    graded = verify.grade_problems([(problems[i // s.n], t) for i, t in enumerate(texts)], processes=1)
    return sum(ok for ok, _, _ in graded) / len(graded)


def callback(until: Until, problems: list[dict], tok, best_dir: Path):
    """A TrainerCallback running the checks. Its curve lives in the Trainer's log history (`dev_accuracy`), so
    it is in every checkpoint and a resumed run goes on with it; the best check's weights are saved in
    `best_dir` (through the Trainer: every rank joins a ZeRO-3 gather) with best.json beside them."""
    from transformers import TrainerCallback

    from distill.backends.transformers import prepare_tokenizer

    gen_tok = prepare_tokenizer(copy.deepcopy(tok))

    class Target(TrainerCallback):
        trainer = None  # set by sft once the Trainer exists (saving the best goes through it)
        seconds = 0.0
        after_first = 0.0  # the checks' seconds after step 1: what the step timer's steady rate must leave out

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % until.every and state.global_step < state.max_steps:
                return
            started = time.perf_counter()
            model.eval()
            acc = accuracy(model, gen_tok, problems, until)
            model.train()
            state.log_history.append({"step": state.global_step, "dev_accuracy": round(acc, 4)})
            best = self.best()
            if best is None or acc > best["dev_accuracy"]:
                self.trainer.save_model(str(best_dir))
                if self.trainer.is_world_process_zero():
                    atomic_write_json(best_dir / "best.json", {"step": state.global_step, "dev_accuracy": acc})
            if acc >= until.accuracy:
                control.should_training_stop = True
            self.seconds += time.perf_counter() - started
            self.after_first += (time.perf_counter() - started) * (state.global_step > 1)
            log.info("sft: dev accuracy %.3f at step %d (target %g)", acc, state.global_step, until.accuracy)

        def best(self) -> dict | None:
            path = best_dir / "best.json"
            return json.loads(path.read_text()) if path.is_file() else None

    return Target()


def finish(target, history: list[dict], until: Until, dev: list[dict], held_rows: int, steps: int, name: str,
           say: bool = True) -> dict:
    """What the run did with its target, for the manifest and one line on the terminal; whether the best
    check's weights (not the last step's) are the model to keep."""
    curve = [[h["step"], h["dev_accuracy"]] for h in history if "dev_accuracy" in h]
    best = target.best() or {"step": steps, "dev_accuracy": curve[-1][1] if curve else 0.0}
    met = next((s for s, a in curve if a >= until.accuracy), None)
    if say and met is not None:
        print(f"sft: {name}: dev accuracy {curve[-1][1]:.3f} reached the target {until.accuracy:g} at step {met}")
    elif say:
        print(f"sft: {name}: dev accuracy never reached {until.accuracy:g} in {steps} steps; keeping the best "
              f"check: {best['dev_accuracy']:.3f} at step {best['step']}")
    use_best = met is None and bool(curve) and best["dev_accuracy"] > curve[-1][1]
    kept = [best["step"], best["dev_accuracy"]] if use_best else curve[-1] if curve else [steps, None]
    return {"target": until.accuracy, "met_at_step": met, "steps": steps, "kept_step": kept[0],
            "kept_accuracy": kept[1], "curve": curve, "dev_problems": len(dev), "rows_held_out": held_rows,
            "check_s": round(target.seconds, 3), "use_best": use_best,
            "dev_ids": [p.get("id", p["problem"]) for p in dev]}


def keep_best(best_dir: Path, dest: Path, tok) -> None:
    """The best check's weights as the run's model (a run that never met its target)."""
    with staging(dest) as tmp:
        for f in best_dir.iterdir():
            if f.name != "best.json":
                shutil.copy2(f, tmp / f.name)
        tok.save_pretrained(tmp)
