"""The work of `/v1/extract` and `/v1/chat/completions`: route the request to a version, ask its
upstream, check the answer. Each handler returns an `Outcome` or raises a `Failure` (the one error
type); `Gateway.answer` records either, once."""

from __future__ import annotations

from swiftpipe.gateway import privacy
from swiftpipe.gateway.protocol import (
    INVALID_REQUEST,
    UPSTREAM,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    ChatBody,
    ExtractBody,
    FastJSON,
    RawJSON,
)
from swiftpipe.gateway.relay import Relay
from swiftpipe.gateway.state import Call, Failure, Gateway, Outcome
from swiftpipe.gateway.upstream import UpstreamResult, Version
from swiftpipe.task import flags


def upstream_failure(result: UpstreamResult, version: Version) -> Failure:
    """Why the upstream gave no usable answer, as the client hears it (timeouts and 5xx: 503)."""
    def fail(status: int, message: str, kind: str) -> Failure:
        return Failure(status, message, kind, upstream=result, flags=(result.flag or flags.UPSTREAM_ERROR,),
                       detail=result.error)

    if result.flag == flags.TIMEOUT:
        return fail(503, f"version '{version.name}' did not answer in time ({result.error}; "
                         f"{result.attempts} attempt(s))", UPSTREAM_TIMEOUT)
    if result.status is None or result.status >= 500 or result.status == 429:
        return fail(503, f"version '{version.name}' is unavailable ({result.error}; {result.attempts} attempt(s))",
                    UPSTREAM_UNAVAILABLE)
    if result.status == 400:
        return fail(400, f"version '{version.name}' refused the request: {result.error}", INVALID_REQUEST)
    return fail(502, f"version '{version.name}' gave an unusable answer: {result.error}", UPSTREAM)


def unusable(result: UpstreamResult, version: Version, why: str) -> Failure:
    """An answer without content (no choices, content not text): 502."""
    return Failure(502, f"version '{version.name}' gave an unusable answer: {why}", UPSTREAM, upstream=result,
                   flags=(flags.UPSTREAM_ERROR,), detail=why)


async def model_name(gw: Gateway, version: Version) -> str:
    """The upstream's model name (asked once from its /v1/models when not known)."""
    model = await gw.upstreams.resolve_model(version)
    if not model:
        raise Failure(503, f"version '{version.name}' is unavailable: asking {version.base_url}/models for its "
                           f"model name failed ({version.lookup_error})", UPSTREAM_UNAVAILABLE,
                      flags=(flags.UPSTREAM_ERROR,))
    return model


# What a client may send to /v1/chat/completions: everything else is refused (400, naming it), so a
# request cannot ask a model server for more than one answer of a bounded length.
CHAT_PARAMETERS = ("model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
                   "max_completion_tokens", "stop", "seed", "response_format", "presence_penalty",
                   "frequency_penalty", "n", "user", "logprobs", "top_logprobs", "chat_template_kwargs")
MAX_TOP_LOGPROBS = 5


def refuse_unfit_text(*named: tuple[str, object]) -> None:
    """400 for a text with a NUL or a lone surrogate (naming the field and the position)."""
    for what, value in named:
        problem = privacy.text_problem(value, what)
        if problem:
            raise Failure(400, problem, INVALID_REQUEST)


def message_texts(messages: list) -> list[tuple[str, object]]:
    """(where, text) of every text in a chat request's messages."""
    found: list[tuple[str, object]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            found.append((f"messages[{i}].content", content))
        elif isinstance(content, list):
            found += [(f"messages[{i}].content[{j}].text", part.get("text")) for j, part in enumerate(content)
                      if isinstance(part, dict)]
    return found


def check_chat_parameters(payload: dict, version: Version) -> None:
    """The chat pass-through allow-list: unknown parameters, n other than 1, max_tokens over the
    version's limit, and chat_template_kwargs other than enable_thinking are refused."""
    unknown = [name for name in payload if name not in CHAT_PARAMETERS]
    if unknown:
        raise Failure(400, f"parameter {unknown[0]!r} is not passed on by the gateway; allowed: "
                           f"{', '.join(CHAT_PARAMETERS)}", INVALID_REQUEST, param=unknown[0])
    if payload.get("n", 1) != 1:
        raise Failure(400, f"'n' must be 1 (got {payload['n']!r}): the gateway returns one answer per request",
                      INVALID_REQUEST, param="n")
    limit = version.task.max_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit):
            raise Failure(400, f"'{name}' must be an integer from 1 to {limit}, the limit of version "
                               f"'{version.name}' (got {value!r})", INVALID_REQUEST, param=name)
    top = payload.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise Failure(400, f"'top_logprobs' must be from 0 to {MAX_TOP_LOGPROBS} (got {top!r})", INVALID_REQUEST,
                      param="top_logprobs")
    kwargs = payload.get("chat_template_kwargs")
    if kwargs is not None and (not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}):
        raise Failure(400, "'chat_template_kwargs' may only set enable_thinking", INVALID_REQUEST,
                      param="chat_template_kwargs")


async def extract(gw: Gateway, call: Call, body: ExtractBody) -> Outcome:
    """`/v1/extract`: the version's task as the request, its answer checked into fields and flags."""
    refuse_unfit_text(("'model'", body.model), ("'text'", body.text))
    version = gw.route(body.model, call)
    problem = version.task.input_problem(body.text, who=f"version '{version.name}'")
    if problem:
        hint = "; send the text to extract from in 'text'" if problem.kind == flags.EMPTY_TEXT else ""
        raise Failure(400, problem.message + hint, INVALID_REQUEST)
    model = await model_name(gw, version)
    result = await gw.upstreams.post(version, "/chat/completions", version.task.request_body(model, body.text))
    if result.error is not None:
        raise upstream_failure(result, version)
    answer = result.completion
    assert answer is not None
    content, missing = answer.content()
    if missing:
        raise unusable(result, version, missing)
    checked = version.task.check(body.text, content, answer.pieces())

    def respond(latency: float) -> FastJSON:
        return FastJSON({"id": call.rid, "version": version.name, "fields": checked.fields, "valid": checked.valid,
                             "flags": checked.flags, "confidence": checked.confidence,
                             "row_confidence": checked.row_confidence, "needs_review": checked.needs_review,
                             "latency_ms": latency}, headers={"X-Request-Id": call.rid})

    return Outcome(output=content, checked=checked, upstream=result, tokens=answer.usage(), respond=respond)


async def chat(gw: Gateway, call: Call, body: ChatBody) -> Outcome:
    """`/v1/chat/completions`: passed through to the version (streamed or not), the answer checked
    like an extraction's, ids and model rewritten to the gateway's."""
    payload = body.model_dump(exclude_unset=True)
    refuse_unfit_text(("'model'", body.model), *message_texts(body.messages))
    version = gw.route(body.model, call)
    check_chat_parameters(payload, version)
    payload["model"] = await model_name(gw, version)
    headers = {"X-Request-Id": call.rid, "X-Swiftpipe-Version": version.name}
    if body.stream:
        opened, response = await gw.upstreams.stream(version, "/chat/completions", payload)
        if response is None:
            raise upstream_failure(opened, version)
        return Outcome(relay=Relay(call, version, opened, response, headers))
    result = await gw.upstreams.post(version, "/chat/completions", payload)
    if result.error is not None:
        raise upstream_failure(result, version)
    answer = result.completion
    assert answer is not None
    content, missing = answer.content()
    if missing:
        raise unusable(result, version, missing)
    checked = version.task.check(call.input, content, answer.pieces())
    data = answer.relabeled(id=call.rid, model=version.name)
    return Outcome(output=content, checked=checked, upstream=result, tokens=answer.usage(),
                   respond=lambda latency: RawJSON(data, headers=headers))
