"""kill -9 at a fixed moment, once per stage (traces, filter, sft, eval), then the same command again: nothing
half-written is visible at the final path, the re-run succeeds, and its result equals an uninterrupted run's
(traces and eval ignoring measured times; filter's train.jsonl and sft's weights bit for bit).
The reduced form of bench/kill_matrix.py (whose helpers it uses), on the `built` fixture's tiny model."""

import importlib.util
import shutil
import time

from distill.config import make
from distill.stages import filter as filt
from distill.stages import traces

from .conftest import ROOT

SEED = 5  # random.Random(5).uniform(0, d) = 0.62 d of a stage's reference duration d: mid-work here


def _bench():
    spec = importlib.util.spec_from_file_location("kill_matrix", ROOT / "bench" / "kill_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stage_resumes_to_the_same_result_after_kill_9(built, tmp_path):
    km = _bench()
    base = tmp_path / "base"  # the bench's layout: problems, tokenizer, init/tiny, solver traces, filter
    for part in ("problems", "tokenizer", "init/tiny"):
        shutil.copytree(built / "t" / part, base / part)
    traces.run(make(traces.TracesConfig, run="base", runs_dir=str(tmp_path), name="solver", backend="solver", n=1))
    filt.run(filt.FilterConfig(run="base", runs_dir=str(tmp_path), name="solver", keep_per_problem=1))
    records = []
    for stage in km.STAGES:
        started = time.perf_counter()
        ref = km.cli(*km.stage_args(stage, tmp_path, base, "ref", "test"))
        assert ref.returncode == 0, ref.stderr[-2000:]
        # traces and sft keep resumable work: they are killed as soon as there is some, and must resume it;
        # filter and eval write only whole outputs: they are killed at a moment mid-run
        resumable = stage in ("traces", "sft")
        rec = km.kill_and_resume(stage, tmp_path, base, SEED, time.perf_counter() - started, "test",
                                 at_partial_state=resumable)
        records.append(rec)
        assert rec["mid_run"] and rec["left"] != "finished", rec  # the kill landed while it worked
        if resumable:
            assert rec["left"].endswith(" rows") or rec["left"].startswith("checkpoint-"), rec
            assert rec["resumed"], rec  # the re-run took up what the killed run had written
        assert rec["half_written"] == [], rec
        assert rec["rerun_rc"] == 0, rec
        assert rec["mismatch"] == "", rec
        if stage in ("filter", "sft"):
            assert rec["byte_identical"], rec
    print("\n" + km.table(records))
