"""ASGI middleware of the gateway, outermost first:

- `Envelope`: when a request arrived (for its latency); every response says nosniff, no framing,
  no referrer, and HSTS over HTTPS; an unexpected error is a 500 and one line in the gateway's
  output, never a traceback to the client (and the server goes on);
- `access.AuthGate`: the key, its role and its rate, from the headers (before the body);
- `BodyLimit`: a body over the limit is refused with 413 — declared (Content-Length) before a byte
  is read, chunked as soon as it passes the limit — and a body that stops coming gets 408.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from swiftpipe.gateway.protocol import INVALID_REQUEST, SERVER, ApiError

MAX_REQUEST_BYTES = 8 * 1024 * 1024
BODY_IDLE_S = 30.0  # longest pause between two pieces of a request's body


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
FRAME_ANCESTORS = b"frame-ancestors 'none'"
HSTS = (b"strict-transport-security", b"max-age=31536000")


class Envelope:
    """What every request goes through first, in one layer (one wrapper of `send`, not three):

    - its arrival time, noted before the body is read and validated, so `latency_ms` includes
      the time it waited in the gateway (`arrived_at`);
    - headers every response carries: no MIME sniffing, never in a frame (X-Frame-Options and
      the CSP's frame-ancestors), no Referer to other sites, and HSTS when serving HTTPS;
    - an unexpected error becomes one line in the gateway's log and a 500, never a traceback to
      the client, and the server goes on."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["arrived"] = (time.perf_counter(), time.time())
        https = scope.get("scheme") == "https"
        started = False

        async def with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", FRAME_ANCESTORS))
                if https:
                    headers.append(HSTS)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception as exc:  # noqa: BLE001
            import traceback

            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"error: {scope.get('method')} {scope.get('path')}: {type(exc).__name__}: {exc} "
                  f"({Path(where.filename).name}:{where.lineno})", file=sys.stderr, flush=True)
            if not started:
                await ApiError(500, f"internal error ({type(exc).__name__}); see the gateway's log",
                               SERVER).response()(scope, receive, with_headers)


def arrived_at(scope: Any) -> tuple[float, float]:
    """(perf_counter, unix time) of the request's arrival."""
    return (scope.get("state") or {}).get("arrived") or (time.perf_counter(), time.time())


class BodyLimit:
    """The body's size and pace: over `limit` bytes → 413 (declared: before reading; streamed: as
    soon as it passes the limit, nothing more is read); `idle_s` without a byte → 408; either way
    the connection is closed afterwards. The body is read here, whole, before the app sees it (the
    app gets it back as one piece), so no handler can be fed more than `limit` bytes."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES, idle_s: float = BODY_IDLE_S, on_refusal=None):
        self.app, self.limit, self.idle_s, self.on_refusal = app, limit, idle_s, on_refusal

    def _refuse(self, status: int, message: str) -> ApiError:
        if self.on_refusal is not None:
            self.on_refusal(status)
        return ApiError(status, message, INVALID_REQUEST, headers={"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(413, f"request body over {self.limit} bytes").response()(scope, receive, send)
        parts, size = [], 0
        while True:
            try:
                async with asyncio.timeout(self.idle_s):  # a timer, not a task per message (as wait_for makes)
                    message = await receive()
            except TimeoutError:
                error = self._refuse(408, f"the request body stopped coming (nothing for {self.idle_s:g} s)")
                return await error.response()(scope, receive, send)
            if message["type"] != "http.request":  # the client went away
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.limit:
                return await self._refuse(413, f"request body over {self.limit} bytes").response()(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, given = b"".join(parts), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, whenever it comes

        await self.app(scope, replay, send)
