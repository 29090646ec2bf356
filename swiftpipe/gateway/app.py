"""The gateway's HTTP API (FastAPI): `/v1/extract`, OpenAI-compatible `/v1/chat/completions` and
`/v1/models`, the review API (`/v1/feedback`, `/v1/review/next`, `/v1/requests/{id}`, `/v1/stats`),
the pages, `/health` and `/metrics`.

Thin routes: the work is in `handlers` (extract, chat) and the `Gateway` state (`state`); bodies
and errors are `protocol`'s. Every `/v1/*` call needs a key of the database (`swiftpipe keys
create`); `/health` and `/metrics` are open to loopback clients only. A request is routed to a
version (pinned by its `model`, else by the rollout weights, sticky per key), sent upstream,
checked (`swiftpipe.task.flags`), written to the request log (committed before the response leaves; in
one place: `answer`) and counted in the metrics. Errors are OpenAI-shaped:
`{"error": {"message", "type", "code", "id"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from swiftpipe.gateway import feedback, handlers, keys, pages
from swiftpipe.gateway import stats as numbers
from swiftpipe.gateway.middleware import ArrivalClock, BodyLimit, CatchAll
from swiftpipe.gateway.protocol import INVALID_REQUEST, NOT_FOUND, ApiError, ChatBody, ExtractBody, FeedbackBody, last_user_text
from swiftpipe.gateway.state import Call, Failure, Gateway, Outcome

router = APIRouter()


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def authenticated(request: Request) -> keys.Key:
    return gateway(request).authenticate(request)


# Bodies as dependencies declared after the key: a request without a valid key is refused (401)
# before its body is validated (422).
async def extract_body(body: ExtractBody) -> ExtractBody:
    return body


async def chat_body(body: ChatBody) -> ChatBody:
    return body


async def feedback_body(body: FeedbackBody) -> FeedbackBody:
    return body


def loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    return host.startswith(("127.", "::ffff:127.")) or host in ("::1", "localhost")


async def answer(gw: Gateway, call: Call, work: Awaitable[Outcome]) -> Response:
    """Await a handler and answer the client; the one place a request's log row is written, for
    every outcome: answered, failed, or streamed (when the stream ends)."""
    async def record(outcome: Outcome) -> float:
        return await gw.record(call, outcome)

    try:
        outcome = await work
    except Failure as failure:
        await record(failure.outcome())
        raise failure.api_error(call.rid) from None
    if outcome.relay is not None:
        return outcome.relay.response_for(record)
    latency = await record(outcome)
    assert outcome.respond is not None
    return outcome.respond(latency)


@router.post("/v1/extract")
async def extract(request: Request, key: keys.Key = Depends(authenticated),
                  body: ExtractBody = Depends(extract_body)) -> Response:
    gw = gateway(request)
    call = gw.call(request, key, "extract", body.text)
    return await answer(gw, call, handlers.extract(gw, call, body))


@router.post("/v1/chat/completions")
async def chat(request: Request, key: keys.Key = Depends(authenticated),
               body: ChatBody = Depends(chat_body)) -> Response:
    gw = gateway(request)
    call = gw.call(request, key, "chat-stream" if body.stream else "chat", last_user_text(body.messages),
                   prefix="chatcmpl-")
    return await answer(gw, call, handlers.chat(gw, call, body))


@router.get("/v1/models")
async def models(request: Request, key: keys.Key = Depends(authenticated)) -> JSONResponse:
    return JSONResponse(gateway(request).models())


@router.post("/v1/feedback")
async def feedback_post(request: Request, key: keys.Key = Depends(authenticated),
                        body: FeedbackBody = Depends(feedback_body)) -> JSONResponse:
    """A review of an answer: {"id", "fields"} corrects it, {"id", "verdict": "correct"} confirms it."""
    gw = gateway(request)
    try:
        stored = await asyncio.to_thread(gw.review, body.id, fields=body.fields, verdict=body.verdict, key=key)
    except feedback.FeedbackError as exc:
        raise ApiError(exc.status, exc.message, INVALID_REQUEST if exc.status == 400 else NOT_FOUND) from None
    return JSONResponse(stored)


@router.get("/v1/review/next")
async def review_next(request: Request, version: Optional[str] = None, flag: Optional[str] = None, exclude: str = "",
                      key: keys.Key = Depends(authenticated)) -> JSONResponse:
    ids = [x for x in exclude.split(",") if x]
    return JSONResponse(await asyncio.to_thread(feedback.next_for_review, gateway(request).conn,
                                                version=version or None, flag=flag or None, exclude=ids))


@router.get("/v1/requests/{request_id}")
async def request_get(request: Request, request_id: str, key: keys.Key = Depends(authenticated)) -> JSONResponse:
    view = gateway(request).request_detail(request_id)
    if view is None:
        raise ApiError(404, f"no request with id '{request_id}' in the request log", NOT_FOUND)
    return JSONResponse(view)


@router.get("/v1/stats")
async def stats(request: Request, days: int = 30, key: keys.Key = Depends(authenticated)) -> JSONResponse:
    if not 1 <= days <= 3660:
        raise ApiError(400, f"days must be from 1 to 3660 (got {days})", INVALID_REQUEST)
    return JSONResponse(await asyncio.to_thread(numbers.dashboard, gateway(request).conn, days=days))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    gw = gateway(request)
    if not loopback(request):
        gw.authenticate(request)
    status, body = await gw.health()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gw = gateway(request)
    if not loopback(request):
        gw.authenticate(request)
    data, content_type = gw.metrics.render()
    return Response(data, media_type=content_type)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return ApiError(422, f"malformed request body: {problems}", INVALID_REQUEST).response()


def create_app(gw: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(title="swiftpipe gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw
    app.add_middleware(BodyLimit)
    app.add_middleware(ArrivalClock)
    app.add_middleware(CatchAll)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.include_router(router)
    pages.mount(app)
    return app
