"""A streamed chat answer on its way through the gateway: passed on event by event (ids rewritten
to the gateway's), recorded once complete (before [DONE] goes out), and always cleaned up: the
upstream response closed and a row written even when the client went away (status 499)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Optional

from fastapi.responses import StreamingResponse

from swiftpipe.gateway.protocol import UPSTREAM, loads, usage
from swiftpipe.gateway.upstream import UpstreamResult, Version, upstream_lines
from swiftpipe.task import flags

if TYPE_CHECKING:
    from swiftpipe.gateway.state import Call, Outcome, Record


class Relay:
    def __init__(self, call: "Call", version: Version, opened: UpstreamResult, response: Any, headers: dict[str, str]):
        self.call, self.version, self.opened, self.response, self.headers = call, version, opened, response, headers
        self.parts: list[str] = []
        self.tokens: tuple[Optional[int], Optional[int]] = (None, None)
        self.on_end: Optional["Record"] = None
        self.recorded = False

    def outcome(self, status: int, error: Optional[str] = None) -> "Outcome":
        from swiftpipe.gateway.state import Outcome

        content = "".join(self.parts)
        checked = None if error else self.version.task.check(self.call.input, content)
        return Outcome(status=status, output=content, checked=checked, upstream=self.opened, error=error,
                       flags=(flags.UPSTREAM_ERROR,) if error and status != 499 else (), tokens=self.tokens)

    async def end(self, status: int, error: Optional[str] = None) -> None:
        self.recorded = True
        assert self.on_end is not None
        await self.on_end(self.outcome(status, error))

    async def events(self):
        error: Optional[str] = None
        try:
            async for line in upstream_lines(self.response):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    await self.end(200)
                    yield "data: [DONE]\n\n"
                    return
                try:
                    event = loads(data)
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
        await self.end(502, message)
        yield f"data: {json.dumps({'error': {'message': message, 'type': UPSTREAM, 'code': 502}})}\n\n"

    async def finish(self) -> None:
        await self.response.aclose()
        if not self.recorded:
            await self.end(499, "the client went away before the answer was complete")

    def response_for(self, record: "Record") -> "RelayResponse":
        """The streaming response; `record` writes the row when the answer ends (or the client leaves)."""
        self.on_end = record
        return RelayResponse(self)


class RelayResponse(StreamingResponse):
    def __init__(self, relay: Relay):
        super().__init__(relay.events(), media_type="text/event-stream", headers=relay.headers)
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
