"""`distill chat`: a terminal chat with a local model (loaded in this process, sampled by the same code as
`distill serve`) or with a server (`distill serve`, vLLM, any OpenAI-compatible one, through the official
`openai` client, streamed).

The thinking is shown dimmed (ANSI) before the answer, or hidden with show_thinking=false. Commands:
`/effort low|medium|high` (the thinking budget calibrated from the model's eval curve), `/reset` (forget
the conversation), `/quit` (or end of input). A typed `\\n` is a line break. Earlier turns are sent as
answers only, without their thinking, as reasoning models are trained to see them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill import effort
from distill.artifacts import UserError
from distill.config import NonNeg, opt
from distill.sampling import Engine, Sampling, group

DIM, RESET = "\033[2m", "\033[0m"
HELP = "commands: /effort low|medium|high, /reset, /quit"


@dataclass
class ChatConfig:
    model: str = opt("", "a local model folder (or .gguf), loaded here")
    url: str = opt("", "or a server, e.g. http://127.0.0.1:8000/v1")
    name: str = opt("", "the served model's name (default: the server's first)")
    api_key_env: str = opt("", "environment variable holding the server's key")
    effort: Literal["", "low", "medium", "high"] = opt(
        "", "reasoning effort (empty: the server's default, medium "
                                                           "where calibrated)")
    show_thinking: bool = opt(True, "print the thinking (dimmed) before the answer")
    history: bool = opt(True, "send earlier turns; false: every question stands alone")
    max_tokens: NonNeg = opt(0, "thinking + answer; 0: the server's default (a local model: 512)")
    run: str = opt("chat", "backend vllm keeps its cache under runs_dir/run")
    runs_dir: str = opt("runs", "where runs live")
    sampling: Sampling = group(Sampling)  # max_thinking: a local model without calibration
    engine: Engine = group(Engine)  # a local model's; .gguf: llama_cpp

    def __post_init__(self):
        if bool(self.model) == bool(self.url):
            raise ValueError("give either model=<local model folder> or url=<a server, e.g. "
                             "http://127.0.0.1:8000/v1>")
        if self.model.endswith(".gguf"):
            self.engine.backend = "llama_cpp"
        if self.engine.backend in ("openai", "solver"):
            raise ValueError(f"backend={self.engine.backend}: chat loads a local model, or talks to a server "
                             "given as url=")


def _local(cfg: ChatConfig):
    """(ask, efforts, errors to report and go on) for a model in this process: serve's chat sampling."""
    from distill import generate as G
    from distill.artifacts import Fallbacks
    from distill.sampling import open_backend
    from distill.stages import serve

    folder = Path(cfg.model).parent if cfg.model.endswith(".gguf") else Path(cfg.model)
    if not folder.is_dir() or not Path(cfg.model).exists():
        raise UserError(f"chat: model not found: {cfg.model}")
    efforts = effort.load(folder)
    G.set_threads(cfg.engine.threads)
    backend = open_backend(cfg.engine, cfg.model, runs_dir=cfg.runs_dir, run=cfg.run, fallbacks=Fallbacks())
    G.stop_tokens(backend.tok)
    turns, cap = [0], cfg.max_tokens or 512

    def ask(messages: list[dict], level: str):
        budget = efforts[level] if efforts and level else cfg.sampling.max_thinking
        turns[0] += 1
        r = serve.sample_chat(backend, [G.think_prompt(backend.tok, messages)],
                              thinking=min(budget, cap), max_tokens=[cap], cue=cfg.sampling.answer_cue,
                              temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                              seed=cfg.sampling.seed + 7919 * turns[0])[0]
        yield "thinking", r["thinking"]
        yield "answer", r["answer"]
        yield "reasoning_tokens", r["reasoning_tokens"]

    return ask, efforts, ()


def _remote(cfg: ChatConfig):
    """(ask, efforts, errors to report and go on) for a server, streamed through the official client."""
    import os

    import openai

    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "EMPTY"
    if cfg.api_key_env and not key:
        raise UserError(f"chat: environment variable {cfg.api_key_env} (api_key_env) is not set")
    client = openai.OpenAI(base_url=cfg.url, api_key=key, max_retries=2, timeout=600)
    try:
        models = client.models.list().data
    except openai.APIConnectionError:
        raise UserError(f"chat: cannot reach {cfg.url} (is the server running?)") from None
    except openai.APIStatusError as e:
        raise UserError(f"chat: {cfg.url} answered {e.status_code}: {_message(e)}") from None
    if not models:
        raise UserError(f"chat: {cfg.url} serves no model")
    name = cfg.name or models[0].id
    served = {m.id: m for m in models}
    efforts = getattr(served.get(name), "reasoning_effort", None)  # distill serve lists its calibration

    def ask(messages: list[dict], level: str):
        stream = client.chat.completions.create(
            model=name, messages=messages, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, stream=True,
            stream_options={"include_usage": True}, **({"reasoning_effort": level} if level else {}),
            **({"max_tokens": cfg.max_tokens} if cfg.max_tokens else {}))
        for chunk in stream:
            for c in chunk.choices:
                # vLLM and distill serve: reasoning_content; newer vLLM: reasoning
                thinking = getattr(c.delta, "reasoning_content", None) or getattr(c.delta, "reasoning", None)
                if thinking:
                    yield "thinking", thinking
                if c.delta.content:
                    yield "answer", c.delta.content
            details = chunk.usage and chunk.usage.completion_tokens_details
            if details and details.reasoning_tokens is not None:
                yield "reasoning_tokens", details.reasoning_tokens

    return ask, efforts, (openai.APIError,)


def _message(e) -> str:
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg or getattr(e, "message", e)).strip().splitlines()[0]


def _show(events, show_thinking: bool, out) -> str:
    """Print a reply as it arrives; returns the answer."""
    answer, thinking_open, tokens = "", False, None
    for kind, text in events:
        if kind == "reasoning_tokens":
            tokens = text
        elif kind == "thinking" and show_thinking:
            if not thinking_open:
                out.write(DIM)
                thinking_open = True
            out.write(text)
        elif kind == "answer":
            if thinking_open:
                out.write(RESET + "\n")
                thinking_open = False
            answer += text
            out.write(text)
        out.flush()
    if thinking_open:
        out.write(RESET)
    out.write("\n")
    if show_thinking and tokens is not None:
        out.write(f"{DIM}[{tokens} thinking tokens]{RESET}\n")
    out.flush()
    return answer.strip()


def _effort_line(level: str, efforts: dict | None, unset: str) -> str:
    if not level:
        return f"effort: {unset}"
    return f"effort: {level}" + (f" (thinking <= {efforts[level]} tokens)" if efforts else
                                 " (this model has no calibration: its thinking budget is not changed)")


def run(cfg: ChatConfig) -> Path:
    ask, efforts, errors = _local(cfg) if cfg.model else _remote(cfg)
    level, history, out = cfg.effort or ("medium" if cfg.model and efforts else ""), [], sys.stdout
    unset = f"none calibrated (thinking <= {cfg.sampling.max_thinking} tokens)" if cfg.model else \
        "the server's default"
    where = f"local {cfg.model}" if cfg.model else cfg.url
    print(f"distill chat: {where}; {_effort_line(level, efforts, unset)}; {HELP}", flush=True)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            break
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/effort" and arg.strip() in effort.SHARES:
                level = arg.strip()
                print(_effort_line(level, efforts, unset))
            elif cmd == "/reset":
                history = []
                print("conversation forgotten")
            else:
                print(HELP)
            continue
        # a typed `\n` is a line break: a terminal line has none, and the demo's worksheets have two lines
        messages = (history if cfg.history else []) + [{"role": "user", "content": line.replace("\\n", "\n")}]
        try:
            answer = _show(ask(messages, level), cfg.show_thinking, out)
        except errors as e:
            print(f"\nerror: {_message(e)}", flush=True)
            continue
        history = messages + [{"role": "assistant", "content": answer}]
    return Path(cfg.model or ".")
