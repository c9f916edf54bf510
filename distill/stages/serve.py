"""`distill serve`: an OpenAI-compatible server (FastAPI + uvicorn) over any backend's primitive.

    GET  /v1/models
    POST /v1/chat/completions   thinking in `reasoning_content` (as vLLM's reasoning parsers return it), the
                                answer in `content`; `reasoning_effort: low|medium|high` picks the thinking
                                budget calibrated from the model's eval curve (distill/effort.py);
                                `auto` runs a cascade eval calibrated (`cascade=`, distill/cascade.py): the
                                first stage that is sure of its answer answers, `usage.cascade` says which
    POST /v1/completions        the raw primitive: a text or token-id prompt continued as is (as vLLM does),
                                so `backend: openai` can run traces and eval against this server
    GET  /health                liveness and batching counters (no key needed)

Sampling is distill/generate.py's, not a copy: a chat request is `think_and_answer` at its budget, and a
thinking still open when the budget runs out gets `forced_answers`, the budget forcing `eval` measures.

Batching: every generation request becomes a job on an asyncio queue. One batcher task takes the first
job, sleeps `batch_window_ms` so requests arriving together can join, takes everything queued (up to
`batch_size`), groups the jobs by what one backend call must share (kind, thinking budget, temperature,
top_p, seed, stop ids) and runs each group as one call in a single worker thread: the backend is not
thread-safe, and the event loop stays free meanwhile to accept requests, refuse them (429) and list
models. Requests arriving while a batch runs form the next one, so under load batches grow by themselves.
Different max_tokens share a call: it runs at the group's largest and each job is cut to its own (the
first k tokens of a longer generation are what a call capped at k would produce).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from distill import cascade, effort, verify
from distill import generate as G
from distill import openai_api as api
from distill.artifacts import Fallbacks, UserError, log
from distill.config import NonNegFloat, Port, Pos, opt
from distill.openai_api import ApiError
from distill.sampling import Engine, Sampling, group, open_backend


@dataclass
class ServeConfig:
    model: str = opt("", "a model folder or Hub id (backend openai: where the tokenizer comes from)")
    name: str = opt("", "the served name (default: the model folder's; its parent's when that is `model`)")
    host: str = opt("127.0.0.1", "address to listen on")
    port: Port = opt(8000, "port to listen on (0: any free port; the address is printed)")
    results: str = opt(
        "", "an eval results.json: calibrate reasoning_effort, save <model>/reasoning_effort.json")
    eval_name: str = opt("", "the model's `name` in results.json (default: the entry whose path is `model`)")
    default_effort: Literal["low", "medium", "high", "auto"] = opt(
        "medium", "a request naming no reasoning_effort")
    cascade: str = opt("", "reasoning_effort auto: the cascade of that name in results= (eval's `cascades:`)")
    endpoints: dict[str, str] = opt(
        dict, "cascade stages served elsewhere: {eval model name: server URL ending in /v1}, reached through "
              "backend openai (the server serves it under that name)")
    api_key_env: str = opt("", "environment variable holding the API key (empty: no key)")
    max_prompt_tokens: Pos = opt(512, "the longest prompt a request may send")
    max_tokens: Pos = opt(512, "the most a request may ask for (thinking + answer); also its default")
    max_in_flight: Pos = opt(64, "requests queued or running; more get 429")
    batch_window_ms: NonNegFloat = opt(5.0, "how long the batcher waits to fill a batch")
    run: str = opt("serve", "backend vllm/openai keep their caches under runs_dir/run")
    runs_dir: str = opt("runs", "where runs live")
    # defaults for requests that give none; max_thinking: the budget when the model has no calibration
    sampling: Sampling = group(Sampling)
    engine: Engine = group(Engine)  # batch_size: requests generated together
    RENAMED: ClassVar[dict] = {"max_batch": "batch_size"}

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is required (a model folder, e.g. runs/demo/sft/student-l/model)")
        if self.model.endswith(".gguf"):  # `distill serve --model X.gguf`: only llama.cpp reads it
            self.engine.backend = "llama_cpp"
        if self.engine.backend == "solver":
            raise ValueError("backend solver writes traces only; serve needs a model")
        if self.cascade and not self.results:
            raise ValueError("cascade needs results= (the eval results.json that calibrated it)")
        if self.default_effort == "auto" and not self.cascade:
            raise ValueError("default_effort auto needs cascade= (a cascade of an eval's results)")


# ---- sampling over the primitive (synchronous: runs in the worker thread; `distill chat` calls it directly)
def sample_chat(backend, prompts: list[list[int]], *, thinking: int, max_tokens: list[int], cue: str,
                temperature: float, top_p: float, seed: int) -> list[dict]:
    """Thinking up to `thinking` tokens, then the answer; a thinking the budget cut gets a forced answer.
    Each sample's thinking + answer is cut to its own max_tokens."""
    res = G.think_and_answer(backend, prompts, max_thinking=thinking, max_answer=max(max_tokens),
                             temperature=temperature, top_p=top_p, seed=seed, desc="serve")
    think = [t.ids[:-1] if t.stopped else t.ids for t, _ in res]
    cut = [i for i, (_, a) in enumerate(res) if a is None]  # did not close its thinking within the budget
    forced = dict(zip(cut, G.forced_answers(backend, [prompts[i] for i in cut], [think[i] for i in cut], cue,
                                            max_answer=max(max_tokens), temperature=temperature, top_p=top_p,
                                            seed=seed + 1, desc="serve forced"))) if cut else {}
    out = []
    for i, (_, natural) in enumerate(res):
        ans = natural if natural is not None else forced[i]
        room = max(0, max_tokens[i] - len(think[i]))
        text = G.decode(backend.tok, ans.ids[:room])
        out.append({"thinking": G.decode(backend.tok, think[i]),
                    "answer": text if natural else f"{cue} {text}",  # eval grades forced answers this way
                    "reasoning_tokens": len(think[i]), "cut": natural is None, "answer_logprob": ans.logprob,
                    "completion_tokens": len(think[i]) + len(ans.ids[:room]),
                    "finish_reason": "stop" if ans.stopped and len(ans.ids) <= room else "length"})
    return out


def sample_raw(backend, prompts: list[list[int]], *, max_tokens: list[int], stop: list[int],
               temperature: float, top_p: float, seed: int) -> list[dict]:
    gens = backend.generate(prompts, max(max_tokens), stop, temperature=temperature, top_p=top_p, seed=seed,
                            desc="serve raw")
    return [{"ids": g.ids[:m], "stopped": g.stopped and len(g.ids) <= m} for g, m in zip(gens, max_tokens)]


@dataclass
class Job:
    key: tuple  # what one backend call must share
    prompt: list[int]
    max_tokens: int
    future: asyncio.Future


class Server:
    def __init__(self, cfg: ServeConfig, backend, efforts: dict | None, api_key: str, cascade: dict | None = None):
        self.cfg, self.backend, self.efforts, self.api_key = cfg, backend, efforts, api_key
        # reasoning_effort auto: {stages: [{model, budget, k, backend: index into backends}], thresholds}
        self.cascade, self.backends = cascade, [backend] + (cascade or {}).get("backends", [])
        self.name = cfg.name or _default_name(cfg.model)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="serve-backend")
        self.queue: asyncio.Queue | None = None  # made in the server's event loop (build_app's lifespan)
        self.in_flight, self.calls = 0, 0
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "rejected_429": 0}

    # ---- queue and batcher
    async def submit(self, key: tuple, prompt: list[int], max_tokens: int) -> dict:
        if self.in_flight >= self.cfg.max_in_flight:
            self.stats["rejected_429"] += 1
            raise ApiError(429, f"too many requests in flight (max_in_flight={self.cfg.max_in_flight}); "
                                "retry later", "rate_limit_error")
        fut = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        # counted down when the job is done, not when the client leaves: a job whose client disconnected
        # still occupies the backend
        fut.add_done_callback(lambda _: setattr(self, "in_flight", self.in_flight - 1))
        self.queue.put_nowait(Job(key, prompt, max_tokens, fut))
        try:
            return await asyncio.shield(fut)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - the backend failed on this batch: its requests fail, not all
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error") from None

    async def batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(self.cfg.batch_window_ms / 1000)  # let requests arriving together join
            while len(jobs) < self.cfg.engine.batch_size and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[tuple, list[Job]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for key, batch in groups.items():
                self.stats["batches"] += 1
                self.stats["requests"] += len(batch)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                try:
                    results = await loop.run_in_executor(self.pool, self._call, key, batch)
                except Exception as e:  # noqa: BLE001 - delivered to each waiting request as a 500
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                for j, r in zip(batch, results):
                    if not j.future.done():
                        j.future.set_result(r)

    def _call(self, key: tuple, batch: list[Job]) -> list[dict]:
        kind, budget, temperature, top_p, seed, stop, which = key
        backend = self.backends[which]
        if seed is None:  # a new seed per call, so repeated requests sample anew
            self.calls += 1
            seed = self.cfg.sampling.seed + 1_000_003 * self.calls
        prompts, caps = [j.prompt for j in batch], [j.max_tokens for j in batch]
        if kind == "chat":
            return sample_chat(backend, prompts, thinking=budget, max_tokens=caps,
                               cue=self.cfg.sampling.answer_cue, temperature=temperature, top_p=top_p, seed=seed)
        return sample_raw(backend, prompts, max_tokens=caps, stop=list(stop), temperature=temperature,
                          top_p=top_p, seed=seed)

    # ---- request checks shared by both endpoints
    def _common(self, req: api.ChatRequest | api.CompletionRequest, prompt: list[int],
                max_tokens: int | None) -> tuple[int, float, float]:
        if req.model != self.name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves {self.name!r}",
                           "not_found_error")
        if len(prompt) > self.cfg.max_prompt_tokens:
            raise ApiError(400, f"prompt is {len(prompt)} tokens; this server takes at most "
                                f"{self.cfg.max_prompt_tokens} (max_prompt_tokens)")
        max_tokens = self.cfg.max_tokens if max_tokens is None else max_tokens
        if max_tokens > self.cfg.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is over this server's limit of "
                                f"{self.cfg.max_tokens}")
        return (max_tokens, self.cfg.sampling.temperature if req.temperature is None else req.temperature,
                self.cfg.sampling.top_p if req.top_p is None else req.top_p)

    async def chat(self, req: api.ChatRequest) -> dict:
        messages = [m.as_template_message() for m in req.messages]
        prompt = G.think_prompt(self.backend.tok, messages)
        asked = req.max_completion_tokens or req.max_tokens
        max_tokens, temperature, top_p = self._common(req, prompt, asked)
        level = req.reasoning_effort or self.cfg.default_effort
        if level == "auto":
            if not self.cascade:
                raise ApiError(400, "reasoning_effort auto: this server has no cascade; start serve with "
                                    "results=<eval results.json> cascade=<name>")
            return await self.auto(messages, max_tokens, temperature, top_p, req.seed)
        if req.reasoning_effort and not self.efforts:
            raise ApiError(400, f"reasoning_effort: model {self.name!r} has no calibration "
                                f"({effort.FILE}); start serve with results=<eval results.json>")
        budget = self.efforts[level] if self.efforts else self.cfg.sampling.max_thinking
        # max_tokens counts thinking and answer (as OpenAI and vLLM count reasoning tokens)
        key = ("chat", min(budget, max_tokens), temperature, top_p, req.seed, (), 0)
        return await self.submit(key, prompt, max_tokens) | {"prompt_tokens": len(prompt)}

    async def auto(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
                   seed: int | None) -> dict:
        """The cascade: each stage's k samples batched as k jobs; the first stage the rule lets answer gives
        its majority sample. Every stage's tokens are counted in the usage (every stage was paid for)."""
        stages, spent, reasoning = self.cascade["stages"], 0, 0
        for i, st in enumerate(stages):
            prompt = G.think_prompt(self.backends[st["backend"]].tok, messages)
            key = ("chat", min(st["budget"], max_tokens), temperature, top_p, seed, (), st["backend"])
            outs = await asyncio.gather(*(self.submit(key, prompt, max_tokens) for _ in range(st["k"])))
            spent += sum(o["completion_tokens"] for o in outs)
            reasoning += sum(o["reasoning_tokens"] for o in outs)
            answers = [verify.extract(o["answer"]) for o in outs]
            last = i == len(stages) - 1
            if last or not cascade.escalates(answers, [o["reasoning_tokens"] for o in outs], [o["cut"] for o in outs],
                                             st["budget"], logprobs=[o.get("answer_logprob") for o in outs],
                                             **self.cascade["thresholds"][i]):
                pick = outs[cascade.majority(answers)[0]]
                return pick | {"prompt_tokens": len(prompt), "completion_tokens": spent, "reasoning_tokens": reasoning,
                               "cascade": {"stage": i, "model": st["model"], "budget": st["budget"], "k": st["k"],
                                           "stages": len(stages), "name": self.cfg.cascade}}
        raise AssertionError("unreachable: the last stage always answers")

    async def complete(self, req: api.CompletionRequest) -> dict:
        tok = self.backend.tok
        prompt = req.prompt if isinstance(req.prompt, list) else \
            tok(req.prompt, add_special_tokens=False).input_ids
        if not prompt or not all(0 <= t < len(tok) for t in prompt):
            raise ApiError(400, f"prompt: empty, or a token id outside the vocabulary 0..{len(tok) - 1}")
        max_tokens, temperature, top_p = self._common(req, prompt, req.max_tokens)
        stop = tuple(dict.fromkeys([tok.eos_token_id, *(req.stop_token_ids or [])]))
        r = await self.submit(("raw", 0, temperature, top_p, req.seed, stop, 0), prompt, max_tokens)
        ids = r["ids"]
        hit = ids[-1] if r["stopped"] else None  # the stop id that ended it (vLLM's stop_reason)
        shown = ids if req.include_stop_str_in_output or not r["stopped"] else ids[:-1]
        return {"text": tok.decode(shown, skip_special_tokens=req.skip_special_tokens), "token_ids": shown,
                "stop_reason": hit, "finish_reason": "stop" if r["stopped"] else "length",
                "prompt_tokens": len(prompt), "completion_tokens": len(ids)}


def _default_name(model: str) -> str:
    p = Path(model)
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def build_app(server: Server):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(_app):
        server.queue = asyncio.Queue()
        task = asyncio.create_task(server.batcher())
        yield
        task.cancel()
        server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="distill serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def api_key(request: Request, call_next):  # before the body is read: a wrong key never gets a 400
        if server.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {server.api_key}".encode()):
                return api.error(401, "invalid or missing API key (Authorization: Bearer ...)",
                                 "authentication_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request, exc: RequestValidationError):
        return api.error(400, api.validation_message(exc.errors()))

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return api.error(exc.status, exc.message, exc.kind)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):  # unknown routes and methods, in OpenAI's shape
        return api.error(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": server.in_flight, **server.stats}

    @app.get("/v1/models")
    async def models():
        cfg = server.cfg
        return {"object": "list", "data": [
            {"id": server.name, "object": "model", "created": 0, "owned_by": "distill", "root": cfg.model,
             "max_model_len": cfg.max_prompt_tokens + cfg.max_tokens, "reasoning_effort": server.efforts}]}

    @app.post("/v1/chat/completions")
    async def chat(req: api.ChatRequest):
        return api.chat_response(await server.chat(req), server.name, req)

    @app.post("/v1/completions")
    async def completions(req: api.CompletionRequest):
        return api.completion_response(await server.complete(req), server.name, req)

    return app


def load_server(cfg: ServeConfig) -> Server:
    """The backend, the calibrated efforts and the key: everything a server needs before it listens."""
    key = ""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise UserError(f"serve: environment variable {cfg.api_key_env} (api_key_env) is not set")
    # a .gguf file's calibration is the one in its folder (distill quantize copies it there)
    folder = str(Path(cfg.model).parent) if cfg.model.endswith(".gguf") else cfg.model
    local = Path(folder).is_dir()
    if cfg.results:
        if not local:
            raise UserError(f"serve: results= needs a local model folder to save {effort.FILE} in; "
                            f"{cfg.model} is not one")
        path = effort.save(folder, effort.calibrate(cfg.results, folder, cfg.eval_name))
        print(f"serve: calibrated reasoning_effort from {cfg.results} -> {path}")
    efforts = effort.load(folder) if local else None
    found = _find_cascade(cfg) if cfg.cascade else None  # its mistakes before any model loads
    G.set_threads(cfg.engine.threads)
    backend = open_backend(cfg.engine, cfg.model, runs_dir=cfg.runs_dir, run=cfg.run, fallbacks=Fallbacks())
    G.stop_tokens(backend.tok)  # a model without a single </think> token is refused now, not per request
    return Server(cfg, backend, efforts, key, _cascade(cfg, backend, *found) if found else None)


def _no_logprobs(cfg: ServeConfig, model: str, kind: str) -> UserError:
    return UserError(f"serve: cascade {cfg.cascade!r} escalates on {model}'s answer log-probability, which its "
                     f"backend ({kind}) does not give: serve that stage with transformers or vllm")


def _find_cascade(cfg: ServeConfig) -> tuple[dict, dict]:
    """(the cascade named `cfg.cascade` in eval's results.json, the eval's model paths by name), checked."""
    res = json.loads(Path(cfg.results).read_text())  # effort.calibrate read it first: it exists and parses
    made = (res.get("cascades") or {}).get("cascades", [])
    found = [c for c in made if c["name"] == cfg.cascade]
    if not found:
        have = [c["name"] for c in made]
        raise UserError(f"serve: {cfg.results} has no cascade {cfg.cascade!r} (has: {', '.join(have) or 'none'}; "
                        "eval's `cascades:` makes them)")
    paths = {m["name"]: m["path"] for m in res["models"]}
    unknown = sorted(set(cfg.endpoints) - set(paths))
    if unknown:
        raise UserError(f"serve: endpoints names {', '.join(unknown)}, not models of {cfg.results} "
                        f"({', '.join(paths)})")
    for st, thr in zip(found[0]["stages"], found[0]["thresholds"]):
        if "min_logprob" in thr and st["model"] in cfg.endpoints:
            raise _no_logprobs(cfg, st["model"], "openai")
    return found[0], paths


def _cascade(cfg: ServeConfig, backend, found: dict, paths: dict) -> dict:
    """The cascade's stages' models opened: the served model's own backend where a stage is that model, a
    server through backend openai where `endpoints` names one, else the eval's path through this server's
    backend."""
    opened: dict[str, int] = {}
    backends, stages = [], []
    for st in found["stages"]:
        name = st["model"]
        if name not in opened:
            if name not in cfg.endpoints and Path(paths[name]).resolve() == Path(cfg.model).resolve():
                opened[name] = 0
            else:
                kind, extra = ("openai", {"base_urls": [cfg.endpoints[name]], "model": name}) \
                    if name in cfg.endpoints else ("", None)
                b = open_backend(cfg.engine, paths[name], runs_dir=cfg.runs_dir, run=cfg.run, fallbacks=Fallbacks(),
                                 kind=kind, extra=extra)
                G.stop_tokens(b.tok)
                backends.append(b)
                opened[name] = len(backends)
        stages.append(st | {"backend": opened[name]})
    for st, thr in zip(stages, found["thresholds"]):
        kind = ([backend] + backends)[st["backend"]].name
        if "min_logprob" in thr and kind not in ("transformers", "vllm"):
            raise _no_logprobs(cfg, st["model"], kind)
    return {"stages": stages, "thresholds": found["thresholds"] + [{}], "backends": backends}


def run(cfg: ServeConfig) -> Path:
    import uvicorn

    # bound here, before the model loads and not by uvicorn: a port in use is a one-line error at once,
    # and port=0 prints the port it got
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        raise UserError(f"serve: cannot listen on {cfg.host}:{cfg.port} ({e.strerror})") from None
    # listening now: a client that reads the printed address before uvicorn starts waits in the backlog
    # instead of being refused
    sock.listen(2048)
    port = sock.getsockname()[1]
    server = load_server(cfg)
    if not server.api_key and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: listening on %s without an API key (api_key_env=)", cfg.host)
    efforts = ", ".join(f"{k}={v}" for k, v in server.efforts.items()) if server.efforts else \
        f"none calibrated, thinking <= {cfg.sampling.max_thinking}"
    if server.cascade:
        efforts += ", auto=" + " -> ".join(f"{s['model']}@{s['budget']}" for s in server.cascade["stages"])
    print(f"serve: {server.name} on http://{cfg.host}:{port}/v1 (backend {cfg.engine.backend}; reasoning_effort: "
          f"{efforts}; API key {'required' if server.api_key else 'off'})", flush=True)
    log_level = os.environ.get("DISTILL_LOG", "INFO").lower()
    config = uvicorn.Config(build_app(server), log_level="warning" if log_level == "info" else log_level,
                            access_log=False, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
    for b in server.backends:
        b.close()
    return Path(cfg.model)
