"""Limits on connections, below HTTP: uvicorn's httptools protocol with a ceiling on open
connections, on the size of a request's headers and on the time they take to arrive.

- open connections: 1000 by default (`--max-connections`), and below the process's open-file
  limit, which `serve` raises to its hard limit. Past it, the oldest connection that has not
  started a request is closed to make room; if every one is busy, the new one is closed.
- header size: 32 KiB (request line and headers); past it: 431 and the connection closed.
- header time: 10 s (`--header-timeout`) from the connection (or a request's first byte) to the
  end of its headers; past it the connection is closed.
- idle keep-alive: 5 s between requests (uvicorn's `timeout_keep_alive`).
- the body: 8 MiB, 30 s without a byte (`--body-timeout`; `middleware.BodyLimit`): 413 / 408,
  connection closed.

Each refusal is counted in `/metrics` (`swiftpipe_refused_connections_total{reason}`) and told in
one line of the gateway's output per reason per minute, never per connection.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Callable, Optional

from swiftpipe.gateway.middleware import BODY_IDLE_S


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1000
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    body_idle_s: float = BODY_IDLE_S  # middleware.BodyLimit's pause between two pieces of a body (408)


REASONS = {
    "too_many": "a new connection was closed: {limit} connections are open and busy",
    "idle_evicted": "an idle connection was closed to make room ({limit} connections open)",
    "headers_too_large": "request headers over {limit} bytes (431)",
    "headers_too_slow": "request headers did not arrive within {limit:g} s",
}


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards `wanted` (within its hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def protocol_class(limits: Limits, refused: Callable[[str, object], None]):
    """uvicorn's httptools protocol under `limits`; `refused(reason, limit)` is told each refusal."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_bytes = 0
            self._waiting = True  # for a request's headers (none has started, or one is arriving)
            self._since = self.loop.time()
            self._timer: Optional[asyncio.TimerHandle] = self.loop.call_later(limits.header_timeout_s,
                                                                               self._headers_too_slow)
            if len(self.connections) > limits.max_connections:
                idle = [c for c in self.connections if c is not self and getattr(c, "_waiting", False)
                        and getattr(c, "_header_bytes", 1) == 0]
                if idle:
                    victim = min(idle, key=lambda c: getattr(c, "_since", 0.0))
                    refused("idle_evicted", limits.max_connections)
                    victim.transport.close()
                else:
                    refused("too_many", limits.max_connections)
                    transport.close()

        def data_received(self, data: bytes) -> None:
            if self._waiting:  # count what arrives before the end of the headers
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end + 4
                if self._header_bytes > limits.max_header_bytes:
                    if not self.transport.is_closing():
                        refused("headers_too_large", limits.max_header_bytes)
                        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0"
                                             b"\r\nconnection: close\r\n\r\n")
                        self.transport.close()
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._waiting, self._since = True, self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(limits.header_timeout_s, self._headers_too_slow)

        def on_headers_complete(self) -> None:
            self._waiting = False
            self._cancel_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._since = self.loop.time()
            self._waiting, self._header_bytes = True, 0  # idle until the next request (keep-alive)

        def connection_lost(self, exc) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def _cancel_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_too_slow(self) -> None:
            self._timer = None
            if self._waiting and not self.transport.is_closing():  # connected (or began) and no full headers
                refused("headers_too_slow", limits.header_timeout_s)
                self.transport.close()

    return GuardedProtocol
