"""kill -9 matrix: does every stage survive being killed at a random moment, and resume to the same result?

For each of the stages traces, filter, sft and eval, on a small setup built here under runs/bench-kill/:
1. run the stage uninterrupted into run=ref and time it;
2. for each seed, start the same command into run=k<seed> (same input paths), SIGKILL its whole process
   group after random.Random(seed).uniform(0, reference duration) seconds;
3. check that nothing half-written is visible at the final path (staged outputs live in hidden
   `.<name>.partial` folders; a manifest.json means the data beside it is complete; traces' append-only log
   may be partial by design, but every line except a torn last one must parse);
4. re-run the same command to completion and compare with the reference: traces.jsonl (byte-identical, and
   identical without its measured `wall_s`), filter's train.jsonl (bytes), sft's model.safetensors (every
   tensor torch.equal), eval's results.json and samples.jsonl (of the reference sft model) minus
   timing/cost/latency/created fields.
Prints one table (kills, killed mid-run (and of those, how many had already written their output, i.e. died
in teardown) vs finished before the kill, re-runs that resumed partial state or found the run up to date,
half-written artifacts seen, re-run ok, byte-identical, mismatches) and the seeds; details go to
runs/bench-kill/kill_matrix.json.

    flock /tmp/heavy.lock .venv/bin/python bench/kill_matrix.py [--kills-per-stage 6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("traces", "filter", "sft", "eval")
TINY = ("{hidden_size: 32, num_hidden_layers: 1, intermediate_size: 64, num_attention_heads: 2, "
        "num_key_value_heads: 2}")
DROP = ("cost", "latency", "created", "timing", "tokens_per_s", "peak_mem", "wall_s")  # measured times
ENV = {**os.environ, "DISTILL_LOG": "WARNING"}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def build_base(runs: Path) -> Path:
    """problems, tokenizer, an untrained tiny model and solver traces + their filtered set (sft's data)."""
    r = [f"runs_dir={runs}", "run=base"]
    for args in (["problems", "--config", "eval/demo.yaml", *r, "train_per_task=300", "eval_per_task=10"],
                 ["tokenizer", "--config", "eval/demo.yaml", *r], ["init", *r, "name=tiny", f"arch={TINY}"],
                 ["traces", *r, "name=solver", "backend=solver", "n=1", "threads=1"],
                 ["filter", *r, "name=solver", "keep_per_problem=1"]):
        p = cli(*args)
        if p.returncode:
            raise SystemExit(f"setup failed: distill {' '.join(args)}:\n{p.stderr[-2000:]}")
    return runs / "base"


# the bench's sizes (work long enough that most random kills land mid-work) and the test's (seconds)
SIZES = {"bench": {"n": 8, "limit": 120, "max_new_tokens": 128, "steps": 300, "budgets": [8, 32, 64],
                   "eval_n": 4, "eval_limit": 20},
         "test": {"n": 8, "limit": 60, "max_new_tokens": 128, "steps": 150, "budgets": [8, 32], "eval_n": 2,
                  "eval_limit": 10}}


def stage_args(stage: str, runs: Path, base: Path, run: str, size: str = "bench") -> list[str]:
    """The command line of one stage; every run reads the same inputs under `base`."""
    z = SIZES[size]
    r = [f"runs_dir={runs}", f"run={run}"] + (["threads=1"] if stage != "filter" else [])  # filter: no torch
    model, train = base / "init" / "tiny", base / "problems" / "train.jsonl"
    if stage == "traces":
        return ["traces", *r, "name=k", f"model={model}", f"problems={train}", f"n={z['n']}",
                f"limit={z['limit']}", f"max_thinking={z['max_new_tokens']}", "max_answer_tokens=8",
                "chunk=16", "batch_size=16"]
    if stage == "filter":
        return ["filter", *r, "name=k", f"traces={base / 'traces/solver/traces.jsonl'}", f"problems={train}"]
    if stage == "sft":
        return ["sft", *r, "name=k", f"model={model}", f"data={base / 'filter/solver/train.jsonl'}",
                f"trl={{max_steps: {z['steps']}}}", "save_steps=10", "batch_size=8", "lr=3e-3",
                "logging_steps=10"]
    trained = runs / "ref/sft/k/model"  # the reference sft's model once it exists: some answers are right
    model = trained if trained.is_dir() else model
    return ["eval", *r, f"problems={base / 'problems/eval.jsonl'}",
            f"models=[{{name: tiny, role: student, path: {model}}}]", f"budgets={z['budgets']}",
            f"n={z['eval_n']}", "max_answer_tokens=4", "batch_size=16", f"limit={z['eval_limit']}"]


def out_dir(runs: Path, run: str, stage: str) -> Path:
    return runs / run / "eval" if stage == "eval" else runs / run / stage / "k"


def kill_after(args: list[str], delay: float, ready=None) -> bool:
    """Start the stage in its own session, SIGKILL the whole group after `delay` s, or (with `ready`, a
    function of nothing) as soon as ready() is true. True if it was still running (killed mid-run), False if
    it had finished before."""
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if ready is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
    else:
        while proc.poll() is None and not ready():
            time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):  # the group is gone if the stage and its workers are done
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _parses(path: Path, allow_torn_tail: bool = False) -> bool:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            data = path.read_bytes()
            if allow_torn_tail and not data.endswith(b"\n"):
                data = data[:data.rfind(b"\n") + 1]
            [json.loads(line) for line in data.decode().split("\n") if line.strip()]
        return True
    except (ValueError, UnicodeDecodeError):
        return False


REQUIRED = {"traces": ("traces.jsonl", "config.yaml"), "filter": ("train.jsonl", "stats.json", "config.yaml"),
            "sft": ("model/model.safetensors", "model/config.json", "config.yaml", "log.jsonl"),
            "eval": ("results.json", "samples.jsonl", "results.csv", "config.yaml")}


def half_written(stage: str, out: Path) -> list[str]:
    """What a reader could see at the final path that is incomplete (empty list: nothing)."""
    if not out.exists():
        return []
    bad = []
    finished = (out / "manifest.json").is_file()
    if finished:
        bad += [f"manifest.json without {f}" for f in REQUIRED[stage] if not (out / f).is_file()]
    elif stage in ("filter", "eval"):
        bad.append(f"{out} visible without manifest.json")  # staged: it should appear complete or not at all
    if stage == "sft" and (out / "model").is_dir() and not (out / "model" / "model.safetensors").is_file():
        bad.append("model/ without model.safetensors")
    for f in out.rglob("*.json*"):
        hidden = any(p.startswith(".") for p in f.relative_to(out).parts)
        if not hidden and "checkpoints" not in f.parts and not _parses(f, stage == "traces" and not finished):
            bad.append(f"{f.relative_to(out)} does not parse")
    return bad


def partial_state(stage: str, out: Path) -> str:
    """Resumable state the kill left behind (traces: rows in the log; sft: complete checkpoints)."""
    if (out / "manifest.json").is_file():
        return "finished"
    if stage == "traces" and (out / "traces.jsonl").is_file():
        return f"{(out / 'traces.jsonl').read_bytes().count(10)} rows"
    if stage == "sft" and (out / "checkpoints").is_dir():
        done = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                      if (p / "trainer_state.json").is_file())
        return f"checkpoint-{done[-1]}" if done else "no complete checkpoint"
    return "nothing"


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(d in k for d in DROP)}
    return [_strip(v) for v in obj] if isinstance(obj, list) else obj


def _jsonl(path: Path) -> list:
    return [_strip(json.loads(line)) for line in path.read_text().split("\n") if line.strip()]


def compare(stage: str, out: Path, ref: Path) -> tuple[bool, str]:
    """(byte-identical, mismatch description or '') of a finished run against the reference."""
    if stage == "sft":
        import torch
        from safetensors.torch import load_file

        mine, theirs = out / "model/model.safetensors", ref / "model/model.safetensors"
        a, b = load_file(mine), load_file(theirs)
        if a.keys() != b.keys():
            return False, f"tensor names differ: {sorted(a.keys() ^ b.keys())}"
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        same_bytes = mine.read_bytes() == theirs.read_bytes()
        return same_bytes, (f"{len(differ)}/{len(a)} tensors differ, e.g. {differ[0]} (max abs diff "
                            f"{(a[differ[0]] - b[differ[0]]).abs().max().item():.3g})" if differ else "")
    files = {"traces": ["traces.jsonl"], "filter": ["train.jsonl"],
             "eval": ["results.json", "samples.jsonl"]}[stage]
    same_bytes, bad = True, []
    for f in files:
        same_bytes &= (out / f).read_bytes() == (ref / f).read_bytes()
        a, b = (_jsonl(out / f), _jsonl(ref / f)) if f.endswith(".jsonl") else \
            (_strip(json.loads((out / f).read_text())), _strip(json.loads((ref / f).read_text())))
        if a != b:
            n = sum(x != y for x, y in zip(a, b)) if isinstance(a, list) else 1
            bad.append(f"{f}: {n} rows differ" + (f", {len(a)} vs {len(b)} rows" if len(a) != len(b) else ""))
    return same_bytes, "; ".join(bad)


def has_partial_state(stage: str, out: Path) -> bool:
    """Resumable work on disk and the stage not done: rows in traces' log, a complete sft checkpoint."""
    left = partial_state(stage, out)
    return left not in ("nothing", "finished", "no complete checkpoint", "0 rows")


def kill_and_resume(stage: str, runs: Path, base: Path, seed: int, duration: float,
                    size: str = "bench", at_partial_state: bool = False) -> dict:
    """Kill a run of the stage at a random moment (or, with at_partial_state, as soon as it has resumable
    work on disk), re-run it, and compare with the reference."""
    run = f"k{seed}"
    args = stage_args(stage, runs, base, run, size)
    delay = random.Random(seed).uniform(0.0, duration)
    out = out_dir(runs, run, stage)
    mid = kill_after(args, delay, (lambda: has_partial_state(stage, out)) if at_partial_state else None)
    rec = {"stage": stage, "seed": seed, "delay_s": round(delay, 3), "mid_run": mid,
           "left": partial_state(stage, out), "half_written": half_written(stage, out)}
    started = time.perf_counter()
    p = cli(*args)
    rec |= {"rerun_rc": p.returncode, "rerun_s": round(time.perf_counter() - started, 2),
            "resumed": p.returncode == 0 and bool(re.search(r"sft: resuming from|up to date|traces: [1-9]\d* "
                                                            r"samples already done", p.stdout)),
            "rerun_err": p.stderr.strip().splitlines()[-1] if p.returncode and p.stderr.strip() else ""}
    if p.returncode == 0:
        rec["byte_identical"], rec["mismatch"] = compare(stage, out, out_dir(runs, "ref", stage))
    return rec


def table(records: list[dict]) -> str:
    head = ("stage", "kills", "killed mid-run", "(of which after output was done)", "finished before kill",
            "resumed state", "half-written seen", "re-run ok", "byte-identical", "mismatches")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for stage in dict.fromkeys(r["stage"] for r in records):
        rs = [r for r in records if r["stage"] == stage]
        row = (stage, len(rs), sum(r["mid_run"] for r in rs),
               sum(r["mid_run"] and r["left"] == "finished" for r in rs),
               sum(not r["mid_run"] for r in rs), sum(r["resumed"] for r in rs),
               sum(bool(r["half_written"]) for r in rs), sum(r["rerun_rc"] == 0 for r in rs),
               sum(bool(r.get("byte_identical")) for r in rs),
               sum(bool(r.get("mismatch")) or r["rerun_rc"] != 0 for r in rs))
        lines.append(" | ".join(map(str, row)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills-per-stage", type=int, default=6)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--runs-dir", default="runs/bench-kill")
    a = ap.parse_args()
    runs = ROOT / a.runs_dir  # the stages run from the repository root
    shutil.rmtree(runs, ignore_errors=True)
    t0 = time.perf_counter()
    base = build_base(runs)
    records, durations = [], {}
    for stage in a.stages.split(","):
        started = time.perf_counter()
        p = cli(*stage_args(stage, runs, base, "ref"))
        if p.returncode:
            raise SystemExit(f"reference {stage} failed:\n{p.stderr[-2000:]}")
        durations[stage] = time.perf_counter() - started
        print(f"{stage}: reference run {durations[stage]:.1f}s", flush=True)
        if stage == "eval":  # what the comparison covers: accuracies per budget and every sample's grade
            res = json.loads((out_dir(runs, "ref", stage) / "results.json").read_text())["models"][0]
            print(f"  accuracy by budget: {[(b['budget'], b['accuracy']) for b in res['budgets']]}")
        for seed in range(a.kills_per_stage):
            rec = kill_and_resume(stage, runs, base, seed, durations[stage])
            records.append(rec)
            when = "mid-run" if rec["mid_run"] else "after finish"
            print(f"  seed {seed}: kill at {rec['delay_s']:.2f}s, {when}, left {rec['left']}; half-written "
                  f"{rec['half_written'] or 'none'}; re-run rc {rec['rerun_rc']} in {rec['rerun_s']}s"
                  f"{' (resumed)' if rec['resumed'] else ''}; byte-identical {rec.get('byte_identical')}; "
                  f"mismatch: {rec.get('mismatch') or rec['rerun_err'] or 'none'}", flush=True)
    total = time.perf_counter() - t0
    print("\n" + table(records))
    print(f"\nseeds: {list(range(a.kills_per_stage))} per stage (delay = random.Random(seed).uniform(0, "
          f"reference duration)); reference durations: { {k: round(v, 1) for k, v in durations.items()} }; "
          f"total {total:.0f}s")
    report = {"durations": durations, "total_s": total, "records": records}
    (runs / "kill_matrix.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
