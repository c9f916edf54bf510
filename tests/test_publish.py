"""`distill publish`: the dry-run folders, and `--push` against a Hub stand-in on 127.0.0.1 (HF_ENDPOINT).

The stand-in speaks the HTTP calls huggingface_hub makes for create_repo, create_branch and upload_folder:
POST /api/repos/create, POST /api/{type}s/{id}/branch/{rev}, POST /api/validate-yaml, POST
/api/{type}s/{id}/preupload/{rev}, the LFS batch POST [datasets/]{id}.git/info/lfs/objects/batch, a PUT to the
href it returns, and POST /api/{type}s/{id}/commit/{rev} (NDJSON). With hf_xet installed, huggingface_hub
uploads LFS files through the Xet storage protocol instead, which this stand-in does not implement: the
publish process gets HF_HUB_DISABLE_XET=1, so the same upload_folder call takes the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from distill.config import make

from .conftest import ROOT

TOKEN = "hf_planted" + "Xq7vTz3Rk9LmW2pN5sJd8Fh"
REPO, DATA_REPO, NAME = "test-org/tiny-student", "test-org/tiny-student-traces", "tiny-student"
LFS_SUFFIXES = (".safetensors", ".parquet", ".png", ".bin")


class Hub:
    """Repos, branches and files as the stand-in Hub holds them, and every request it saw."""

    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.forbid_type = ""  # answer 403 to create_repo of this repo type (a failure half-way)
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code >= 400:
            self.send_header("X-Error-Message", obj.get("error", ""))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        hub, body, path = self.hub, self._body(), urlparse(self.path).path
        with hub.lock:
            hub.requests.append({"method": method, "path": self.path, "body": body,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
            try:
                code, obj = self._route(hub, method, path, body)
            except Exception as e:  # a bug in the stand-in: visible to the test as a 500
                code, obj = 500, {"error": f"stand-in: {type(e).__name__}: {e}"}
        self._send(code, obj)

    def _route(self, hub: Hub, method: str, path: str, body: bytes):
        base = f"http://{self.headers['Host']}"
        if method == "PUT" and path.startswith("/lfs-upload/"):  # the pre-signed URL the batch answer gave
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}
            hub.blobs[oid] = body
            return 200, {}
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        payload = json.loads(body) if body and "ndjson" not in self.headers.get("Content-Type", "") else None
        if method == "POST" and path == "/api/repos/create":
            kind, repo = payload.get("type", "model"), f"{payload['organization']}/{payload['name']}"
            if kind == hub.forbid_type:
                return 403, {"error": "You don't have the rights to create a repo in this namespace"}
            url = f"{base}/{'datasets/' if kind == 'dataset' else ''}{repo}"
            if (kind, repo) in hub.repos:  # the Hub's 409 names the existing repo's url too
                return 409, {"error": "You already created this repo", "url": url}
            hub.repos[(kind, repo)] = {"private": payload.get("visibility") == "private",
                                       "branches": {"main": {}}}
            return 200, {"url": url}
        if method == "POST" and path == "/api/validate-yaml":
            yaml.safe_load(payload["content"].split("---")[1])
            return 200, {"errors": [], "warnings": []}
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and m:
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{base}/lfs-upload/{o['oid']}", "header": {}}}}
                for o in payload["objects"]]}
        m = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)(?:/(preupload|commit|branch)/(.+))?", path)
        if not m or (m[1], m[2]) not in hub.repos:
            return 404, {"error": "Repository not found"}
        repo, branch = hub.repos[(m[1], m[2])], unquote(m[4] or "main")
        if m[3] == "branch":
            if branch in repo["branches"]:
                return 409, {"error": "Reference already exists"}
            repo["branches"][branch] = dict(repo["branches"]["main"])
            return 200, {}
        if m[3] is None or branch not in repo["branches"]:
            return 404, {"error": "Invalid rev id"}
        if m[3] == "preupload":
            return 200, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None, "uploadMode":
                                    "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 << 20
                                    or b"\0" in base64.b64decode(f["sample"]) else "regular"}
                                   for f in payload["files"]]}
        files = repo["branches"][branch]
        for line in body.splitlines():
            op = json.loads(line)
            v = op["value"]
            if op["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif op["key"] == "lfsFile":
                if v["oid"] not in hub.blobs:
                    return 400, {"error": f"LFS object {v['oid']} was never uploaded"}
                files[v["path"]] = hub.blobs[v["oid"]]
        oid = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{base}/{m[2]}/commit/{oid}"}


@pytest.fixture
def hub():
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"hub": state}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pub(built):
    """Run `pub` beside `built`'s: solver traces, filter, a 2-step sft of the tiny model, a tiny eval."""
    from distill.stages import eval as ev
    from distill.stages import filter as filt
    from distill.stages import sft, traces

    t, kw = built / "t", {"run": "pub", "runs_dir": str(built)}
    train = str(t / "problems" / "train.jsonl")
    traces.run(make(traces.TracesConfig, **kw, name="solver", backend="solver", n=1, tokenizer=str(t / "tokenizer"),
                                   problems=train))
    filt.run(filt.FilterConfig(**kw, name="solver", keep_per_problem=1, problems=train))
    sft.run(sft.SftConfig(**kw, name=NAME, model=str(t / "init" / "tiny"), optim="adamw_torch", threads=1,
                          data=str(built / "pub" / "filter" / "solver" / "train.jsonl"),
                          trl={"max_steps": 2}))
    student = str(built / "pub" / "sft" / NAME / "model")
    ev.run(make(ev.EvalConfig, **kw, problems=str(t / "problems" / "eval.jsonl"), budgets=[2, 6, 12], n=2,
                         max_answer_tokens=4, batch_size=8, threads=1,
                         models=[{"name": "teach", "role": "teacher", "path": str(t / "init" / "tiny")},
                                 {"name": NAME, "role": "student", "path": student}]))
    recipe = built / "publish.yaml"
    recipe.write_text(yaml.safe_dump({"run": "pub", "runs_dir": str(built), "name": NAME, "threads": 1,
                                      "publish": {"license": "mit"}}))
    return built, recipe


def publish(recipe: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", "publish", "--config", str(recipe),
                           f"repo_id={REPO}", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600, check=False)


def hub_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env | ({"HF_TOKEN": token} if token else {})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_exactly_the_dry_run_folders(pub, hub, tmp_path):
    import datasets
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.effort import from_curve

    runs, recipe = pub
    out = runs / "pub" / "publish" / NAME
    dry = publish(recipe, env=hub_env(tmp_path, hub.url))
    assert dry.returncode == 0, dry.stderr
    assert hub.requests == [] and "would call HfApi().create_repo(" in dry.stdout
    local = {k: snapshot(out / k) for k in ("model", "dataset")}
    plan = json.loads((out / "plan.json").read_text())
    assert [c["call"] for c in plan["calls"]] == ["create_repo", "upload_folder"] * 2

    pushed = publish(recipe, "--push", "revision=v1", "private=true", env=hub_env(tmp_path, hub.url))
    assert pushed.returncode == 0, pushed.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert [c["call"] for c in plan["calls"]] == ["create_repo", "create_branch", "upload_folder"] * 2
    # the calls the server saw, in the plan's order; LFS files went through batch + PUT
    api = [(r["method"], urlparse(r["path"]).path) for r in hub.requests]
    seen = [{"/api/repos/create": "create_repo"}.get(p) or ("create_branch" if "/branch/" in p else
                                                            "upload_folder" if "/commit/" in p else None)
            for _, p in api]
    assert [s for s in seen if s] == [c["call"] for c in plan["calls"]]
    assert any(p.endswith(".git/info/lfs/objects/batch") for _, p in api) and any(m == "PUT" for m, _ in api)
    assert {r: v["private"] for r, v in hub.repos.items()} == {("model", REPO): True,
                                                               ("dataset", DATA_REPO): True}
    # byte for byte what the dry run wrote, on the requested branch only
    for kind, repo in (("model", REPO), ("dataset", DATA_REPO)):
        assert hub.repos[(kind, repo)]["branches"]["v1"] == local[kind], kind
        assert hub.repos[(kind, repo)]["branches"]["main"] == {}
        assert snapshot(out / kind) == local[kind]  # the push run wrote the same folder again
    again = publish(recipe, "--push", "revision=v1", "private=true", env=hub_env(tmp_path, hub.url))
    assert again.returncode == 0, again.stderr  # repos and branch exist: exist_ok, same files
    assert hub.repos[("model", REPO)]["branches"]["v1"] == local["model"]
    received = tmp_path / "received"
    for kind, repo in (("model", REPO), ("dataset", DATA_REPO)):
        for rel, data in hub.repos[(kind, repo)]["branches"]["v1"].items():
            (received / kind / rel).parent.mkdir(parents=True, exist_ok=True)
            (received / kind / rel).write_bytes(data)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "chat_template.jinja", "README.md", "reasoning_effort.json", "accuracy_vs_thinking.png"} \
        <= set(local["model"])
    assert "training_args.bin" not in local["model"]

    # the model loads and is the trained one; the dataset loads, both configs, as the JSONL rows
    model = AutoModelForCausalLM.from_pretrained(received / "model")
    trained = AutoModelForCausalLM.from_pretrained(runs / "pub" / "sft" / NAME / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert AutoTokenizer.from_pretrained(received / "model").chat_template
    train = [json.loads(x) for x in
             (runs / "pub" / "filter" / "solver" / "train.jsonl").read_text().splitlines()]
    # own cache: datasets 5 reuses a cached folder of the same name ("dataset") whatever its files hold
    cache = str(tmp_path / "datasets_cache")
    sft = datasets.load_dataset(str(received / "dataset"), "sft", split="train", cache_dir=cache)
    assert sft["messages"] == [r["messages"] for r in train]
    raw = (runs / "pub" / "traces" / "solver" / "traces.jsonl").read_text().splitlines()
    tr = datasets.load_dataset(str(received / "dataset"), "traces", split="train", cache_dir=cache)
    assert len(tr) == len(raw) and tr[0]["thinking"] == json.loads(raw[0])["thinking"]

    # the card parses and its eval results read back as the eval's numbers, one per thinking budget
    res = json.loads((runs / "pub" / "eval" / "results.json").read_text())
    entry = next(m for m in res["models"] if m["name"] == NAME)
    card = ModelCard.load(received / "model" / "README.md")
    got = {e.metric_args["thinking_budget"]: e.metric_value for e in card.data.eval_results}
    assert got == {b["budget"]: b["accuracy"] for b in entry["budgets"]}
    assert {e.metric_type for e in card.data.eval_results} == {"accuracy"}
    assert card.data.datasets == [DATA_REPO] and card.data.license == "mit" and card.data.base_model is None
    effort = json.loads((received / "model" / "reasoning_effort.json").read_text())
    assert effort["efforts"] == from_curve(entry["budgets"])["efforts"]
    for text in ("](accuracy_vs_thinking.png)", "tokens/s", "$ per correct", "FLOPs", "```yaml", "lr:",
                 "| low | ", "max_steps: 2"):
        assert text in card.text, text

    # the planted token: in no file written (locally, received, HF_HOME), no output, only in Authorization
    written = [p for root in (runs, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert TOKEN not in dry.stdout + dry.stderr + pushed.stdout + pushed.stderr + again.stdout + again.stderr
    for r in hub.requests:
        others = {k: v for k, v in r["headers"].items() if k.lower() != "authorization"}
        assert TOKEN not in r["path"] and TOKEN.encode() not in r["body"] and TOKEN not in json.dumps(others)
        if r["method"] == "POST":
            assert r["headers"].get("authorization") == f"Bearer {TOKEN}", r["path"]


def test_push_failures_are_one_line_and_leave_nothing(pub, hub, tmp_path):
    runs, recipe = pub
    out = runs / "pub" / "publish" / NAME
    assert publish(recipe, env=hub_env(tmp_path, hub.url)).returncode == 0
    before = snapshot(out)

    def fails(env: dict, *words: str) -> None:
        proc = publish(recipe, "--push", env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert all(w in lines[0] for w in words), lines[0]
        assert snapshot(out) == before  # the earlier output untouched, nothing half-written beside it
        assert sorted(p.name for p in out.parent.iterdir()) == [NAME]

    fails(hub_env(tmp_path, hub.url, token=None), "no Hugging Face token", "HF_TOKEN")
    assert hub.requests == []
    fails(hub_env(tmp_path, hub.url, token="hf_wrong"), "create_repo", "401")
    hub.forbid_type = "dataset"  # the model repo is written, then the dataset repo is refused
    fails(hub_env(tmp_path, hub.url), "create_repo", DATA_REPO, "403")
    assert hub.repos[("model", REPO)]["branches"]["main"] == before_model(before)
    fails(hub_env(tmp_path, "http://127.0.0.1:9"), "create_repo")  # nothing listens on port 9


def before_model(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k.removeprefix("model/"): v for k, v in files.items() if k.startswith("model/")}
