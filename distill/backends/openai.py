"""Backend `openai`: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, a hosted API) through the
official `openai` client, async with at most `concurrency` requests in flight.

- `api: completions` (default): the templated prompt is continued raw through `/v1/completions`, so budget
  forcing works exactly as in-process: prompts go as token ids and token ids come back where the server
  takes them (`token_ids: true`, vLLM's `return_token_ids`); with `token_ids: false` prompts go as text and
  the answer is re-tokenized here.
- `api: chat`: `/v1/chat/completions` for chat-only servers (hosted APIs). The thinking comes from
  `reasoning_content` (or `reasoning`), else from the `<think>` tags of the content. A chat endpoint cannot
  continue a cut thinking, so budget forcing is unavailable there: `traces` works, `eval` refuses.

Retries (429, 5xx, timeouts, dropped connections; exponential backoff with jitter, honouring Retry-After)
are the client's own, `max_retries` times, each request under `timeout` seconds. Every answer is appended
to a request cache on disk keyed by a hash of the request (never of the key or URL), so a run that crashed
and is started again re-sends nothing already answered. The API key is read from the environment variable
named by `api_key_env` and is never written anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.artifacts import UserError
from distill.backends import Gen, count_params
from distill.backends.transformers import prepare_tokenizer


@dataclass
class OpenAISettings:
    base_urls: list[str] = field(default_factory=list)  # e.g. [http://127.0.0.1:8000/v1]; requests round-robin
    model: str = ""  # the served model's name
    api_key_env: str = ""  # name of the environment variable holding the key ("" : no key)
    api: str = "completions"  # completions | chat
    token_ids: bool = True  # send and receive token ids (vLLM, SGLang); false: text
    concurrency: int = 32
    timeout: float = 600.0  # seconds per request
    max_retries: int = 8
    cache: str = ""  # request cache (JSONL); default runs/<run>/cache/openai.jsonl
    # added to every request's body: a server's own parameters, e.g. vLLM's {skip_special_tokens: false} so
    # its reasoning parser sees a special </think> in chat replies
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.base_urls or not self.model:
            raise ValueError("needs base_urls (a list of server URLs ending in /v1) and model (the served name)")
        if isinstance(self.base_urls, str):
            self.base_urls = [self.base_urls]
        if self.api not in ("completions", "chat"):
            raise ValueError(f"api={self.api!r} is not one of completions, chat")
        for k in ("concurrency", "timeout"):
            if not isinstance(getattr(self, k), int | float) or getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")


class RequestCache:
    """Answered requests, one JSON line each, appended (and flushed) as they arrive: a process killed at
    any moment loses at most the requests in flight. A torn last line is dropped on load."""

    def __init__(self, path: Path):
        self.path, self.data, self._f = Path(path), {}, None
        if self.path.exists():
            raw = self.path.read_bytes()
            for line in raw[:raw.rfind(b"\n") + 1].splitlines():
                row = json.loads(line)
                self.data[row["key"]] = row["response"]

    def put(self, key: str, response: dict) -> None:
        self.data[key] = response
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("a")
        self._f.write(json.dumps({"key": key, "response": response}) + "\n")
        self._f.flush()

    def sync(self) -> None:
        if self._f is not None:
            os.fsync(self._f.fileno())


def _key(endpoint: str, body: dict) -> str:
    return hashlib.sha256(json.dumps([endpoint, body], sort_keys=True).encode()).hexdigest()


class OpenAIBackend:
    def __init__(self, s: OpenAISettings, tok, api_key: str, cache: RequestCache, params: int | None):
        self.s, self.tok, self._api_key, self.cache = s, tok, api_key, cache
        self.name, self.params = "openai", params
        self.counts = {"requests": 0, "cached": 0, "sent": 0, "http_attempts": 0, "max_in_flight": 0}
        self._in_flight = 0
        self.info = {"backend": "openai", "base_urls": s.base_urls, "model": s.model, "api": s.api,
                     "token_ids": s.token_ids, "cache": str(cache.path), "requests": self.counts}

    # ---- the primitive: continue token-id prompts
    def generate(self, prompts: list[list[int]], max_new: int, stop: list[int], *, temperature: float,
                 top_p: float, seed: int, desc: str = "generate", top_k: int = 0, logprobs: bool = False) -> list[Gen]:
        # `logprobs`: this backend returns none (Gen.logprob stays None)
        if self.s.api == "chat":
            raise UserError("openai backend with api=chat cannot continue a raw prompt, so budget forcing is "
                            "unavailable; use a /v1/completions server (api: completions)")
        bodies = []
        for i, p in enumerate(prompts):
            body = {"model": self.s.model, "max_tokens": max_new, "temperature": temperature,
                    "top_p": top_p if temperature > 0 else 1.0, "seed": seed + i}
            if self.s.token_ids:
                body |= {"prompt": p, "extra_body": {"stop_token_ids": list(stop), "skip_special_tokens": False,
                                                     "include_stop_str_in_output": True,
                                                     "return_token_ids": True}}
            else:
                body |= {"prompt": self.tok.decode(p), "stop": [self.tok.decode([t]) for t in stop]}
            if top_k > 0:  # not in OpenAI's API: vLLM and SGLang read it from the body
                body.setdefault("extra_body", {})["top_k"] = top_k
            bodies.append(body)
        for body in bodies:
            body["extra_body"] = {**self.s.extra_body, **body.get("extra_body", {})}
        return [self._gen(r, stop) for r in self._run("completions", bodies, desc)]

    def _gen(self, r: dict, stop: list[int]) -> Gen:
        c = r["choices"][0]
        ids = c.get("token_ids")
        if ids is None:  # a server that returns text only
            ids = self.tok(c["text"], add_special_tokens=False).input_ids
        ids = list(ids)
        stopped = c["finish_reason"] == "stop"
        if stopped and (not ids or ids[-1] not in stop):
            reason = c.get("stop_reason")
            if isinstance(reason, str):
                reason = self.tok.convert_tokens_to_ids(reason)
            # a server that does not say which stop it hit: the first stop id (</think> while thinking)
            ids.append(reason if reason in stop else stop[0])
        return Gen(ids, stopped, r["_seconds"])

    # ---- chat-only servers: one request per sample, thinking read back from the response
    def chat(self, problems: list[str], max_tokens: int, *, temperature: float, top_p: float, seed: int,
             desc: str = "chat", top_k: int = 0) -> list[dict]:
        bodies = [{"model": self.s.model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                   "temperature": temperature, "top_p": top_p, "seed": seed + i,
                   "extra_body": {**self.s.extra_body, **({"top_k": top_k} if top_k > 0 else {})}}
                  for i, q in enumerate(problems)]
        out = []
        for r in self._run("chat", bodies, desc):
            c = r["choices"][0]
            msg = c["message"]
            content = msg.get("content") or ""
            thinking = msg.get("reasoning_content") or msg.get("reasoning")
            if thinking is None:
                m = re.match(r"\s*(?:<think>)?(.*?)</think>(.*)", content, re.DOTALL)
                thinking, content = (m.group(1), m.group(2)) if m else ("", content)
            out.append({"thinking": thinking.strip(), "answer": content.strip(),
                        "finish_reason": "length" if c["finish_reason"] == "length" else "stop",
                        "seconds": r["_seconds"]})
        return out

    # ---- transport
    def _run(self, endpoint: str, bodies: list[dict], desc: str) -> list[dict]:
        try:
            return asyncio.run(self._gather(endpoint, bodies, desc))
        finally:
            self.cache.sync()

    async def _gather(self, endpoint: str, bodies: list[dict], desc: str) -> list[dict]:
        import openai
        from tqdm.auto import tqdm

        async def count(_request):
            self.counts["http_attempts"] += 1

        clients = [openai.AsyncOpenAI(base_url=url, api_key=self._api_key, max_retries=self.s.max_retries,
                                      timeout=self.s.timeout,
                                      http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]}))
                   for url in self.s.base_urls]
        sem = asyncio.Semaphore(self.s.concurrency)
        bar = tqdm(total=len(bodies), desc=desc, unit="req", leave=False, disable=len(bodies) < 2)

        async def one(i: int, body: dict) -> dict:
            key = _key(endpoint, body)
            self.counts["requests"] += 1
            if key in self.cache.data:
                self.counts["cached"] += 1
                bar.update()
                return self.cache.data[key]
            client = clients[i % len(clients)]
            async with sem:
                self._in_flight += 1
                self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self._in_flight)
                started = time.perf_counter()
                try:
                    api = client.completions if endpoint == "completions" else client.chat.completions
                    resp = await api.create(**body)
                except openai.APIStatusError as e:
                    raise UserError(f"openai: {client.base_url} answered {e.status_code} "
                                    f"({_first_line(e.message)}) after {self.s.max_retries} retries") from None
                except (openai.APIConnectionError, openai.APITimeoutError) as e:
                    raise UserError(f"openai: cannot reach {client.base_url} ({type(e).__name__}: "
                                    f"{_first_line(str(e))}) after {self.s.max_retries} retries") from None
                finally:
                    self._in_flight -= 1
                data = resp.model_dump() | {"_seconds": round(time.perf_counter() - started, 4)}
            self.counts["sent"] += 1
            self.cache.put(key, data)
            bar.update()
            return data

        try:
            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        finally:
            bar.close()
            for c in clients:
                await c.close()

    def close(self) -> None:
        pass


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


def load(path: str, *, settings: dict, fallbacks, runs_dir: str = "runs", run: str = "", **_):
    """`path`: where the tokenizer comes from (the served model's local folder or Hub id)."""
    from transformers import AutoTokenizer

    if "api_key" in settings:
        raise UserError("openai: put the API key in an environment variable and name it in openai.api_key_env "
                        "(a key is never read from a recipe)")
    known = {f.name for f in dataclasses.fields(OpenAISettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"openai: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        s = OpenAISettings(**settings)
    except (TypeError, ValueError) as e:
        raise UserError(f"openai: {e}") from None
    key = "EMPTY"  # servers started without --api-key accept any
    if s.api_key_env:
        key = os.environ.get(s.api_key_env, "")
        if not key:
            raise UserError(f"openai: environment variable {s.api_key_env} (openai.api_key_env) is not set")
    try:
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    except OSError as e:
        raise UserError(f"openai: cannot load the tokenizer from {path}: {str(e).splitlines()[0]}") from None
    cache = RequestCache(Path(s.cache) if s.cache else Path(runs_dir, run, "cache", "openai.jsonl"))
    return OpenAIBackend(s, tok, key, cache, count_params(path))
