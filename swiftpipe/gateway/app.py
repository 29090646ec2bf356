"""The gateway's HTTP API (FastAPI): `/v1/extract`, OpenAI-compatible `/v1/chat/completions` and
`/v1/models`, the review API (`/v1/feedback`, `/v1/review/next`, `/v1/requests/{id}`, `/v1/stats`),
the pages, `/health`, `/metrics` and (admin keys) `/openapi.json`.

Thin routes: the work is in `handlers` (extract, chat) and the `Gateway` state (`state`); bodies
and errors are `protocol`'s; who may call what is `access`'s, checked from the headers before any
body byte is read (the routes find the key in `request.state.key`). A request is routed to a
version (pinned by its `model`, else by the rollout weights, sticky per key), sent upstream,
checked (`swiftpipe.task.flags`), written to the request log (committed before the response
leaves; in one place: `Gateway.answer`) and counted in the metrics. Errors are OpenAI-shaped:
`{"error": {"message", "type", "code", "id"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from swiftpipe.gateway import feedback, handlers, keys
from swiftpipe.gateway import stats as numbers
from swiftpipe.gateway.access import AuthGate
from swiftpipe.gateway.middleware import BODY_IDLE_S, BodyLimit, Envelope
from swiftpipe.gateway.pages import mount as mount_pages
from swiftpipe.gateway.protocol import (
    INVALID_REQUEST,
    NOT_FOUND,
    ApiError,
    ChatBody,
    ExtractBody,
    FeedbackBody,
    MalformedBody,
    last_user_text,
    parse_body,
)
from swiftpipe.gateway.state import Failure, Gateway, fail

router = APIRouter()
LOGGED = {"/v1/extract": "extract", "/v1/chat/completions": "chat"}  # paths whose refused bodies get a row


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def key_of(request: Request) -> keys.Key:
    """The key `access.AuthGate` checked for this request."""
    return request.state.key


def body_doc(model: type[BaseModel]) -> dict:
    """The OpenAPI description of a body the route parses itself (`protocol.parse_body`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# Bodies parsed in the route (after the gate has checked the key), one pydantic validation each.
@router.post("/v1/extract", openapi_extra=body_doc(ExtractBody))
async def extract(request: Request) -> Response:
    body = parse_body(ExtractBody, await request.body())
    gw = gateway(request)
    call = gw.call(request.scope, key_of(request), "extract", body.text)
    return await gw.answer(call, handlers.extract(gw, call, body))


@router.post("/v1/chat/completions", openapi_extra=body_doc(ChatBody))
async def chat(request: Request) -> Response:
    body = parse_body(ChatBody, await request.body())
    gw = gateway(request)
    call = gw.call(request.scope, key_of(request), "chat-stream" if body.stream else "chat",
                   last_user_text(body.messages), prefix="chatcmpl-")
    return await gw.answer(call, handlers.chat(gw, call, body))


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse(gateway(request).models(key_of(request)))


@router.post("/v1/feedback", openapi_extra=body_doc(FeedbackBody))
async def feedback_post(request: Request) -> JSONResponse:
    """A review of an answer: {"id", "fields"} corrects it, {"id", "verdict": "correct"} confirms it."""
    body = parse_body(FeedbackBody, await request.body())
    gw = gateway(request)
    try:
        stored = await asyncio.to_thread(gw.review, body.id, fields=body.fields, verdict=body.verdict,
                                         key=key_of(request))
    except feedback.FeedbackError as exc:
        raise ApiError(exc.status, exc.message, INVALID_REQUEST if exc.status == 400 else NOT_FOUND) from None
    return JSONResponse(stored)


@router.get("/v1/review/next")
async def review_next(request: Request, version: Optional[str] = None, flag: Optional[str] = None,
                      exclude: str = "") -> JSONResponse:
    ids = [x for x in exclude.split(",") if x]
    return JSONResponse(await asyncio.to_thread(feedback.next_for_review, gateway(request).conn,
                                                version=version or None, flag=flag or None, exclude=ids))


@router.get("/v1/requests/{request_id}")
async def request_get(request: Request, request_id: str) -> JSONResponse:
    view = gateway(request).request_detail(request_id, key_of(request))
    if view is None:
        raise ApiError(404, f"no request with id '{request_id}' in the request log", NOT_FOUND)
    return JSONResponse(view)


@router.get("/v1/stats")
async def stats(request: Request, days: int = 30) -> JSONResponse:
    if not 1 <= days <= 3660:
        raise ApiError(400, f"days must be from 1 to 3660 (got {days})", INVALID_REQUEST)
    return JSONResponse(await asyncio.to_thread(numbers.dashboard, gateway(request).conn, days=days))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    key = getattr(request.state, "key", None)  # none: from this machine
    status, body = await gateway(request).health(details=key is None or key.may("admin"))
    return JSONResponse(body, status_code=status, headers={"Retry-After": "5"} if status == 503 else None)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = gateway(request).metrics.render()
    return Response(data, media_type=content_type)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _refused_body(request: Request, status: int, message: str) -> Response:
    """A body that cannot be taken (422): on the extraction endpoints it is logged like any request."""
    endpoint, key = LOGGED.get(request.url.path), getattr(request.state, "key", None)
    error = ApiError(status, message, INVALID_REQUEST)
    if endpoint is not None and key is not None:
        gw = gateway(request)
        try:
            await gw.answer(gw.call(request.scope, key, endpoint, ""), fail(Failure(status, message, INVALID_REQUEST)))
        except ApiError as logged:
            error = logged
    return error.response()


async def _malformed_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MalformedBody)
    return await _refused_body(request, 422, f"malformed request body: {exc}")


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """A query parameter FastAPI could not take (e.g. `days=x`): 422, OpenAI-shaped."""
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return ApiError(422, f"malformed request: {problems}", INVALID_REQUEST).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors, OpenAI-shaped."""
    assert isinstance(exc, HTTPException)
    kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
    return ApiError(exc.status_code, str(exc.detail), kind).response()


HOT = {("POST", "/v1/extract"): extract, ("POST", "/v1/chat/completions"): chat}


class HotRoutes:
    """The two extraction endpoints, called straight from the innermost middleware: the same route
    functions FastAPI has (and documents) at those paths, their errors answered by the same
    handlers, without FastAPI's router, exception middleware and endpoint wrapping in between
    (~0.1 ms of CPU a request, measured on the app in-process). Every other request,
    and those paths with another method or a trailing slash, go on to FastAPI."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        route = HOT.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive, send)
        try:
            response = await route(request)
        except ApiError as exc:
            response = exc.response()
        except MalformedBody as exc:
            response = await _malformed_body(request, exc)
        await response(scope, receive, send)


def create_app(gw: Gateway, *, body_idle_s: float = BODY_IDLE_S) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(title="swiftpipe gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    app.add_middleware(HotRoutes)
    app.add_middleware(BodyLimit, idle_s=body_idle_s,
                       on_refusal=lambda status: gw.metrics.rejected.labels(str(status)).inc())
    app.add_middleware(AuthGate, gateway=gw)
    app.add_middleware(Envelope)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(MalformedBody, _malformed_body)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(router)
    mount_pages(app)
    return app

