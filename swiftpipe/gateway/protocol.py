"""The gateway's HTTP protocol: the request bodies it accepts, the OpenAI-shaped error it answers
every failure with (`{"error": {"message", "type", "code", ...}}`), and the reading of OpenAI-shaped
answers from upstreams (their content, their token usage)."""

from __future__ import annotations

import json
from typing import Any, Optional, TypeVar

import msgspec
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swiftpipe.task import flags
from swiftpipe.task.answers import strict_loads
from swiftpipe.task.client import ROLLOUT_ALIAS as ALIAS  # route by the rollout weights
from swiftpipe.task.confidence import pieces_from_openai

# OpenAI's error `type`s, and the gateway's own for upstream failures.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
RATE_LIMIT = "rate_limit_error"
NOT_FOUND = "not_found_error"
SERVER = "server_error"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM = flags.UPSTREAM_ERROR  # the upstream's answer is unusable
RETRY_AFTER_S = 5  # a 503's Retry-After, unless it knows better


BaseModelT = TypeVar("BaseModelT", bound=BaseModel)

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


def dumps(value: Any) -> bytes:
    """JSON as UTF-8 bytes, compact (msgspec: ~5x json.dumps on an answer with its logprobs)."""
    return _ENCODE.encode(value)


def loads(raw: "bytes | str") -> Any:
    """`strict_loads` (no NaN/Infinity; ValueError or RecursionError when not JSON), parsed by
    msgspec (~4x json.loads); what msgspec refuses and json takes (a number beyond float range, a
    lone surrogate escape) is left to json, so the answers are the same."""
    try:
        return _DECODE.decode(raw)
    except msgspec.MsgspecError:
        return strict_loads(raw)


class FastJSON(JSONResponse):
    """Starlette's JSONResponse, encoded by msgspec (the same compact UTF-8 JSON)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class ApiError(Exception):
    """What a client gets when its request is not answered: an HTTP status and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, kind: str, *, headers: Optional[dict] = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers, self.extra = status, message, kind, headers, extra

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status, **self.extra}}
        headers = dict(self.headers or {})
        if self.status == 503:
            headers.setdefault("Retry-After", str(RETRY_AFTER_S))  # every 503 says when to come back
        return FastJSON(body, status_code=self.status, headers=headers)


class MalformedBody(Exception):
    """A request body that is not the endpoint's (422): what is wrong, FastAPI's words and places."""


def parse_body(model: type[BaseModelT], raw: bytes) -> BaseModelT:
    """The request body `raw` as `model`, or MalformedBody saying why, in the terms FastAPI's body
    dependency uses ("body.text: Field required", "body.9: JSON decode error", "not UTF-8 JSON").
    The extraction routes parse their bodies here rather than through a FastAPI dependency: the
    same checks for a fraction of the CPU (one pydantic validation, no dependency solving)."""
    if not raw:
        raise MalformedBody("body: Field required")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise MalformedBody("not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"body.{exc.pos}: JSON decode error") from None
    except (ValueError, RecursionError):
        raise MalformedBody("not UTF-8 JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedBody("; ".join(f"{'.'.join(str(p) for p in ('body', *e.get('loc', ())))}: {e.get('msg')}"
                                      for e in exc.errors())) from None


class ExtractBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the text to extract from")
    model: Optional[str] = Field(None, description=f"a version name; none or '{ALIAS}' = by the rollout weights")


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # every other OpenAI field is passed through as sent
    model: Optional[str] = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Any = Field(description="the request's id")
    fields: Any = Field(None, description="the corrected answer")
    verdict: Any = Field(None, description="'correct' to confirm the answer")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of a chat request's last user message (what its log row keeps as input)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def message_content(body: Any) -> tuple[Optional[str], Optional[str]]:
    """(choices[0].message.content, why there is none) of a chat completion body of any shape."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, "the answer has no choices[0].message.content"
    if content is not None and not isinstance(content, str):
        return None, f"choices[0].message.content is {type(content).__name__}, not text"
    return content, None


def token_pieces(body: Any) -> Optional[list[tuple[bytes, float]]]:
    """The sampled tokens and their logprobs (choices[0].logprobs.content) of a chat completion body;
    None when the server sent none (not asked, or not supported): confidence is then unknown."""
    try:
        content = body["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return pieces_from_openai(content) if isinstance(content, list) else None


def usage(body: Any) -> tuple[Optional[int], Optional[int]]:
    """(prompt_tokens, completion_tokens) of an answer, None where it does not say."""
    u = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(u, dict):
        return None, None
    p, c = u.get("prompt_tokens"), u.get("completion_tokens")
    return (p if isinstance(p, int) else None), (c if isinstance(c, int) else None)
