"""Every command of README.md and docs/*.md runs as written (litgpt's test_readme), in the order a reader meets
them, on a copy of the repository: each fenced bash block must exit 0. A block is left out only when the HTML
comment right above it says `test: skip (<why>)`: it needs a GPU or the network, or it is the test suite
itself. `test: with VAR=value ... (<why>)` runs it as written with those variables in its environment (Make's
`?=` knobs: the same targets, smaller). `test: background` starts a server: the test waits for its port, runs the page's next blocks against
it, and stops it before the next server or at the end of the page. The embedded default throughout: `make demo`
first, then what the pages do with its outputs."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from distill import effort

from .conftest import ROOT, SHARED

PAGES = ["README.md", "docs/demo.md", "docs/teachers.md", "docs/gpus.md", "docs/eval.md", "docs/serving.md",
         "docs/guarantees.md", "docs/cpu.md", "docs/config.md"]
WITH = r"with ((?:[A-Z_]+=\S+ )+)\("  # `with OPD_S=10 STEPS=100 (why)`
BLOCK = re.compile(r"(?:<!-- test: (?P<mark>[^\n]*?) -->\n)?```bash\n(?P<code>.*?)```", re.S)


def blocks(page: str) -> list[tuple[str, str]]:
    """(mark, code) of each bash block of a page, in order; mark is '' for a plain block."""
    return [(m["mark"] or "", m["code"]) for m in BLOCK.finditer((ROOT / page).read_text())]


def test_every_block_is_run_or_says_why_not():
    marks = [mark for page in PAGES for mark, _ in blocks(page)]
    assert len(marks) >= 20
    for mark in marks:  # a block is left out only for a GPU, the network, or being the test suite itself
        assert mark == "" or mark.startswith("background") or re.match(
            r"skip \((gpu|network|this is the test suite)", mark) or re.match(WITH, mark), mark
    # every fenced block of the pages is a bash block (a command written any other way would escape the test)
    for page in PAGES:
        for lang in re.findall(r"^```(\w+)", (ROOT / page).read_text(), re.M):
            assert lang == "bash", (page, lang)


def _copy(dest: Path) -> Path:
    """The repository as a fresh clone has it (tracked and new files), with this checkout's environments."""
    skip = shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=skip)
    for venv in (".venv", ".venv-vllm"):
        if (ROOT / venv).is_dir():
            (dest / venv).symlink_to(ROOT / venv)
    return dest


def _port(code: str) -> int:
    m = re.search(r"(?:port=|--port )(\d+)", code)
    assert m, f"a background block names no port:\n{code}"
    return int(m.group(1))


def _wait_for(port: int, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_every_command_of_the_readme_and_docs_runs(tmp_path):
    repo = _copy(tmp_path / "repo")
    env = {**os.environ, "DISTILL_DATA": str(SHARED), "DISTILL_LOG": "WARNING"}
    vllm = (ROOT / ".venv-vllm").is_dir()
    ran = 0
    for page in PAGES:
        server = None
        try:
            for i, (mark, code) in enumerate(blocks(page)):
                if mark.startswith("skip"):
                    continue
                if ".venv-vllm" in code and not vllm and not os.environ.get("CI"):
                    continue  # as the vLLM tests: needs `make install-vllm`
                log = tmp_path / f"{page.replace('/', '_')}-{i}.log"
                if mark.startswith("background"):
                    _stop(server)
                    with open(log, "w") as f:
                        server = subprocess.Popen(["bash", "-c", code], cwd=repo, env=env, stdout=f,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  start_new_session=True)
                    _wait_for(_port(code), server, log)
                    continue
                knobs = re.match(WITH, mark)
                knobs = dict(kv.split("=", 1) for kv in knobs.group(1).split()) if knobs else {}
                proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=repo, env={**env, **knobs},
                                      capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
                assert proc.returncode == 0, f"{page}, block {i}:\n{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
                ran += 1
        finally:
            _stop(server)
    assert ran >= 15
    # what the README promises of the demo
    assert (repo / "runs" / "demo" / "report.md").is_file() and (repo / "runs" / "demo" / "eval" / "results.csv").is_file()
    # the demo's budgets reach past student-l's plateau: its three reasoning efforts are three budgets
    efforts = effort.calibrate(repo / "runs" / "demo" / "eval" / "results.json", "", "student-l")["efforts"]
    assert len(set(efforts.values())) == 3, efforts
