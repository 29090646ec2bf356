"""The gateway's HTTP API (FastAPI): `/v1/extract`, OpenAI-compatible `/v1/chat/completions` and
`/v1/models`, `/health`, `/metrics`.

Every `/v1/*` call needs a key of the database (`swiftpipe keys create`); `/health` and
`/metrics` are open to loopback clients only. A request is routed to a version (pinned by its
`model`, else by the rollout weights, sticky per key), sent upstream, checked (`swiftpipe.flags`),
written to the request log (committed before the response leaves) and counted in the metrics.
Errors are OpenAI-shaped: `{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from swiftpipe import flags, pages
from swiftpipe.answers import strict_loads
from swiftpipe.gateway import feedback, keys, rollout, store
from swiftpipe.gateway import stats as stats_of
from swiftpipe.gateway.metrics import Metrics
from swiftpipe.gateway.upstream import (
    UpstreamResult,
    Upstreams,
    Version,
    message_content,
    now_ms,
    upstream_lines,
    usage,
)
from swiftpipe.recipe.task import Task

ALIAS = "auto"  # the model name that means "route by the rollout weights"
REFRESH_S = 1.0  # how often keys and weights are reread from the database


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, *, headers: Optional[dict] = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers, self.extra = status, message, kind, headers, extra

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status, **self.extra}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ExtractBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the text to extract from")
    model: Optional[str] = Field(None, description=f"a version name; none or '{ALIAS}' = by the rollout weights")


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Any = Field(description="the request's id")
    fields: Any = Field(None, description="the corrected answer")
    verdict: Any = Field(None, description="'correct' to confirm the answer")


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # every other OpenAI field is passed through as sent
    model: Optional[str] = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False


class CatchAll:
    """ASGI middleware: an unexpected error becomes one line in the gateway's log and a 500 with
    the request's id, never a traceback (and the server goes on)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001
            import traceback

            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"error: {scope.get('method')} {scope.get('path')}: {type(exc).__name__}: {exc} "
                  f"({Path(where.filename).name}:{where.lineno})", file=sys.stderr, flush=True)
            if not started:
                await ApiError(500, f"internal error ({type(exc).__name__}); see the gateway's log",
                               "server_error").response()(scope, receive, send)


MAX_REQUEST_BYTES = 8 * 1024 * 1024


class ArrivalClock:
    """ASGI middleware: notes when a request arrived, before its body is read and validated, so
    `latency_ms` includes the time it waited in the gateway."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived"] = (time.perf_counter(), time.time())
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
                await ApiError(413, f"request body over {MAX_REQUEST_BYTES} bytes", "invalid_request_error"
                               ).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def arrived(request: Request) -> tuple[float, float]:
    """(perf_counter, unix time) of the request's arrival."""
    return getattr(request.state, "arrived", None) or (time.perf_counter(), time.time())


def new_id() -> str:
    return "req_" + secrets.token_hex(12)


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    return host.startswith(("127.", "::ffff:127.")) or host in ("::1", "localhost")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


@dataclass
class Call:
    """One request on its way through the gateway."""

    rid: str
    ts: float
    started: float
    endpoint: str  # extract | chat | chat-stream
    version: Optional[str]
    key: keys.Key
    input: str


class Gateway:
    """The running gateway's state: versions, keys and weights (reread every second), the log."""

    def __init__(self, versions: list[Version], db: Path, *, upstreams: Optional[Upstreams] = None,
                 keep_days: Optional[float] = None):
        self.versions = {v.name: v for v in versions}
        self.db = Path(db)
        self.upstreams = upstreams or Upstreams()
        self.keep_days = keep_days
        self.conn = store.connect(self.db)
        self.log: Optional[store.RequestLog] = None
        self.keys: dict[str, keys.Key] = {}
        self.weights: list[tuple[str, float]] = [(v.name, 0.0) for v in versions]
        self.limiter = keys.RateLimiter()
        self.metrics = Metrics()
        self._last_prune = 0.0

    # -- state from the database -------------------------------------------------------------
    def refresh(self) -> None:
        self.keys = keys.active(self.conn)
        saved = dict(rollout.current(self.conn))
        self.weights = [(name, saved.get(name, 0.0)) for name in self.versions]
        for name, weight in self.weights:
            self.metrics.weight.labels(name).set(weight)
        if self.keep_days is not None and time.time() - self._last_prune > 3600:
            self._last_prune = time.time()
            asyncio.get_running_loop().run_in_executor(None, self._prune, self.keep_days)

    def _prune(self, keep_days: float) -> None:
        conn = store.connect(self.db)  # its own connection, in a worker thread: a long DELETE blocks no request
        try:
            store.prune(conn, keep_days)
        finally:
            conn.close()

    async def refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a locked or broken file must not stop serving
                print(f"warning: could not reread keys and weights from {self.db}: {exc}", file=sys.stderr)

    def task_of(self, version: Optional[str]) -> Optional[Task]:
        """The task of a version: the served one's, else what the database kept of it (None: unknown)."""
        if version in self.versions:
            return self.versions[version].task
        stored = store.task(self.conn, version)
        return Task.from_stored(stored) if stored is not None else None

    # -- per request ------------------------------------------------------------------------
    def authenticate(self, request: Request) -> keys.Key:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.metrics.rejected.labels("401").inc()
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' (keys come from "
                                "`swiftpipe keys create`)", "authentication_error")
        key = self.keys.get(keys.key_hash(token))
        if key is None:
            found = keys.find(self.conn, token)  # created in the last second?
            key = found if found is not None and found.revoked is None else None
        if key is None:
            self.metrics.rejected.labels("401").inc()
            raise ApiError(401, "invalid or revoked API key", "authentication_error")
        wait = self.limiter.retry_after(key)
        if wait is not None:
            self.metrics.rejected.labels("429").inc()
            raise ApiError(429, f"rate limit of key '{key.name}' reached ({key.rpm} requests per minute); "
                                f"retry in {wait} s", "rate_limit_error", headers={"Retry-After": str(wait)})
        return key

    def route(self, model: Optional[str], key: keys.Key) -> Version:
        if model and model != ALIAS:
            version = self.versions.get(model)
            if version is None:
                raise ApiError(404, f"unknown model '{model}'; versions: {', '.join(self.versions)} "
                                    f"(or '{ALIAS}' for the rollout's choice)", "not_found_error",
                               versions=list(self.versions))
            return version
        return self.versions[rollout.choose(self.weights, key.id)]

    async def route_logged(self, model: Optional[str], key: keys.Key, call: Call) -> Version:
        """`route`, with an unknown version logged (404) before it is answered."""
        try:
            return self.route(model, key)
        except ApiError as exc:
            await self.record(call, status=exc.status, error=exc.message)
            exc.extra["id"] = call.rid
            raise

    async def record(self, call: Call, *, status: int, output: Optional[str] = None,
                     checked: Optional[flags.Checked] = None, extra_flags: tuple[str, ...] = (),
                     upstream: Optional[UpstreamResult] = None, error: Optional[str] = None,
                     tokens: tuple[Optional[int], Optional[int]] = (None, None)) -> float:
        """Log the request (returns once committed) and count it; returns its latency in ms."""
        latency = now_ms(call.started)
        all_flags = [*extra_flags, *(checked.flags if checked else [])]
        row = store.request_row(
            id=call.rid, ts=call.ts, version=call.version, key_id=call.key.id, endpoint=call.endpoint,
            input=call.input, output=output,
            fields=checked.fields if checked else None, valid=checked.valid if checked else None,
            flags=all_flags, latency_ms=latency, status=status,
            upstream_status=upstream.status if upstream else None,
            error=error or (upstream.error if upstream else None) or
            ("; ".join(checked.problems) if checked and checked.problems else None),
            prompt_tokens=tokens[0], completion_tokens=tokens[1])
        assert self.log is not None
        try:
            await self.log.add(row)
        except store.StoreError as exc:
            raise ApiError(500, f"{exc}; the request was not answered", "server_error") from None
        self.metrics.observe(call.version or "-", call.endpoint, status, latency / 1000, all_flags)
        return latency


def _upstream_failure(result: UpstreamResult, version: Version) -> ApiError:
    if result.flag == flags.TIMEOUT:
        return ApiError(503, f"version '{version.name}' did not answer in time ({result.error}; "
                             f"{result.attempts} attempt(s))", "upstream_timeout")
    if result.status is None or result.status >= 500 or result.status == 429:
        return ApiError(503, f"version '{version.name}' is unavailable ({result.error}; {result.attempts} attempt(s))",
                        "upstream_unavailable")
    if result.status == 400:
        return ApiError(400, f"version '{version.name}' refused the request: {result.error}", "invalid_request_error")
    return ApiError(502, f"version '{version.name}' gave an unusable answer: {result.error}", flags.UPSTREAM_ERROR)


def create_app(gw: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        gw.log = store.RequestLog(gw.db)
        gw.upstreams.start()
        gw.refresh()
        task = asyncio.create_task(gw.refresher())
        try:
            yield
        finally:
            task.cancel()
            await gw.upstreams.close()
            gw.log.close()

    app = FastAPI(title="swiftpipe gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(ArrivalClock)
    app.add_middleware(CatchAll)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return ApiError(422, f"malformed request body: {problems}", "invalid_request_error").response()

    async def authenticate(request: Request) -> keys.Key:
        return gw.authenticate(request)

    async def extract_body(body: ExtractBody) -> ExtractBody:  # parsed after the key is checked
        return body

    async def chat_body(body: ChatBody) -> ChatBody:
        return body

    async def feedback_body(body: FeedbackBody) -> FeedbackBody:
        return body

    async def model_name(version: Version) -> str:
        model = await gw.upstreams.resolve_model(version)
        if not model:
            raise ApiError(503, f"version '{version.name}' is unavailable: asking {version.base_url}/models for its "
                                f"model name failed ({version.lookup_error})", "upstream_unavailable")
        return model

    @app.post("/v1/extract")
    async def extract(request: Request, key: keys.Key = Depends(authenticate),
                      body: ExtractBody = Depends(extract_body)) -> JSONResponse:
        started, ts = arrived(request)
        rid = new_id()
        version = await gw.route_logged(body.model, key, Call(rid, ts, started, "extract", None, key, body.text))
        text = body.text
        common = Call(rid, ts, started, "extract", version.name, key, text)
        problem = version.task.input_problem(text, who=f"version '{version.name}'")
        if problem:
            message = problem.message + ("; send the text to extract from in 'text'" if problem.kind == flags.EMPTY_TEXT
                                         else "")
            await gw.record(common, status=400, error=message)
            raise ApiError(400, message, "invalid_request_error", id=rid)
        try:
            model = await model_name(version)
        except ApiError as exc:
            await gw.record(common, status=503, error=exc.message, extra_flags=(flags.UPSTREAM_ERROR,))
            raise ApiError(503, exc.message, exc.kind, id=rid)
        result = await gw.upstreams.post(version, "/chat/completions", version.task.request_body(model, text))
        content, missing = message_content(result.body) if result.error is None else (None, None)
        if result.error is not None or missing:
            failure = _upstream_failure(result, version) if result.error else \
                ApiError(502, f"version '{version.name}' gave an unusable answer: {missing}", flags.UPSTREAM_ERROR)
            await gw.record(common, status=failure.status, upstream=result, error=result.error or missing,
                            extra_flags=(result.flag or flags.UPSTREAM_ERROR,))
            failure.extra["id"] = rid
            raise failure
        checked = version.task.check(text, content)
        latency = await gw.record(common, status=200, output=content, checked=checked, upstream=result,
                                  tokens=usage(result.body))
        return JSONResponse({"id": rid, "version": version.name, "fields": checked.fields, "valid": checked.valid,
                             "flags": checked.flags, "latency_ms": latency},
                            headers={"X-Request-Id": rid})

    @app.post("/v1/chat/completions")
    async def chat(request: Request, key: keys.Key = Depends(authenticate),
                   body: ChatBody = Depends(chat_body)) -> Response:
        started, ts = arrived(request)
        rid = "chatcmpl-" + new_id()[4:]
        payload = body.model_dump(exclude_unset=True)
        text = last_user_text(body.messages)
        version = await gw.route_logged(body.model, key, Call(rid, ts, started, "chat", None, key, text))
        common = Call(rid, ts, started, "chat-stream" if body.stream else "chat", version.name, key, text)
        try:
            payload["model"] = await model_name(version)
        except ApiError as exc:
            await gw.record(common, status=503, error=exc.message, extra_flags=(flags.UPSTREAM_ERROR,))
            raise
        headers = {"X-Request-Id": rid, "X-Swiftpipe-Version": version.name}
        if body.stream:
            result, response = await gw.upstreams.stream(version, "/chat/completions", payload)
            if response is None:
                failure = _upstream_failure(result, version)
                await gw.record(common, status=failure.status, upstream=result,
                                extra_flags=(result.flag or flags.UPSTREAM_ERROR,))
                raise failure
            return RelayResponse(Relay(gw, common, version, result, response), headers)
        result = await gw.upstreams.post(version, "/chat/completions", payload)
        if result.error is not None:
            failure = _upstream_failure(result, version)
            await gw.record(common, status=failure.status, upstream=result,
                            extra_flags=(result.flag or flags.UPSTREAM_ERROR,))
            raise failure
        answer = result.body if isinstance(result.body, dict) else {}
        content, missing = message_content(answer)
        if missing:
            await gw.record(common, status=502, upstream=result, error=missing, extra_flags=(flags.UPSTREAM_ERROR,))
            raise ApiError(502, f"version '{version.name}' gave an unusable answer: {missing}", flags.UPSTREAM_ERROR)
        checked = version.task.check(text, content)
        await gw.record(common, status=200, output=content, checked=checked, upstream=result,
                        tokens=usage(answer))
        answer["id"], answer["model"] = rid, version.name
        return JSONResponse(answer, headers=headers)

    @app.get("/v1/models")
    async def models(key: keys.Key = Depends(authenticate)) -> JSONResponse:
        weights = dict(gw.weights)
        data = [{"id": name, "object": "model", "owned_by": "swiftpipe", "created": 0,
                 "weight": weights.get(name, 0.0), "source": v.source, "recipe": v.task.recipe,
                 "schema": v.task.schema, "verbatim_fields": list(v.task.verbatim_fields), "metric": v.task.metric}
                for name, v in gw.versions.items()]
        data.append({"id": ALIAS, "object": "model", "owned_by": "swiftpipe", "created": 0,
                     "description": "the version the rollout weights pick for this key"})
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/feedback")
    async def feedback_post(request: Request, key: keys.Key = Depends(authenticate),
                            body: FeedbackBody = Depends(feedback_body)) -> JSONResponse:
        """A review of an answer: {"id", "fields"} corrects it, {"id", "verdict": "correct"} confirms it."""
        row = gw.conn.execute("SELECT version FROM requests WHERE id = ?", (body.id,)).fetchone() \
            if isinstance(body.id, str) else None
        task = gw.task_of(row["version"] if row else None)
        try:
            stored = await asyncio.to_thread(feedback.record, gw.conn, request_id=body.id, fields=body.fields,
                                             verdict=body.verdict, task=task, key_id=key.id)
        except feedback.FeedbackError as exc:
            raise ApiError(exc.status, exc.message, "invalid_request_error" if exc.status == 400 else "not_found_error")
        return JSONResponse(stored)

    @app.get("/v1/review/next")
    async def review_next(version: Optional[str] = None, flag: Optional[str] = None, exclude: str = "",
                          key: keys.Key = Depends(authenticate)) -> JSONResponse:
        ids = [x for x in exclude.split(",") if x]
        return JSONResponse(await asyncio.to_thread(feedback.next_for_review, gw.conn, version=version or None,
                                                    flag=flag or None, exclude=ids))

    @app.get("/v1/requests/{request_id}")
    async def request_get(request_id: str, key: keys.Key = Depends(authenticate)) -> JSONResponse:
        row = gw.conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise ApiError(404, f"no request with id '{request_id}' in the request log", "not_found_error")
        review = gw.conn.execute("SELECT verdict, fields, ts FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
        view = feedback.request_view(row)
        view["review"] = {"verdict": review["verdict"], "fields": json.loads(review["fields"]), "ts": review["ts"]} \
            if review else None
        return JSONResponse(view)

    @app.get("/v1/stats")
    async def stats(days: int = 30, key: keys.Key = Depends(authenticate)) -> JSONResponse:
        if not 1 <= days <= 3660:
            raise ApiError(400, f"days must be from 1 to 3660 (got {days})", "invalid_request_error")
        return JSONResponse(await asyncio.to_thread(stats_of.dashboard, gw.conn, days=days))

    pages.mount(app)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        if not is_loopback(request):
            gw.authenticate(request)
        names = list(gw.versions)
        answers = await asyncio.gather(*(gw.upstreams.get(gw.versions[n], "/models", timeout=3) for n in names))
        weights = dict(gw.weights)
        states = {}
        for name, answer in zip(names, answers):
            alive = answer.status == 200 and answer.error is None
            states[name] = {"state": "up" if alive else "down", "weight": weights.get(name, 0.0),
                            **({} if alive else {"error": answer.error or f"HTTP {answer.status}"})}
        log_state = "ok" if not (gw.log and gw.log.failed) else f"failing: {gw.log.failed}"
        up = sum(s["state"] == "up" for s in states.values())
        status = "ok" if up == len(states) and log_state == "ok" else ("degraded" if up else "down")
        return JSONResponse({"status": status, "versions": states, "request_log": log_state},
                            status_code=200 if up and log_state == "ok" else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not is_loopback(request):
            gw.authenticate(request)
        data, content_type = gw.metrics.render()
        return Response(data, media_type=content_type)

    return app


class Relay:
    """A streamed answer on its way through: passed on event by event (ids rewritten to ours),
    logged once complete (before [DONE] goes out), and always cleaned up: the upstream response
    closed and a row written even when the client went away (status 499)."""

    def __init__(self, gw: Gateway, call: Call, version: Version, opened: UpstreamResult, response):
        self.gw, self.call, self.version, self.opened, self.response = gw, call, version, opened, response
        self.parts: list[str] = []
        self.tokens: tuple[Optional[int], Optional[int]] = (None, None)
        self.logged = False

    async def log(self, status: int, error: Optional[str] = None) -> None:
        self.logged = True
        content = "".join(self.parts)
        checked = None if error else self.version.task.check(self.call.input, content)
        await self.gw.record(self.call, status=status, output=content, checked=checked, upstream=self.opened,
                             error=error, extra_flags=(flags.UPSTREAM_ERROR,) if error and status != 499 else (),
                             tokens=self.tokens)

    async def events(self):
        error: Optional[str] = None
        try:
            async for line in upstream_lines(self.response):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    await self.log(200)
                    yield "data: [DONE]\n\n"
                    return
                try:
                    event = strict_loads(data)
                except (ValueError, RecursionError):
                    error = f"the stream has a line that is not JSON: {data[:200]!r}"
                    break
                if isinstance(event, dict):
                    event["id"], event["model"] = self.call.rid, self.version.name
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") if isinstance(choice, dict) else None
                        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                            self.parts.append(delta["content"])
                    if event.get("usage"):
                        self.tokens = usage(event)
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            error = error or "the stream ended without [DONE]"
        except Exception as exc:  # noqa: BLE001 - a broken upstream stream ends this answer, not the gateway
            error = f"{type(exc).__name__}: {exc}"
        message = f"version '{self.version.name}' broke off the answer: {error}"
        await self.log(502, message)
        yield f"data: {json.dumps({'error': {'message': message, 'type': flags.UPSTREAM_ERROR, 'code': 502}})}\n\n"

    async def finish(self) -> None:
        await self.response.aclose()
        if not self.logged:
            await self.log(499, "the client went away before the answer was complete")


class RelayResponse(StreamingResponse):
    def __init__(self, relay: Relay, headers: dict[str, str]):
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self.relay = relay

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the client's disconnect cancelled us
                try:
                    await self.relay.finish()
                except Exception as exc:  # noqa: BLE001
                    print(f"warning: could not finish a streamed answer: {exc}", file=sys.stderr)
