"""The running gateway's state: its versions, the keys and traffic weights (reread from the
database every second), the rate limiter, the metrics and the request log; and the two things
every request goes through: who sent it (`authenticate`) and which version answers it (`route`).

A request on its way is a `Call`; how it ended is an `Outcome` (or a `Failure`, the one error type
the handlers raise), which `Gateway.record` writes to the request log (committed before the
response leaves) and counts in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from fastapi import Request

from swiftpipe.gateway import feedback, keys, rollout, store
from swiftpipe.gateway.metrics import Metrics
from swiftpipe.gateway.middleware import arrived
from swiftpipe.gateway.protocol import ALIAS, AUTHENTICATION, NOT_FOUND, RATE_LIMIT, SERVER, ApiError
from swiftpipe.gateway.upstream import UpstreamClient, UpstreamResult, Version
from swiftpipe.recipe.task import Task
from swiftpipe.task import flags

REFRESH_S = 1.0  # how often keys and weights are reread from the database


@dataclass
class Call:
    """One request on its way through the gateway."""

    rid: str
    ts: float  # unix time it arrived
    started: float  # perf_counter when it arrived
    endpoint: str  # extract | chat | chat-stream
    key: keys.Key
    input: str
    version: Optional[str] = None  # set once routed

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)


@dataclass
class Outcome:
    """How a request ended: what its log row keeps, and how the client is answered."""

    status: int = 200
    output: Optional[str] = None  # the model's raw answer
    checked: Optional[flags.Checked] = None
    upstream: Optional[UpstreamResult] = None
    error: Optional[str] = None
    flags: tuple[str, ...] = ()  # besides the answer's own (upstream_error, timeout)
    tokens: tuple[Optional[int], Optional[int]] = (None, None)
    respond: Optional[Callable[[float], Any]] = None  # the response, given the logged latency (ms)
    relay: Optional[Any] = None  # a streamed answer (`relay.Relay`): recorded when it ends

    def row(self, call: Call, latency: float) -> tuple:
        checked = self.checked
        error = self.error or (self.upstream.error if self.upstream else None) or \
            ("; ".join(checked.problems) if checked and checked.problems else None)
        return store.request_row(
            id=call.rid, ts=call.ts, version=call.version, key_id=call.key.id, endpoint=call.endpoint,
            input=call.input, output=self.output, fields=checked.fields if checked else None,
            valid=checked.valid if checked else None, flags=self.all_flags, latency_ms=latency, status=self.status,
            upstream_status=self.upstream.status if self.upstream else None, error=error,
            prompt_tokens=self.tokens[0], completion_tokens=self.tokens[1])

    @property
    def all_flags(self) -> list[str]:
        return [*self.flags, *(self.checked.flags if self.checked else [])]


Record = Callable[[Outcome], Awaitable[float]]


class Failure(Exception):
    """A request that ends without an answer: what the client is told (status, message, error type,
    extra fields of the error) and what its log row keeps (the upstream's result, flags)."""

    def __init__(self, status: int, message: str, kind: str, *, flags: tuple[str, ...] = (),
                 upstream: Optional[UpstreamResult] = None, detail: Optional[str] = None,
                 headers: Optional[dict] = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.flags, self.upstream, self.headers, self.extra = flags, upstream, headers, extra
        self.detail = detail  # the log row's error, when it is not the message (the upstream's own)

    def outcome(self) -> Outcome:
        return Outcome(status=self.status, error=self.detail or self.message, flags=self.flags, upstream=self.upstream)

    def api_error(self, rid: str) -> ApiError:
        """The client's error, carrying the request's id like every logged request."""
        return ApiError(self.status, self.message, self.kind, headers=self.headers, **self.extra, id=rid)


class Gateway:
    """The running gateway's state: versions, keys and weights (reread every second), the log."""

    def __init__(self, versions: list[Version], db: Path, *, upstreams: Optional[UpstreamClient] = None,
                 keep_days: Optional[float] = None):
        self.versions = {v.name: v for v in versions}
        self.db = Path(db)
        self.upstreams = upstreams or UpstreamClient()
        self.keep_days = keep_days
        self.conn = store.connect(self.db)
        self.log: Optional[store.RequestLog] = None
        self.keys: dict[str, keys.Key] = {}
        self.weights: list[tuple[str, float]] = [(v.name, 0.0) for v in versions]
        self.limiter = keys.RateLimiter()
        self.metrics = Metrics()
        self._last_prune = 0.0
        self._refresher: Optional[asyncio.Task] = None

    # -- lifetime --------------------------------------------------------------------------
    async def start(self) -> None:
        self.log = store.RequestLog(self.db)
        self.upstreams.start()
        self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.upstreams.close()
        if self.log is not None:
            self.log.close()

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

    async def _refresh_forever(self) -> None:
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
                                "`swiftpipe keys create`)", AUTHENTICATION)
        key = self.keys.get(keys.key_hash(token))
        if key is None:
            found = keys.find(self.conn, token)  # created in the last second?
            key = found if found is not None and found.revoked is None else None
        if key is None:
            self.metrics.rejected.labels("401").inc()
            raise ApiError(401, "invalid or revoked API key", AUTHENTICATION)
        wait = self.limiter.retry_after(key)
        if wait is not None:
            self.metrics.rejected.labels("429").inc()
            raise ApiError(429, f"rate limit of key '{key.name}' reached ({key.rpm} requests per minute); "
                                f"retry in {wait} s", RATE_LIMIT, headers={"Retry-After": str(wait)})
        return key

    def call(self, request: Request, key: keys.Key, endpoint: str, text: str, *, prefix: str = "req_") -> Call:
        started, ts = arrived(request)
        return Call(prefix + secrets.token_hex(12), ts, started, endpoint, key, text)

    def route(self, model: Optional[str], call: Call) -> Version:
        """The version that answers: the one named, else the rollout's choice for the key (sticky)."""
        if model and model != ALIAS:
            version = self.versions.get(model)
            if version is None:
                raise Failure(404, f"unknown model '{model}'; versions: {', '.join(self.versions)} "
                                   f"(or '{ALIAS}' for the rollout's choice)", NOT_FOUND, versions=list(self.versions))
        else:
            version = self.versions[rollout.choose(self.weights, call.key.id)]
        call.version = version.name
        return version

    async def record(self, call: Call, outcome: Outcome) -> float:
        """Log the request (returns once committed) and count it; returns its latency in ms."""
        latency = call.latency_ms()
        assert self.log is not None
        try:
            await self.log.add(outcome.row(call, latency))
        except store.StoreError as exc:
            raise ApiError(500, f"{exc}; the request was not answered", SERVER, id=call.rid) from None
        self.metrics.observe(call.version or "-", call.endpoint, outcome.status, latency / 1000, outcome.all_flags)
        return latency

    # -- the other endpoints ----------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """`/v1/models`: the versions, their weights and tasks, and the rollout alias."""
        weights = dict(self.weights)
        data = [{"id": name, "object": "model", "owned_by": "swiftpipe", "created": 0,
                 "weight": weights.get(name, 0.0), "source": v.source, "recipe": v.task.recipe,
                 "schema": v.task.schema, "verbatim_fields": list(v.task.verbatim_fields), "metric": v.task.metric}
                for name, v in self.versions.items()]
        data.append({"id": ALIAS, "object": "model", "owned_by": "swiftpipe", "created": 0,
                     "description": "the version the rollout weights pick for this key"})
        return {"object": "list", "data": data}

    async def health(self) -> tuple[int, dict[str, Any]]:
        """`/health`: each version up or down (its /models answers), and the request log."""
        names = list(self.versions)
        answers = await asyncio.gather(*(self.upstreams.get(self.versions[n], "/models", timeout=3) for n in names))
        weights = dict(self.weights)
        states = {}
        for name, answer in zip(names, answers):
            alive = answer.status == 200 and answer.error is None
            states[name] = {"state": "up" if alive else "down", "weight": weights.get(name, 0.0),
                            **({} if alive else {"error": answer.error or f"HTTP {answer.status}"})}
        log_state = "ok" if not (self.log and self.log.failed) else f"failing: {self.log.failed}"
        up = sum(s["state"] == "up" for s in states.values())
        status = "ok" if up == len(states) and log_state == "ok" else ("degraded" if up else "down")
        return (200 if up and log_state == "ok" else 503), {"status": status, "versions": states,
                                                            "request_log": log_state}

    def request_detail(self, request_id: str) -> Optional[dict[str, Any]]:
        """`/v1/requests/{id}`: the logged request and its review, or None."""
        row = self.conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        review = self.conn.execute("SELECT verdict, fields, ts FROM feedback WHERE request_id = ?",
                                   (request_id,)).fetchone()
        view = feedback.request_view(row)
        view["review"] = {"verdict": review["verdict"], "fields": json.loads(review["fields"]), "ts": review["ts"]} \
            if review else None
        return view

    def review(self, request_id: Any, *, fields: Any, verdict: Any, key: keys.Key) -> dict[str, Any]:
        """`POST /v1/feedback`: checked against the task of the version that answered."""
        row = self.conn.execute("SELECT version FROM requests WHERE id = ?", (request_id,)).fetchone() \
            if isinstance(request_id, str) else None
        return feedback.save(self.conn, request_id=request_id, fields=fields, verdict=verdict,
                               task=self.task_of(row["version"] if row else None), key_id=key.id)
