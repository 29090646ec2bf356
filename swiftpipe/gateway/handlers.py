"""The work of `/v1/extract` and `/v1/chat/completions`: route the request to a version, ask its
upstream, check the answer. Each handler returns an `Outcome` or raises a `Failure` (the one error
type); the route records either, once (`app.answer`)."""

from __future__ import annotations

from swiftpipe.gateway.protocol import (
    INVALID_REQUEST,
    UPSTREAM,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    ChatBody,
    ExtractBody,
    message_content,
    usage,
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


async def extract(gw: Gateway, call: Call, body: ExtractBody) -> Outcome:
    """`/v1/extract`: the version's task as the request, its answer checked into fields and flags."""
    from fastapi.responses import JSONResponse

    version = gw.route(body.model, call)
    problem = version.task.input_problem(body.text, who=f"version '{version.name}'")
    if problem:
        hint = "; send the text to extract from in 'text'" if problem.kind == flags.EMPTY_TEXT else ""
        raise Failure(400, problem.message + hint, INVALID_REQUEST)
    model = await model_name(gw, version)
    result = await gw.upstreams.post(version, "/chat/completions", version.task.request_body(model, body.text))
    if result.error is not None:
        raise upstream_failure(result, version)
    content, missing = message_content(result.body)
    if missing:
        raise unusable(result, version, missing)
    checked = version.task.check(body.text, content)

    def respond(latency: float) -> JSONResponse:
        return JSONResponse({"id": call.rid, "version": version.name, "fields": checked.fields, "valid": checked.valid,
                             "flags": checked.flags, "latency_ms": latency}, headers={"X-Request-Id": call.rid})

    return Outcome(output=content, checked=checked, upstream=result, tokens=usage(result.body), respond=respond)


async def chat(gw: Gateway, call: Call, body: ChatBody) -> Outcome:
    """`/v1/chat/completions`: passed through to the version (streamed or not), the answer checked
    like an extraction's, ids and model rewritten to the gateway's."""
    from fastapi.responses import JSONResponse

    payload = body.model_dump(exclude_unset=True)
    version = gw.route(body.model, call)
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
    answer = result.body if isinstance(result.body, dict) else {}
    content, missing = message_content(answer)
    if missing:
        raise unusable(result, version, missing)
    checked = version.task.check(call.input, content)
    answer["id"], answer["model"] = call.rid, version.name
    return Outcome(output=content, checked=checked, upstream=result, tokens=usage(answer),
                   respond=lambda latency: JSONResponse(answer, headers=headers))
