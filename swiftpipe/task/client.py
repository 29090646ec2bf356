"""The one OpenAI client of swiftpipe: sending a request with retries and running many of them
concurrently. Used by `eval`, `data label`, the gateway (its upstream calls) and batch extraction.
What an extraction request holds is the task's to say (`swiftpipe.recipe.task.Task.sdk_kwargs`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.task.confidence import pieces_from_openai

# The model name a swiftpipe gateway answers for "the version its rollout weights pick for this key".
ROLLOUT_ALIAS = "auto"


class ClientError(SwiftpipeError):
    pass


class AuthError(ClientError):
    """The server rejected the key: every other request would fail the same way."""


@dataclass
class Endpoint:
    """Where requests go: an OpenAI-compatible server and the model name it serves."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    timeout: float = 120  # seconds per request attempt
    retries: int = 4  # more attempts after the first, on connection errors, timeouts, 429, 5xx

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` + 1 (0.5, 1, 2, 4, 8, 8, ...)."""
    return min(0.5 * 2**attempt, 8.0)


@dataclass
class Completion:
    text: Optional[str] = None
    error: Optional[str] = None  # after the retries: connection / timeout / 5xx / 4xx message
    timed_out: bool = False  # the last attempt got no answer in time
    latency_s: Optional[float] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens (vLLM: --enable-prompt-tokens-details)
    finish_reason: Optional[str] = None
    pieces: Optional[list[tuple[bytes, float]]] = None  # the sampled tokens and logprobs; None: not returned


def http_client():
    """The OpenAI SDK's own httpx client, with TCP_NODELAY on its sockets.

    Without it the request body's small second write waits for the delayed ACK of the headers
    (Nagle): ~25 ms per request, during which the send blocks the whole event loop, so requests
    leave in waves and the server idles between them (measured: 8 vs 30+ requests/s at
    concurrency 16 on CPU vLLM; vLLM's own aiohttp benchmark client sets TCP_NODELAY too).
    """
    import socket

    import httpx2
    import openai

    transport = httpx2.AsyncHTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
    )
    return openai.DefaultAsyncHttpxClient(transport=transport)


def async_client(endpoint: Endpoint):
    """An AsyncOpenAI client for `endpoint`; retries are ours (see `chat`), not the SDK's."""
    import openai

    return openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0,
                              timeout=endpoint.timeout, http_client=http_client())


async def chat(client, kwargs: dict, endpoint: Endpoint) -> Completion:
    """One chat completion: retries with backoff on connection errors, timeouts, 429 and 5xx; a 4xx
    for this request is returned as its error; a rejected key or an unknown model raises (every
    other request would fail the same way)."""
    import openai

    result = Completion()
    for attempt in range(endpoint.retries + 1):
        started = time.perf_counter()
        try:
            response = await client.chat.completions.create(**kwargs)
        except openai.AuthenticationError as exc:
            raise AuthError(
                f"the server at {endpoint.base_url} rejected the API key (HTTP {exc.status_code}); "
                f"set OPENAI_API_KEY to the key the server was started with"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            result.timed_out = isinstance(exc, openai.APITimeoutError)
            if attempt < endpoint.retries:
                await asyncio.sleep(backoff(attempt))
            continue
        except openai.NotFoundError as exc:
            raise ClientError(
                f"the server at {endpoint.base_url} does not serve model '{endpoint.model}' ({exc.message}); "
                f"pass the served name with --model"
            ) from None
        except openai.APIStatusError as exc:  # 4xx for this row (prompt too long, ...): not retried
            result.error, result.timed_out = f"HTTP {exc.status_code}: {exc.message}", False
            return result
        choice = response.choices[0]
        usage = response.usage
        logprobs = getattr(choice, "logprobs", None)
        return Completion(text=choice.message.content, latency_s=time.perf_counter() - started,
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          cached_tokens=cached_tokens(usage),
                          finish_reason=choice.finish_reason,
                          pieces=pieces_from_openai(getattr(logprobs, "content", None)))
    return result


def cached_tokens(usage: Any) -> int:
    """The prompt tokens the server found in its prefix cache (OpenAI's and vLLM's
    `usage.prompt_tokens_details.cached_tokens`; 0 when not reported)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else getattr(usage, "prompt_tokens_details",
                                                                                           None)
    found = details.get("cached_tokens") if isinstance(details, dict) else getattr(details, "cached_tokens", None)
    return found if isinstance(found, int) else 0


async def for_each_concurrently(items: Sequence, handle: Callable[[Any], Awaitable[None]], concurrency: int) -> None:
    """Await `handle(item)` for every item with `concurrency` workers; on error or cancellation the
    other workers are cancelled before this returns (nothing keeps running in the background)."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await handle(item)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(len(items), 1)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
