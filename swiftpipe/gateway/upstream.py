"""The servers behind the gateway: one `Version` per served model, and the HTTP calls to it.

Calls go through `http1.Http1Client` (keep-alive HTTP/1.1 connections, answers parsed by httptools),
which is the small part of httpx2's client API this module uses, so a test can hand `UpstreamClient`
an httpx2 client with an in-process transport instead. Not the SDK's httpx2 nor aiohttp: measured
on these upstream calls (the answer's parsing included), httpx2 spent ~0.8-1.0 ms of CPU per call,
aiohttp 0.34-0.51 ms, `Http1Client` 0.21 ms (README "Gateway"). Bounded retries
with the evaluator's backoff (`client.backoff`) on connection errors, timeouts, 429 and 5xx.
Nothing an upstream sends can crash the gateway: bodies are read up to `MAX_BODY` bytes and
parsed defensively; whatever is wrong becomes an `UpstreamResult` with an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from swiftpipe.core.vllm_server import model_names
from swiftpipe.gateway.protocol import Completion, dumps, loads
from swiftpipe.recipe.task import Task
from swiftpipe.task import client, flags

MAX_BODY = 16 * 1024 * 1024  # bytes of an upstream answer; more is an upstream error


@dataclass
class Version:
    """One version the gateway serves: where it is, and its task (what its recipe says about the
    requests and answers)."""

    name: str
    base_url: str  # .../v1
    model: Optional[str]  # the upstream's model name; None = ask its /v1/models on first use
    api_key: str
    task: Task = field(default_factory=Task)
    source: str = ""  # what it serves: a run directory, a model directory or a URL
    resolving: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    lookup_failed_at: float = -1e9
    lookup_error: Optional[str] = None


@dataclass
class UpstreamResult:
    status: Optional[int] = None  # the upstream's HTTP status, None when there was no answer
    body: Optional[Any] = None  # the parsed JSON of an error answer, or of `get`'s (a 200 from `post`: `completion`)
    error: Optional[str] = None
    flag: Optional[str] = None  # flags.UPSTREAM_ERROR | flags.TIMEOUT when there is no usable answer
    attempts: int = 0
    completion: Optional[Completion] = None  # a 200 answer from `post`, to be read through its views


@dataclass
class UpstreamClient:
    """The shared HTTP client and the retry policy for all versions."""

    timeout: float = 60.0  # seconds per attempt, until the answer starts (also when the transport has none)
    retries: int = 2  # more attempts after the first
    http: Any = None  # the shared HTTP client; given (tests: an in-process transport) or made by `start`

    def start(self) -> None:
        if self.http is None:
            from swiftpipe.gateway.http1 import Http1Client

            self.http = Http1Client()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def _headers(self, version: Version) -> dict[str, str]:
        return {"Authorization": f"Bearer {version.api_key}", "Content-Type": "application/json"}

    async def resolve_model(self, version: Version) -> Optional[str]:
        """The upstream's model name (its only /v1/models entry, or the one named like the version)."""
        if version.model:
            return version.model
        async with version.resolving:  # one lookup, however many requests wait for it
            if not version.model and time.monotonic() - version.lookup_failed_at > 2.0:
                version.lookup_error = await self._lookup_model(version)
                if not version.model:
                    version.lookup_failed_at = time.monotonic()  # answers fail fast for 2 s
        return version.model

    async def _lookup_model(self, version: Version) -> Optional[str]:
        """Sets version.model; returns why not, if not."""
        result = await self.get(version, "/models", timeout=5)
        if result.error or result.status != 200:
            return result.error or f"HTTP {result.status}"
        names = model_names(result.body)
        if version.name in names:
            version.model = version.name
        elif len(names) == 1:
            version.model = names[0]
        else:
            return f"it serves {len(names)} models ({', '.join(map(str, names[:5]))}); name the version like one of them"
        return None

    async def get(self, version: Version, path: str, *, timeout: float = 5.0) -> UpstreamResult:
        try:
            response = await self.http.get(version.base_url + path, headers=self._headers(version), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
            return UpstreamResult(error=f"{type(exc).__name__}: {exc}", flag=flags.UPSTREAM_ERROR)
        try:
            return UpstreamResult(status=response.status_code, body=loads(response.content))
        except (ValueError, RecursionError):
            return UpstreamResult(status=response.status_code, error="the answer is not JSON", flag=flags.UPSTREAM_ERROR)

    async def post(self, version: Version, path: str, body: dict) -> UpstreamResult:
        """POST JSON (retried as `stream` says); returns the answer (`completion`) or why there is none."""
        import httpx2

        opened, response = await self.stream(version, path, body)
        if response is None:
            return opened
        try:
            raw = await _read_limited(response.aiter_bytes())
        except _TooLarge:
            return UpstreamResult(status=200, error=f"the answer is larger than {MAX_BODY} bytes", flag=flags.UPSTREAM_ERROR,
                                  attempts=opened.attempts)
        except httpx2.TimeoutException as exc:
            return UpstreamResult(status=200, error=f"the answer stopped coming ({type(exc).__name__})", flag=flags.TIMEOUT,
                                  attempts=opened.attempts)
        except (httpx2.HTTPError, OSError) as exc:  # cut off mid-body
            return UpstreamResult(status=200, error=f"the answer was cut off ({type(exc).__name__}: {exc})",
                                  flag=flags.UPSTREAM_ERROR, attempts=opened.attempts)
        finally:
            await response.aclose()
        result = _parse(200, raw)
        result.attempts = opened.attempts
        return result

    async def stream(self, version: Version, path: str, body: dict) -> tuple[UpstreamResult, Optional[Any]]:
        """Open a streamed POST. Returns (result, response): the open response when the upstream
        said 200 (read it with `upstream_lines`, close it with `aclose`), else None and `result`
        says why (retried like `post` until the first byte)."""
        import httpx2

        payload = dumps(body)
        result = UpstreamResult()
        for attempt in range(self.retries + 1):
            request = self.http.build_request("POST", version.base_url + path, content=payload,
                                              headers=self._headers(version), timeout=self.timeout)
            try:
                if getattr(self.http, "keeps_time", False):
                    response = await self.http.send(request, stream=True)
                else:  # an httpx2 transport (tests) may not time out by itself
                    async with asyncio.timeout(self.timeout):
                        response = await self.http.send(request, stream=True)
            except (httpx2.TimeoutException, asyncio.TimeoutError) as exc:
                result = UpstreamResult(error=f"no answer within {self.timeout:g}s ({type(exc).__name__})",
                                        flag=flags.TIMEOUT, attempts=attempt + 1)
            except (httpx2.HTTPError, OSError) as exc:
                result = UpstreamResult(error=f"{type(exc).__name__}: {exc}", flag=flags.UPSTREAM_ERROR,
                                        attempts=attempt + 1)
            else:
                if response.status_code == 200:
                    return UpstreamResult(status=200, attempts=attempt + 1), response
                try:
                    raw = await _read_limited(response.aiter_bytes())
                    result = _parse(response.status_code, raw)
                except (_TooLarge, httpx2.HTTPError, OSError) as exc:
                    result = UpstreamResult(status=response.status_code, error=f"{type(exc).__name__}: {exc}",
                                            flag=flags.UPSTREAM_ERROR)
                finally:
                    await response.aclose()
                result.attempts = attempt + 1
                if not (response.status_code == 429 or response.status_code >= 500):
                    return result, None
            if attempt < self.retries:
                await asyncio.sleep(client.backoff(attempt))
        return result, None


class _TooLarge(Exception):
    pass


async def _read_limited(chunks: AsyncIterator[bytes]) -> bytes:
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge()
        parts.append(chunk)
    return b"".join(parts)


def _parse(status: int, raw: bytes) -> UpstreamResult:
    try:
        if status == 200:
            return UpstreamResult(status=status, completion=Completion.read(raw, typed=True))
        body = loads(raw)
    except (ValueError, RecursionError):
        snippet = raw[:200].decode("utf-8", "replace")
        return UpstreamResult(status=status, error=f"HTTP {status}, the answer is not JSON: {snippet!r}",
                              flag=flags.UPSTREAM_ERROR)
    if status != 200:
        message = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(message, dict):
            message = message.get("message", message)
        return UpstreamResult(status=status, body=body, error=f"HTTP {status}: {message}", flag=flags.UPSTREAM_ERROR)
    return UpstreamResult(status=status, body=body)  # (1xx-3xx: not an answer the callers take)


async def upstream_lines(response) -> AsyncIterator[str]:
    """The lines of a streamed answer, up to MAX_BODY characters in all (the caller closes it)."""
    size = 0
    async for line in response.aiter_lines():
        size += len(line)
        if size > MAX_BODY:
            raise _TooLarge(f"the streamed answer is larger than {MAX_BODY} characters")
        yield line
