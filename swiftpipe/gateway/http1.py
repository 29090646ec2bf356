"""The gateway's HTTP/1.1 client for its upstreams: keep-alive connections per origin, each an
asyncio protocol whose answers httptools parses (llhttp, the parser uvicorn serves the gateway's own
requests with). It is the part of httpx2's AsyncClient that `upstream.UpstreamClient` uses
(`get`, `build_request`, `send(stream=True)`, `aclose`) and raises httpx2's errors (timeouts as
TimeoutException, refused or cut connections as ConnectError / RemoteProtocolError), so one retry
policy serves it and the in-process test transports.

Why not aiohttp (what the gateway used before): measured on this VM against the scripted upstream,
a call through `UpstreamClient` (the answer's parsing included) cost 0.34-0.51 ms of CPU with
aiohttp's session (request and response objects, timers, cookie and redirect handling the gateway
never uses) and 0.21 ms with this client, which writes the request in one `write` and parses the
answer in C (README "Gateway").

What it does: HTTP and HTTPS (the default TLS context: certificates checked against the system's
CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set), Content-Length,
chunked and until-close bodies, gzip/deflate answers, `limit` connections at most (more callers
wait for one), idle connections kept `keepalive_s` and reused most recent first, and a request
that finds its kept connection closed by the server (before a byte of the answer) sent once more
on a new one. Not: proxies, redirects, cookies, HTTP/2 (the upstreams are vLLM servers).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional
from urllib.parse import urlsplit

import httptools
import httpx2

PAUSE_BYTES = 1024 * 1024  # unread answer bytes after which the connection stops reading until they are taken


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: str


@dataclass
class _Request:
    method: str
    url: str
    content: Optional[bytes]
    headers: dict[str, str]
    timeout: float  # seconds: to connect, to the answer's headers, and between two pieces of its body


class Response:
    """An answer being read: `status_code` once its headers are in; its body from `aiter_bytes`
    (or `read`), then `aclose` (which keeps the connection for the next request when it can)."""

    def __init__(self, connection: "_Connection", url: str, read_timeout: float):
        self._connection, self.url, self._read_timeout = connection, url, read_timeout
        self.status_code = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content = b""
        self.headers_in = connection.loop.create_future()
        self.complete = False  # the whole body arrived
        self.started = False  # a byte of the answer arrived
        self.keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: Optional[Exception] = None
        self._waiter: Optional[asyncio.Future] = None
        self._decoder: Optional[Any] = None
        self._closed = False

    # -- fed by the connection ----------------------------------------------------------------
    def _headers_done(self, status: int, keep_alive: bool) -> None:
        self.status_code, self.keep_alive = status, keep_alive
        encoding = next((v for k, v in self.headers if k == b"content-encoding"), b"identity").strip().lower()
        if encoding in (b"gzip", b"deflate", b"x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, told by the header
        elif encoding != b"identity":
            self._fail(httpx2.DecodingError(f"{self.url}: unsupported content-encoding {encoding.decode('latin-1')!r}"))
            return
        if not self.headers_in.done():
            self.headers_in.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self._fail(httpx2.DecodingError(f"{self.url}: the answer's body does not decompress ({exc})"))
                return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > PAUSE_BYTES:
                self._connection.pause()
            self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self.headers_in.done():
            self.headers_in.set_exception(error)
            self.headers_in.exception()  # retrieved: a caller gone by now is not warned about it
        self._connection.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- read by the caller -------------------------------------------------------------------
    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= PAUSE_BYTES // 2:
                    self._connection.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                self._waiter = self._connection.loop.create_future()
                try:
                    async with asyncio.timeout(self._read_timeout):
                        await self._waiter
                except TimeoutError:
                    self._fail(httpx2.ReadTimeout(f"{self.url}: no more of the answer within {self._read_timeout:g} s"))
                finally:
                    self._waiter = None

    async def read(self) -> bytes:
        self.content = b"".join([chunk async for chunk in self.aiter_bytes()])
        return self.content

    def aiter_lines(self) -> AsyncIterator[str]:
        return lines(self.aiter_bytes())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connection.done(reusable=self.complete and self.keep_alive and self._error is None
                              and not self._chunks)


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines as httpx2 gives them (without their line ending), however the chunks fall."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to an origin; one request at a time."""

    def __init__(self, client: "Http1Client", origin: _Origin, loop: asyncio.AbstractEventLoop):
        self.client, self.origin, self.loop = client, origin, loop
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Optional[Response] = None
        self.closed = False
        self.used = False  # it has carried a request before (it may have been closed by the server since)
        self.idle_since = 0.0
        self._paused = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is not to be trusted
            self.close()
            return
        response.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(httpx2.RemoteProtocolError(f"{response.url}: not an HTTP/1.1 answer ({exc})"))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.client._forget(self)
        response = self.response
        if response is not None and not response.complete:
            until_close = response.headers_in.done() and not any(
                k in (b"content-length", b"transfer-encoding") for k, _ in response.headers)
            if until_close:
                response._finish()  # a body that ends with the connection
            else:
                why = f" ({type(exc).__name__}: {exc})" if exc else ""
                response._fail(httpx2.RemoteProtocolError(
                    f"{response.url}: the server closed the connection before the answer was complete{why}"))

    def pause_writing(self) -> None:  # a request body larger than the socket's buffer: the kernel takes it
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._headers_done(self.parser.get_status_code(), self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._finish()

    # -- flow -------------------------------------------------------------------------------
    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def done(self, reusable: bool) -> None:
        """The caller is through with the answer: the connection goes back to the pool, or is closed."""
        self.response = None
        if reusable and not self.closed:
            self.used, self.idle_since = True, time.monotonic()
            self.parser = httptools.HttpResponseParser(self)
            self.client._keep(self)
        else:
            self.close()
        self.client._slots.release()


class Http1Client:
    """Keep-alive HTTP/1.1 connections to the upstreams, `limit` at most (callers wait past it)."""

    keeps_time = True  # `send` itself bounds the wait for the answer's headers by the request's timeout

    def __init__(self, *, limit: int = 1000, keepalive_s: float = 30.0, tls: Optional[ssl.SSLContext] = None):
        self.limit, self.keepalive_s = limit, keepalive_s
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, tuple[_Origin, str]] = {}  # url -> (origin, request target)
        self._tls = tls  # HTTPS: this context, else the default one (made when first needed; SSL_CERT_FILE applies)

    def build_request(self, method: str, url: str, *, content: Optional[bytes], headers: dict[str, str],
                      timeout: float) -> _Request:
        return _Request(method, url, content, headers, timeout)

    async def get(self, url: str, *, headers: dict[str, str], timeout: float) -> Response:
        response = await self.send(_Request("GET", url, None, headers, timeout))
        try:
            await response.read()
        finally:
            await response.aclose()
        return response

    async def send(self, request: _Request, stream: bool = True) -> Response:
        """Send `request`; returns once the answer's headers are in (read the body, then `aclose`)."""
        origin, target = self._target(request.url)
        head = self._head(request, origin, target)
        await self._slots.acquire()
        connection: Optional[_Connection] = None
        try:
            async with asyncio.timeout(request.timeout):  # one deadline: connected and the answer's headers in
                for attempt in range(2):
                    connection = None
                    connection = await self._connection(origin, request)
                    reused = connection.used
                    response = Response(connection, request.url, request.timeout)
                    connection.response = response
                    assert connection.transport is not None
                    connection.transport.write(head + request.content if request.content else head)
                    try:
                        await response.headers_in
                    except httpx2.RemoteProtocolError:
                        if reused and not response.started and attempt == 0:
                            continue  # a kept connection the server had closed: once more on a new one
                        raise
                    return response
                raise AssertionError("unreachable")
        except TimeoutError:
            self._abandon(connection)
            if connection is None:
                raise httpx2.ConnectTimeout(f"{request.url}: no connection within {request.timeout:g} s") from None
            raise httpx2.ReadTimeout(f"no answer from {request.url} within {request.timeout:g} s") from None
        except BaseException:  # no answer (or cancelled): the connection cannot carry another request
            self._abandon(connection)
            raise

    def _abandon(self, connection: Optional[_Connection]) -> None:
        if connection is not None:
            connection.response = None
            connection.close()
        self._slots.release()

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    # -- connections -------------------------------------------------------------------------
    def _target(self, url: str) -> tuple[_Origin, str]:
        known = self._targets.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise httpx2.UnsupportedProtocol(f"{url}: only http:// and https:// URLs with a host are supported")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        origin = _Origin(parts.scheme, host, port, shown if port == default else f"{shown}:{port}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if len(self._targets) < 1024:
            self._targets[url] = (origin, target)
        return origin, target

    @staticmethod
    def _head(request: _Request, origin: _Origin, target: str) -> bytes:
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
        for name, value in request.headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise httpx2.LocalProtocolError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        if request.content is not None or request.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(request.content or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connection(self, origin: _Origin, request: _Request) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self, origin, loop), origin.host,
                                                         origin.port, ssl=tls, server_hostname=origin.host if tls else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx2.ConnectError(f"{request.url}: {type(exc).__name__}: {exc}") from None
        self._open.add(connection)
        return connection

    def _keep(self, connection: _Connection) -> None:
        self._idle.setdefault(connection.origin, deque()).append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
