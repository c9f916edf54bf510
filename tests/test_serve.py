"""`distill serve` as a user runs it (a subprocess on a free loopback port) with the official `openai` client
talking to it, and `distill chat` driven through its stdin. The model is the untrained tiny Qwen2 of the
`built` fixture (copied: serve writes reasoning_effort.json into the model folder).

The served model's reasoning_effort calibration comes from a hand-made eval curve (CURVE): the untrained
model's own curve, measured by `distill eval` in test_calibration_from_a_real_eval, is flat noise, so its
three budgets could coincide and could not show that an effort changes the thinking length.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from distill import effort
from distill.artifacts import UserError, read_jsonl

from .conftest import ROOT, distill

KEY = "test-key-5f2c"
ENV_KEY = "DISTILL_TEST_SERVE_KEY"
# low = 8 (0.50 >= 0.75 x 0.6), medium = 16 (0.56 >= 0.9 x 0.6), high = 32 (the best)
CURVE = [(4, 0.30), (8, 0.50), (16, 0.56), (32, 0.60)]
EFFORTS = {"low": 8, "medium": 16, "high": 32}


@pytest.fixture(scope="module")
def model(built, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("serve") / "tiny"
    shutil.copytree(built / "t" / "init" / "tiny", dst)
    return dst


@pytest.fixture(scope="module")
def problems(built) -> list[str]:
    return [p["problem"] for p in read_jsonl(built / "t" / "problems" / "eval.jsonl")]


class Serve:
    """`distill serve ... port=0` in its own process; the URL is read from the line it prints."""

    def __init__(self, log: Path, *args: str, env: dict | None = None):
        self.log = log
        cmd = [sys.executable, "-m", "distill.cli", "serve", "port=0", "threads=1", *args]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "DISTILL_LOG": "WARNING", **(env or {})})
        deadline = time.time() + 300  # a guard against a hang, not a measurement
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
            assert self.proc.poll() is None, f"serve exited:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "serve did not start"
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{m.group(1)}/v1"

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=30).read())

    def post(self, path: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        try:
            request = urllib.request.Request(self.url + path, body, headers)
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    results = d / "results.json"
    curve = [{"budget": b, "accuracy": a} for b, a in CURVE]
    results.write_text(json.dumps({"models": [{"name": "tiny", "role": "student", "path": str(model),
                                               "budgets": curve}]}))
    s = Serve(d / "serve.log", f"model={model}", f"results={results}", f"api_key_env={ENV_KEY}",
              "max_tokens=64", "max_prompt_tokens=128", env={ENV_KEY: KEY})
    yield s
    s.stop()


def _client(s: Serve, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url, api_key=kw.pop("api_key", KEY), **kw)


def test_models_chat_and_streaming(server, model, problems):
    c = _client(server)
    [m] = c.models.list().data
    assert m.id == "tiny" and m.reasoning_effort == EFFORTS
    saved = json.loads((model / effort.FILE).read_text())  # calibrated, saved with the model
    assert saved["efforts"] == EFFORTS and saved["source"]["model"] == "tiny"

    ask = {"model": "tiny", "messages": [{"role": "user", "content": problems[0]}], "temperature": 0,
           "reasoning_effort": "high", "max_tokens": 48}
    r = c.chat.completions.create(**ask)
    msg, usage = r.choices[0].message, r.usage
    assert isinstance(msg.content, str) and isinstance(msg.reasoning_content, str)
    assert "<think>" not in msg.content and "</think>" not in msg.content
    assert 0 <= usage.completion_tokens_details.reasoning_tokens <= 32
    assert usage.completion_tokens <= 48
    assert r.choices[0].finish_reason in ("stop", "length")

    chunks = list(c.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    thinking = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (thinking, content) == (msg.reasoning_content, msg.content)  # temperature 0: the same sample
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == usage.model_dump()


def test_completions_are_the_raw_primitive(server, model, monkeypatch):
    c = _client(server)
    r = c.completions.create(model="tiny", prompt="<|im_start|>user\n1 2+3=?", max_tokens=5, temperature=0)
    assert isinstance(r.choices[0].text, str) and r.usage.completion_tokens <= 5
    ids = [5, 6, 7, 8]
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0,
                             extra_body={"return_token_ids": True, "include_stop_str_in_output": True})
    got = r.choices[0].token_ids
    assert 1 <= len(got) <= 6 and all(isinstance(t, int) for t in got)
    streamed = list(c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == r.choices[0].text

    # budget forcing through this server with the `openai` backend (token-id prompts, vLLM's extra fields)
    # gives the same tokens as the same sampling code in this process
    from distill import backends
    from distill import generate as G

    G.set_threads(1)
    monkeypatch.setenv(ENV_KEY, KEY)
    settings = {"base_urls": [server.url], "model": "tiny", "api_key_env": ENV_KEY,
                "cache": str(model.parent / "cache.jsonl")}
    remote = backends.load("openai", str(model), settings=settings, fallbacks=None)
    local = backends.load("transformers", str(model), settings={}, fallbacks=None)
    prompt = [G.think_prompt(local.tok, "1 6+4=?+2=?\n0 ?+4=?+2=?")]
    outs = []
    for b in (remote, local):
        (think, ans), = G.think_and_answer(b, prompt, max_thinking=6, max_answer=4, temperature=0, top_p=1,
                                           seed=0, desc="t")
        cut = think.ids[:-1] if think.stopped else think.ids
        forced = G.forced_answers(b, prompt, [cut], "Final answer:", max_answer=4, temperature=0, top_p=1,
                                  seed=0, desc="t")
        outs.append((think.ids, ans and ans.ids, forced[0].ids))
    assert outs[0] == outs[1]
    assert remote.counts["sent"] >= 2  # it did go through the server


def test_reasoning_effort_changes_the_thinking_length(server, problems):
    c = _client(server)

    def thinking(args):
        q, level = args
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                      reasoning_effort=level, temperature=0.8)
        return level, r.usage.completion_tokens_details.reasoning_tokens, r.choices[0].message.content

    asks = [(q, level) for q in problems[:6] for level in ("low", "high")]
    with ThreadPoolExecutor(8) as pool:  # arriving together: the server batches them
        got = list(pool.map(thinking, asks))
    tokens = {level: [n for lv, n, _ in got if lv == level] for level in ("low", "high")}
    assert max(tokens["low"]) <= EFFORTS["low"] and max(tokens["high"]) <= EFFORTS["high"]
    assert statistics.mean(tokens["low"]) < statistics.mean(tokens["high"]), tokens
    # a thinking that used its whole budget was closed and its answer forced with the cue, as in eval
    assert all(content.startswith("Final answer:") for lv, n, content in got if n == EFFORTS[lv])


def test_bad_requests_get_a_message_and_the_server_survives(server, problems):
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "1 2+3=?"}]}
    bad = [b"{not json", b"[1, 2]", *(json.dumps(chat | change).encode() for change in (
        {"messages": "hello"}, {"max_tokens": "ten"}, {"temperature": "hot"}, {"stream": "yes"},
        {"messages": [{"role": "robot", "content": "x"}]}, {"reasoning_effort": "extreme"}, {"n": 2}))]
    for body in bad:
        status, err = server.post("/chat/completions", body)
        assert status == 400 and err["error"]["message"], (body, status, err)
    status, err = server.post("/completions", json.dumps({"model": "tiny", "prompt": [1, 10**6]}).encode())
    assert status == 400 and "vocabulary" in err["error"]["message"]

    c = _client(server, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="over this server's limit of 64"):
        c.chat.completions.create(model="tiny", messages=chat["messages"], max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="at most 128"):
        c.completions.create(model="tiny", prompt=list(range(5, 205)), max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="other", messages=chat["messages"])
    with pytest.raises(openai.AuthenticationError):
        _client(server, api_key="wrong", max_retries=0).models.list()
    assert server.post("/chat/completions", b"{not json", key=None)[0] == 401  # the key is checked first

    assert server.proc.poll() is None
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": problems[1]}],
                                  max_tokens=20)
    assert r.choices[0].message.content is not None and server.health()["status"] == "ok"


def test_requests_in_flight_are_limited_and_batched(model, tmp_path):
    bare = tmp_path / "tiny"  # no calibration: thinking up to max_thinking, reasoning_effort refused
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns(effort.FILE))
    # a 15 s batch window holds the first requests in the queue, so the third one finds two in flight (3 s
    # was too short on a loaded machine: the second request arrived after the first batch had left)
    s = Serve(tmp_path / "serve.log", f"model={bare}", "max_in_flight=2", "batch_window_ms=15000",
              "max_thinking=8", "max_tokens=16")
    try:
        c = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)
        ask = {"model": "tiny", "messages": [{"role": "user", "content": "1 2+3=?"}]}
        with ThreadPoolExecutor(2) as pool:
            first = [pool.submit(c.chat.completions.create, **ask) for _ in range(2)]
            deadline = time.time() + 60  # a guard against a hang, not a measurement
            while s.health()["in_flight"] < 2 and time.time() < deadline:
                time.sleep(0.05)
            with pytest.raises(openai.RateLimitError, match="max_in_flight=2"):
                c.chat.completions.create(**ask)
            done = [f.result() for f in first]
        assert all(r.usage.completion_tokens_details.reasoning_tokens <= 8 for r in done)
        h = s.health()
        assert h["largest_batch"] == 2 and h["rejected_429"] == 1 and h["in_flight"] == 0
        with pytest.raises(openai.BadRequestError, match="no calibration"):
            c.chat.completions.create(**ask, reasoning_effort="low")
    finally:
        s.stop()


def test_chat_against_a_server_through_stdin(server, problems):
    question = problems[0].replace("\n", "\\n")  # typed on one line
    script = f"{question}\n/effort low\n/reset\n{question}\n/effort extreme\n/quit\n"
    args = [sys.executable, "-m", "distill.cli", "chat", f"url={server.url}", f"api_key_env={ENV_KEY}"]
    env = {**os.environ, ENV_KEY: KEY}
    out = subprocess.run(args, input=script, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\x1b[2m" in out.stdout  # the thinking, dimmed
    assert "effort: low (thinking <= 8 tokens)" in out.stdout and "commands: /effort" in out.stdout
    used = [int(n) for n in re.findall(r"\[(\d+) thinking tokens\]", out.stdout)]
    assert len(used) == 2 and used[0] <= EFFORTS["medium"] and used[1] <= EFFORTS["low"], out.stdout

    hidden = subprocess.run([*args, "show_thinking=false"], input=f"{question}\n", capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert hidden.returncode == 0 and "\x1b[" not in hidden.stdout and "thinking tokens" not in hidden.stdout


def test_chat_with_a_local_model_through_stdin(model):
    out = subprocess.run([sys.executable, "-m", "distill.cli", "chat", f"model={model}", "threads=1",
                          "max_thinking=12"], input="1 2+3=?\n", capture_output=True, text=True, cwd=ROOT,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"\[(\d+) thinking tokens\]", out.stdout) and "\x1b[2m" in out.stdout


def test_calibration_from_a_real_eval(built, model, tmp_path):
    models = [{"name": "tiny", "role": "student", "path": str(model)}]
    distill("eval", f"runs_dir={tmp_path}", "run=e", f"problems={built / 't/problems/eval.jsonl'}", "limit=8",
            f"models={json.dumps(models)}", "budgets=[4,8,16]", "n=1", "max_answer_tokens=4", "threads=1")
    results = tmp_path / "e" / "eval" / "results.json"
    cal = effort.calibrate(results, str(model))  # found by its path, as serve finds it
    low, medium, high = (cal["efforts"][k] for k in ("low", "medium", "high"))
    assert {low, medium, high} <= {4, 8, 16} and low <= medium <= high
    assert cal["accuracy"]["high"] == cal["best_accuracy"] == max(b["accuracy"] for b in cal["curve"])
    with pytest.raises(UserError, match="no model named 'other'"):
        effort.calibrate(results, str(model), "other")
    bad = distill("serve", f"model={model}", f"results={tmp_path / 'none.json'}", check=False)
    assert bad.returncode == 2 and "eval results not found" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1  # one line, no traceback
