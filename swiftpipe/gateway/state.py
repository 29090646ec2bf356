"""The running gateway's state: its versions, the keys and traffic weights (reread from the
database every second), the rate limiter, the metrics and the request log; and what every request
goes through: who sent it (`key_for`, from the headers, before its body: `access.AuthGate`), which
version answers it (`route`), and the one place its log row is written (`answer`).

A request on its way is a `Call`; how it ended is an `Outcome` (or a `Failure`, the one error type
the handlers raise), which `Gateway.record` writes to the request log (committed before the
response leaves; the text kept as `--log-content` says) and counts in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from swiftpipe.gateway import db, feedback, keys, privacy, rollout, store
from swiftpipe.gateway.metrics import Metrics
from swiftpipe.gateway.middleware import arrived_at
from swiftpipe.gateway.protocol import (
    ALIAS,
    AUTHENTICATION,
    NOT_FOUND,
    PERMISSION,
    RATE_LIMIT,
    SERVER,
    UPSTREAM_UNAVAILABLE,
    ApiError,
)
from swiftpipe.gateway.upstream import UpstreamClient, UpstreamResult, Version
from swiftpipe.recipe.task import Task
from swiftpipe.task import flags

REFRESH_S = 1.0  # how often keys and weights are reread from the database
TOUCH_WAIT_MS = 50  # longest the once-a-second write of keys' last use waits for another's lock


class Entropy:
    """The OS's random bytes (os.urandom, what `secrets` and SystemRandom read), fetched 4 KiB at a
    time: request ids (12 bytes) and the audit sample's draws (as SystemRandom.random draws, from 7
    bytes) stay unpredictable, at one getrandom call per ~300 requests instead of two per request
    (measured on this VM: ~0.3 ms of CPU a request under load)."""

    def __init__(self, size: int = 4096):
        self.size, self.pool, self.at = size, b"", 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.pool):
            self.pool, self.at = os.urandom(self.size), 0
        self.at += n
        return self.pool[self.at - n:self.at]

    def below(self, share: float) -> bool:
        """True with probability `share` (SystemRandom.random's 53 bits from 7 bytes)."""
        return share > 0 and (int.from_bytes(self.take(7), "big") >> 3) * 2.0 ** -53 < share


ENTROPY = Entropy()
LOG_RETRY_AFTER_S = 2  # what a 503 for an unavailable request log tells the client


@dataclass
class Call:
    """One request on its way through the gateway."""

    rid: str
    ts: float  # unix time it arrived
    started: float  # perf_counter when it arrived
    endpoint: str  # extract | chat | chat-stream (a refused request: its path)
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

    def row(self, call: Call, latency: float, content: str, audit_share: float = 0.0) -> tuple:
        """The log row; its texts as the `content` mode keeps them (privacy.kept); an answered one with
        its text joins the audit sample with probability `audit_share` (`gateway.feedback`)."""
        checked = self.checked
        error = self.error or (self.upstream.error if self.upstream else None) or \
            ("; ".join(checked.problems) if checked and checked.problems else None)
        text, output, fields = privacy.kept(content, self.status, call.input, self.output,
                                            checked.fields if checked else None)
        return store.request_row(
            id=call.rid, ts=call.ts, version=call.version, key_id=call.key.id, endpoint=call.endpoint,
            input=text, output=output, fields=fields, valid=checked.valid if checked else None,
            flags=self.all_flags, latency_ms=latency, status=self.status,
            upstream_status=self.upstream.status if self.upstream else None, error=error,
            prompt_tokens=self.tokens[0], completion_tokens=self.tokens[1], content=content,
            confidence=checked.confidence if checked else None,
            row_confidence=checked.row_confidence if checked else None,
            audit=self.status == 200 and text is not None and ENTROPY.below(audit_share))

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


async def fail(failure: Failure) -> Outcome:
    """A handler that fails at once (a refusal, answered and logged through `Gateway.answer`)."""
    raise failure


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Gateway:
    """The running gateway's state: versions, keys and weights (reread every second), the log."""

    def __init__(self, versions: list[Version], db: Any, *, upstreams: Optional[UpstreamClient] = None,
                 keep_days: Optional[float] = store.DEFAULT_KEEP_DAYS, content: str = "full",
                 log_wait_s: float = store.LOG_WAIT_S, audit_share: float = feedback.AUDIT_SHARE,
                 shared_limits: Optional[bool] = None):
        if content not in privacy.MODES:
            raise ValueError(f"content must be one of {privacy.MODES}")
        self.versions = {v.name: v for v in versions}
        self.db = store.target(db)  # a SQLite file or a PostgreSQL URL (gateway.db)
        self.upstreams = upstreams or UpstreamClient()
        self.keep_days = keep_days
        self.content = content
        self.log_wait_s = log_wait_s
        self.audit_share = audit_share  # of answered requests, drawn into the review queue's audit sample
        self.conn = store.connect(self.db)
        self.log: Optional[store.RequestLog] = None
        self.keys: dict[str, keys.Key] = {}
        self.weights: list[tuple[str, float]] = [(v.name, 0.0) for v in versions]
        # rate windows in the database when other processes share it (PostgreSQL, serve --workers)
        shared = not self.db.is_sqlite if shared_limits is None else shared_limits
        self.limiter = keys.SharedRateLimiter(self.conn) if shared else keys.RateLimiter()
        self.metrics = Metrics()
        self.used: dict[str, float] = {}  # key id -> last use, written once a second
        self._said: dict[str, float] = {}  # a warning -> when it was last printed (once a minute)
        self._last_prune = 0.0
        self._refresher: Optional[asyncio.Task] = None
        self.in_flight = 0  # requests between `answer` and their log row (the log writer waits for them)

    # -- lifetime --------------------------------------------------------------------------
    async def start(self) -> None:
        self.log = store.RequestLog(self.db, wait_s=self.log_wait_s, in_flight=lambda: self.in_flight)
        self.upstreams.start()
        self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.upstreams.close()
        if self.log is not None:
            self.log.close()

    def say_once_a_minute(self, kind: str, line: str) -> None:
        """One line in the gateway's output per kind of trouble per minute, however often it happens."""
        now = time.monotonic()
        if now - self._said.get(kind, -1e9) >= 60:
            self._said[kind] = now
            print(f"gateway: {line}", file=sys.stderr, flush=True)

    # -- state from the database -------------------------------------------------------------
    def refresh(self) -> None:
        self.keys = keys.active(self.conn)
        used, self.used = self.used, {}
        try:
            if used and not (self.log is not None and self.log.failing):  # a failing log: not even tried
                # in the event loop: a locked database must not hold every request up for the connection's 10 s
                with db.lock_wait(self.conn, TOUCH_WAIT_MS, then_ms=store.CONNECT_BUSY_MS):
                    keys.touch(self.conn, used)
                used = {}
        except Exception:  # noqa: BLE001 - a locked file: the last-use times wait for the next second
            pass
        self.used = {**used, **self.used}
        saved = dict(rollout.current(self.conn))
        self.weights = [(name, saved.get(name, 0.0)) for name in self.versions]
        for name, weight in self.weights:
            self.metrics.weight.labels(name).set(weight)
        if self.keep_days is not None and time.time() - self._last_prune > 3600:
            self._last_prune = time.time()
            asyncio.get_running_loop().run_in_executor(None, self._prune, self.keep_days)

    def _prune(self, keep_days: float) -> None:
        conn = None
        try:
            conn = store.connect(self.db)  # its own connection, in a worker thread: a long DELETE blocks no request
            store.prune(conn, keep_days)
        except Exception as exc:  # noqa: BLE001 - a locked file, a database down: pruned an hour later
            self.say_once_a_minute("prune", f"could not prune the request log ({type(exc).__name__}: {exc})")
        finally:
            if conn is not None:
                conn.close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a locked or broken file must not stop serving
                self.say_once_a_minute("refresh", f"could not reread keys and weights from {self.db}: {exc}")

    def task_of(self, version: Optional[str]) -> Optional[Task]:
        """The task of a version: the served one's, else what the database kept of it (None: unknown)."""
        if version in self.versions:
            return self.versions[version].task
        stored = store.task(self.conn, version)
        return Task.from_stored(stored) if stored is not None else None

    # -- who sent it ------------------------------------------------------------------------
    def key_for(self, token: str) -> keys.Key:
        """The key a request's bearer token is, or 401 (missing, unknown, revoked, expired)."""
        if not token:
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
        if key.expired():
            self.metrics.rejected.labels("401").inc()
            raise ApiError(401, f"the API key '{key.name}' expired on {_when(key.expires or 0)}; use its successor "
                                f"(`swiftpipe keys rotate`)", AUTHENTICATION)
        self.used[key.id] = time.time()
        return key

    def admit(self, key: keys.Key) -> None:
        """The key's rate limit: 429 with Retry-After when it is over it."""
        wait = self.limiter.retry_after(key)
        if wait is not None:
            self.metrics.rejected.labels("429").inc()
            raise ApiError(429, f"rate limit of key '{key.name}' reached ({key.rpm} requests per minute); "
                                f"retry in {wait} s", RATE_LIMIT, headers={"Retry-After": str(wait)})

    async def refuse_role(self, scope: Any, key: keys.Key, role: str) -> None:
        """403: the key lacks the role; logged (the row keeps the key's id, no text)."""
        self.metrics.rejected.labels("403").inc()
        call = self.call(scope, key, scope["path"], "")
        await self.answer(call, fail(Failure(403, f"this endpoint needs a {role} key; key '{key.name}' is a "
                                                  f"{key.role} key", PERMISSION, role_needed=role)))

    def call(self, scope: Any, key: keys.Key, endpoint: str, text: str, *, prefix: str = "req_") -> Call:
        started, ts = arrived_at(scope)
        return Call(prefix + ENTROPY.take(12).hex(), ts, started, endpoint, key, text)

    # -- which version answers --------------------------------------------------------------
    def route(self, model: Optional[str], call: Call) -> Version:
        """The version that answers: the one named, else the rollout's choice for the key (sticky),
        among the versions the key may call."""
        key = call.key
        if model and model != ALIAS:
            version = self.versions.get(model)
            if version is None or not key.may_call(model):
                allowed = [n for n in self.versions if key.may_call(n)]
                raise Failure(404, f"unknown model '{model}'; versions: {', '.join(allowed) or 'none for this key'} "
                                   f"(or '{ALIAS}' for the rollout's choice)", NOT_FOUND, versions=allowed)
        else:
            weights = [(n, w) for n, w in self.weights if key.may_call(n)]
            if not weights:
                raise Failure(404, f"key '{key.name}' may call none of the versions served here", NOT_FOUND,
                              versions=[])
            version = self.versions[rollout.choose(weights, key.id)]
        call.version = version.name
        return version

    # -- the one place a request's row is written -------------------------------------------
    async def answer(self, call: Call, work: Awaitable[Outcome]) -> Any:
        """Await a handler and answer the client; every outcome — answered, failed, refused, or
        streamed (when the stream ends) — is written here. While the log is known to be failing the
        handler does not even start (no upstream call for an answer that could not be logged)."""
        left = False

        def leave() -> None:  # once per request: its row is written (or none will come)
            nonlocal left
            if not left:
                left = True
                self.in_flight -= 1

        async def record(outcome: Outcome) -> float:
            try:
                return await self.record(call, outcome)
            finally:
                leave()

        if self.log is not None and self.log.failing:
            if asyncio.iscoroutine(work):
                work.close()
            self._log_failed(self.log.failing)
            raise ApiError(503, f"the request log is unavailable ({self.log.failing}); nothing was done, retry in "
                                f"{LOG_RETRY_AFTER_S} s", UPSTREAM_UNAVAILABLE, id=call.rid,
                           headers={"Retry-After": str(LOG_RETRY_AFTER_S)})
        self.in_flight += 1
        try:
            outcome = await work
        except Failure as failure:
            await record(failure.outcome())
            raise failure.api_error(call.rid) from None
        except BaseException:  # cancelled, or a bug (a 500): no row comes from this request
            leave()
            raise
        if outcome.relay is not None:
            return outcome.relay.response_for(record)
        latency = await record(outcome)
        assert outcome.respond is not None
        return outcome.respond(latency)

    async def record(self, call: Call, outcome: Outcome) -> float:
        """Log the request (returns once committed) and count it; returns its latency in ms."""
        latency = call.latency_ms()
        assert self.log is not None
        try:
            await self.log.add(outcome.row(call, latency, self.content, self.audit_share))
        except store.LogUnavailable as exc:
            self._log_failed(str(exc))
            raise ApiError(503, f"{exc}; the request was not answered, retry in {LOG_RETRY_AFTER_S} s",
                           UPSTREAM_UNAVAILABLE, id=call.rid, headers={"Retry-After": str(LOG_RETRY_AFTER_S)}) from None
        except store.StoreError as exc:
            self.metrics.log_failures.inc()
            raise ApiError(500, f"{exc}; the request was not answered", SERVER, id=call.rid) from None
        self.metrics.observe(call.version or "-", call.endpoint, outcome.status, latency / 1000, outcome.all_flags)
        return latency

    def _log_failed(self, why: str) -> None:
        self.metrics.log_failures.inc()
        self.say_once_a_minute("log", f"the request log {self.db} is unavailable, requests get 503: {why}")

    # -- the other endpoints ----------------------------------------------------------------
    def models(self, key: keys.Key) -> dict[str, Any]:
        """`/v1/models`: the versions the key may call, their weights and tasks (what each serves,
        a path or an upstream URL, for admin keys only), and the rollout alias."""
        weights = dict(self.weights)
        data = [{"id": name, "object": "model", "owned_by": "swiftpipe", "created": 0,
                 "weight": weights.get(name, 0.0), **({"source": v.source} if key.may("admin") else {}),
                 "recipe": v.task.recipe, "schema": v.task.schema, "verbatim_fields": list(v.task.verbatim_fields),
                 "metric": v.task.metric}
                for name, v in self.versions.items() if key.may_call(name)]
        data.append({"id": ALIAS, "object": "model", "owned_by": "swiftpipe", "created": 0,
                     "description": "the version the rollout weights pick for this key"})
        return {"object": "list", "data": data}

    async def health(self, details: bool) -> tuple[int, dict[str, Any]]:
        """`/health`: each version up or down (its /models answers), and the request log; only the
        overall status unless `details` (this machine, or an admin key)."""
        names = list(self.versions)
        answers = await asyncio.gather(*(self.upstreams.get(self.versions[n], "/models", timeout=3) for n in names))
        weights = dict(self.weights)
        states = {}
        for name, answer in zip(names, answers):
            alive = answer.status == 200 and answer.error is None
            states[name] = {"state": "up" if alive else "down", "weight": weights.get(name, 0.0),
                            **({} if alive else {"error": answer.error or f"HTTP {answer.status}"})}
        log_state = "ok" if not (self.log and self.log.failing) else f"failing: {self.log.failing}"
        up = sum(s["state"] == "up" for s in states.values())
        status = "ok" if up == len(states) and log_state == "ok" else ("degraded" if up else "down")
        body: dict[str, Any] = {"status": status, "versions": states, "request_log": log_state} if details \
            else {"status": status}
        return (200 if up and log_state == "ok" else 503), body

    def request_detail(self, request_id: str, key: keys.Key) -> Optional[dict[str, Any]]:
        """`/v1/requests/{id}`: the logged request and its review, or None — also for a client key
        asking for another key's request (not found, not forbidden: no existence oracle)."""
        row = self.conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None or (not key.may("reviewer") and row["key_id"] != key.id):
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
