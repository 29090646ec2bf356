"""The gateway's HTTP protocol: the request bodies it accepts, the OpenAI-shaped error it answers
every failure with (`{"error": {"message", "type", "code", ...}}`), and the reading of OpenAI-shaped
answers from upstreams (their content, their token usage)."""

from __future__ import annotations

import json
from typing import Any, Optional, TypeVar

import msgspec
from fastapi.responses import JSONResponse, Response
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


class RawJSON(Response):
    """A response whose body is JSON already encoded (`Completion.relabeled`)."""

    media_type = "application/json"


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
        data = _DECODE.decode(raw)  # msgspec; what it refuses, json.loads takes or words (the same answers)
    except msgspec.MsgspecError:
        data = _json_body(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedBody("; ".join(f"{'.'.join(str(p) for p in ('body', *e.get('loc', ())))}: {e.get('msg')}"
                                      for e in exc.errors())) from None


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise MalformedBody("not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"body.{exc.pos}: JSON decode error") from None
    except (ValueError, RecursionError):
        raise MalformedBody("not UTF-8 JSON") from None


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


class _Token(msgspec.Struct):
    token: str
    logprob: float


class _Logprobs(msgspec.Struct):
    content: Optional[list[_Token]] = None


class _Message(msgspec.Struct):
    content: Optional[str] = None


class _Choice(msgspec.Struct):
    message: _Message
    logprobs: Optional[_Logprobs] = None


class _Usage(msgspec.Struct):
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None


class _Plain(msgspec.Struct):
    """The parts of a chat completion /v1/extract reads, in the shape vLLM answers with."""

    choices: list[_Choice]
    usage: Optional[_Usage] = None


_PLAIN = msgspec.json.Decoder(_Plain)
_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])  # an object's members, their values left as JSON text


class Completion:
    """An upstream's 200 answer to a chat completion, as the gateway reads it: what /v1/extract
    needs (`content`, `pieces`, `usage`) decoded straight into typed fields when the answer has
    vLLM's plain shape (msgspec skips the rest: the `bytes` and `top_logprobs` of every token,
    about half the CPU of decoding it all), and the whole JSON (`body`) when asked or when it has
    any other shape; then the same functions as for any answer decide (`message_content`,
    `token_pieces`, `usage`), so both ways read an answer alike."""

    __slots__ = ("raw", "_body", "_plain")

    def __init__(self, raw: bytes, body: Any = None, plain: Optional[_Plain] = None):
        self.raw, self._body, self._plain = raw, body, plain

    @classmethod
    def read(cls, raw: bytes, *, typed: bool) -> "Completion":
        """The answer `raw`; ValueError (or RecursionError) when it is not JSON. `typed`: try the
        plain shape first (then `body` is decoded only if asked for)."""
        if typed:
            try:
                plain = _PLAIN.decode(raw)
                if plain.choices:
                    return cls(raw, plain=plain)
            except msgspec.MsgspecError:  # another shape (or not JSON: `loads` tells)
                pass
        return cls(raw, body=loads(raw))

    @property
    def body(self) -> Any:
        if self._body is None:
            self._body = loads(self.raw)
        return self._body

    def content(self) -> tuple[Optional[str], Optional[str]]:
        if self._plain is not None:
            return self._plain.choices[0].message.content, None
        return message_content(self.body)

    def pieces(self) -> Optional[list[tuple[bytes, float]]]:
        if self._plain is not None:
            logprobs = self._plain.choices[0].logprobs
            tokens = logprobs.content if logprobs is not None else None
            if tokens is None:
                return None
            texts = [t.token for t in tokens]
            if "token_id:" not in "\0".join(texts):
                return list(zip(map(str.encode, texts), [t.logprob for t in tokens]))
        return token_pieces(self.body)

    def relabeled(self, **members: Any) -> bytes:
        """The answer as JSON with these top-level members set (the gateway's id and version name),
        every other member as the upstream wrote it (not decoded and encoded again)."""
        if self._body is None:
            try:
                top = _MEMBERS.decode(self.raw)
            except msgspec.MsgspecError:
                top = None
            if top is not None:
                top.update(members)
                return dumps(top)
        body = self.body
        return dumps({**body, **members} if isinstance(body, dict) else body)

    def usage(self) -> tuple[Optional[int], Optional[int]]:
        if self._plain is not None:
            u = self._plain.usage
            return (u.prompt_tokens, u.completion_tokens) if u is not None else (None, None)
        return usage(self.body)


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
