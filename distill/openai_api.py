"""The OpenAI wire format `distill serve` speaks: request bodies (pydantic, strict), responses, stream
chunks and errors, in the shapes the official client and vLLM use (thinking in `reasoning_content`, vLLM's
`token_ids` / `stop_reason` / `stop_token_ids` extras on completions).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# strict: a wrong type is a 400 naming the field ("10" is not an integer); unknown fields are ignored, as
# OpenAI clients send extras such as `user` or `metadata`
STRICT = ConfigDict(extra="ignore", strict=True)


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None

    def as_template_message(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        msg = {"role": "system" if self.role == "developer" else self.role, "content": text}
        return msg | ({"reasoning_content": self.reasoning_content} if self.reasoning_content else {})


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = STRICT
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # what newer clients send instead of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: Literal[1] = 1  # one choice per request: send n requests (they are batched together)
    stream: bool = False
    stream_options: StreamOptions | None = None
    reasoning_effort: Literal["low", "medium", "high", "auto"] | None = None  # auto: the cascade


class CompletionRequest(BaseModel):
    model_config = STRICT
    model: str
    prompt: str | list[int]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's and vLLM's default
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop_token_ids: list[int] | None = None  # vLLM's extra parameters, which backend=openai sends
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    return_token_ids: bool = False


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


def validation_message(errors: list[dict]) -> str:
    """pydantic's errors as one line: `field: problem; ...` (the body's own path, without `body.`)."""
    return "; ".join(f"body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})"
                     if e["type"] == "json_invalid" else
                     f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:5])


def usage(r: dict) -> dict:
    u = {"prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
         "total_tokens": r["prompt_tokens"] + r["completion_tokens"]}
    if "reasoning_tokens" in r:
        u["completion_tokens_details"] = {"reasoning_tokens": r["reasoning_tokens"]}
    if "cascade" in r:  # reasoning_effort auto: which stage answered (every stage's tokens counted above)
        u["cascade"] = r["cascade"]
    return u


def chat_response(r: dict, model: str, req: ChatRequest):
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if not req.stream:
        msg = {"role": "assistant", "content": r["answer"], "reasoning_content": r["thinking"]}
        return head | {"object": "chat.completion", "usage": usage(r),
                       "choices": [{"index": 0, "message": msg, "finish_reason": r["finish_reason"]}]}
    deltas = [({"role": "assistant", "content": ""}, None), ({"reasoning_content": r["thinking"]}, None),
              ({"content": r["answer"]}, None), ({}, r["finish_reason"])]
    chunks = [head | {"object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": d, "finish_reason": f}]} for d, f in deltas]
    if req.stream_options and req.stream_options.include_usage:
        chunks.append(head | {"object": "chat.completion.chunk", "choices": [], "usage": usage(r)})
    return _sse(chunks)


def completion_response(r: dict, model: str, req: CompletionRequest):
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model}
    choice = {"index": 0, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"],
              "stop_reason": r["stop_reason"]}
    if req.return_token_ids:
        choice["token_ids"] = r["token_ids"]
    if not req.stream:
        return head | {"choices": [choice], "usage": usage(r)}
    chunks = [head | {"choices": [choice]}]
    if req.stream_options and req.stream_options.include_usage:
        chunks.append(head | {"choices": [], "usage": usage(r)})
    return _sse(chunks)


def _sse(chunks: list[dict]):
    from fastapi.responses import StreamingResponse

    # The backend primitive returns whole generations, so true token streaming is not possible through it:
    # the stream sends the thinking, then the answer, as chunks once generation has completed.
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return StreamingResponse(iter([body]), media_type="text/event-stream")
