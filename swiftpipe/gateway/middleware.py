"""ASGI middleware of the gateway, outermost first: `CatchAll` (an unexpected error is a 500 and one
line in the gateway's output, never a traceback to the client), `ArrivalClock` (when a request
arrived, for its latency), `BodyLimit` (a declared body over the limit is refused with 413 before it
is read)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fastapi import Request

from swiftpipe.gateway.protocol import INVALID_REQUEST, SERVER, ApiError

MAX_REQUEST_BYTES = 8 * 1024 * 1024


class CatchAll:
    """An unexpected error becomes one line in the gateway's log and a 500, and the server goes on."""

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
                               SERVER).response()(scope, receive, send)


class ArrivalClock:
    """Notes when a request arrived, before its body is read and validated, so `latency_ms`
    includes the time it waited in the gateway."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived"] = (time.perf_counter(), time.time())
        await self.app(scope, receive, send)


def arrived(request: Request) -> tuple[float, float]:
    """(perf_counter, unix time) of the request's arrival."""
    return getattr(request.state, "arrived", None) or (time.perf_counter(), time.time())


class BodyLimit:
    """A request whose Content-Length is over `MAX_REQUEST_BYTES` is answered 413 without reading it."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.limit:
                await ApiError(413, f"request body over {self.limit} bytes", INVALID_REQUEST).response()(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)
