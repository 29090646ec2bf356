"""The gateway in-process: its FastAPI app driven through `httpx.ASGITransport`, in front of the
scripted upstream (bench/scripted_upstream.py's ASGI app, served in-process to the gateway's own
HTTP client, httpx2) — real routing, checks, log and metrics, no sockets.

Every test that uses `in_process` runs twice: on a SQLite file and on a fresh database of the
session's real PostgreSQL server (`gateway_store`), unless marked `sqlite_only` (what only a file
has: its locks, its modes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import httpx
import httpx2
import pytest

from bench.scripted_upstream import make_app
from swiftpipe.gateway import keys, rollout, store
from swiftpipe.gateway.app import create_app
from swiftpipe.gateway.state import Gateway
from swiftpipe.gateway.upstream import UpstreamClient, Version
from swiftpipe.recipe.load import load_recipe
from swiftpipe.recipe.task import task_of
from tests.helpers import DEMO_RECIPE, KEY, REPO

STORES = ("sqlite", "postgresql")
_store: dict[str, Any] = {"server": None}  # where in_process makes its database: None, a file in tmp_path


def pytest_generate_tests(metafunc):
    """Both stores for the tests that start the gateway in-process (they name `in_process`)."""
    if "in_process" in metafunc.function.__code__.co_names and not metafunc.definition.get_closest_marker(
            "sqlite_only"):
        metafunc.parametrize("gateway_store", STORES, indirect=True)


@pytest.fixture(autouse=True)
def gateway_store(request):
    """Which store `in_process` uses for this test: "sqlite" (a file) or "postgresql" (a fresh database)."""
    kind = getattr(request, "param", "sqlite")
    _store["server"] = request.getfixturevalue("postgres_server") if kind == "postgresql" else None
    try:
        yield kind
    finally:
        _store["server"] = None


def query(db: Any, sql: str, params: tuple = ()) -> list[dict]:
    """Rows of the gateway's database (either store), as dicts."""
    conn = store.connect(db, create=False)
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


def asgi_scope(method: str, path: str, headers: list[tuple[bytes, bytes]], *, query: bytes = b"",
               host: str = "gateway", client: tuple[str, int] = ("127.0.0.1", 40000)) -> dict[str, Any]:
    """An HTTP request's ASGI scope (spec 2.3: the app listens for the client's disconnect)."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": headers, "server": (host, 80), "client": client}


def one_body(body: bytes, gone: asyncio.Event):
    """An ASGI `receive`: the whole body, then (once `gone` is set) the client's disconnect."""
    asked = False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


class StreamingASGI(httpx2.AsyncBaseTransport):
    """An ASGI app as an HTTP server in this process, streaming its answer as it sends it (httpx's
    own ASGITransport waits for the whole body): a stalled stream stalls, and closing the response
    tells the app its client went away."""

    def __init__(self, app):
        self.app = app
        self.open = 0  # answers not closed yet by the client (the gateway)
        self.asked: list[str] = []  # the paths of the requests it got

    async def handle_async_request(self, request):
        transport = self
        self.asked.append(request.url.path)
        chunks: asyncio.Queue = asyncio.Queue()
        started, gone = asyncio.Event(), asyncio.Event()
        head: dict[str, Any] = {}

        async def send(message):
            if message["type"] == "http.response.start":
                head.update(status=message["status"], headers=message.get("headers", []))
                started.set()
            elif message["type"] == "http.response.body":
                await chunks.put(message.get("body", b""))
                if not message.get("more_body"):
                    await chunks.put(None)

        body = b"".join([part async for part in request.stream])
        scope = asgi_scope(request.method, request.url.path, list(request.headers.raw), query=request.url.query,
                           host=request.url.host)
        task = asyncio.ensure_future(self.app(scope, one_body(body, gone), send))
        task.add_done_callback(lambda t: chunks.put_nowait(None))  # however the app ends, the body ends
        try:
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not started.is_set():
                task.result()  # the app's own exception
                raise httpx2.RemoteProtocolError("the app ended without answering", request=request)
        except BaseException:
            task.cancel()
            raise

        class Body(httpx2.AsyncByteStream):
            async def __aiter__(self):
                while (chunk := await chunks.get()) is not None:
                    yield chunk

            async def aclose(self):
                transport.open -= 1
                gone.set()
                task.cancel()

        self.open += 1
        return httpx2.Response(head["status"], headers=head["headers"], stream=Body())


async def leave_after_first_chunk(app, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    """Call `app` like a client that reads the first piece of the answer and goes away; the
    messages the app sent."""
    first_chunk = asyncio.Event()
    sent: list[dict] = []

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await asyncio.wait_for(app(asgi_scope("POST", path, headers), one_body(body, first_chunk), send), 30)
    return sent


class Down(httpx2.AsyncBaseTransport):
    """An upstream that is not there: every connection is refused."""

    async def handle_async_request(self, request):
        raise httpx2.ConnectError("connection refused", request=request)


class Routed(httpx2.AsyncBaseTransport):
    """One transport per upstream host: the versions' base URLs are http://<version>/v1."""

    def __init__(self, routes: dict[str, httpx2.AsyncBaseTransport]):
        self.routes = routes

    async def handle_async_request(self, request):
        return await self.routes[request.url.host].handle_async_request(request)


@dataclass
class InProcess:
    client: httpx.AsyncClient
    gw: Gateway
    db: Any  # a SQLite file (Path) or a PostgreSQL URL
    keys: dict[str, str]  # by who holds it: admin (KEY), client, other (another client), reviewer, limited
    #                       (a client, --rpm 3), expired, revoked
    upstreams: dict[str, Any]  # the transports of the versions, by name
    app: Any  # the ASGI app itself (for paths a client library would rewrite, like `/static/../x`)

    @property
    def limited_key(self) -> str:
        return self.keys["limited"]

    async def post(self, path: str, body: Any, key: Optional[str] = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            return await self.client.post(path, json=body, headers=headers, **kwargs)
        return await self.client.post(path, content=body, headers={**headers, "Content-Type": "application/json"},
                                      **kwargs)

    async def get(self, path: str, key: Optional[str] = KEY, **kwargs) -> httpx.Response:
        return await self.client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {}, **kwargs)

    def rows(self) -> dict[str, dict]:
        return {r["id"]: {**r, "flags": json.loads(r["flags"])} for r in query(self.db, "SELECT * FROM requests")}


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path, *, up: tuple[str, ...] = ("v1",), down: tuple[str, ...] = (),
                     timeout: float = 2.0, retries: int = 1, client: tuple[str, int] = ("127.0.0.1", 50000),
                     delay_ms: float = 0, content: str = "full", log_wait_s: float = 2.0,
                     audit_share: float = 0.0, db: Optional[Any] = None) -> AsyncIterator[InProcess]:
    """The demo recipe's task on every version; `up` answered by the scripted upstream, `down` refused.
    No answer joins the review queue's random audit sample unless `audit_share` says so (determinism)."""
    task = task_of(load_recipe(DEMO_RECIPE).recipe, REPO)
    names = [*up, *down]
    versions = [Version(name, f"http://{name}/v1", None, "upstream-key", task=task, source=f"scripted:{name}")
                for name in names]
    routes: dict[str, httpx2.AsyncBaseTransport] = {n: StreamingASGI(make_app("scripted", delay_ms)) for n in up}
    routes.update({n: Down() for n in down})
    if db is None:
        db = _store["server"].new_database() if _store["server"] else tmp_path / "gateway.sqlite"
    conn = store.connect(db)
    keys.create(conn, "tests", key=KEY, role="admin")
    secrets = {"admin": KEY}
    for name, options in (("client", {}), ("other", {}), ("reviewer", {"role": "reviewer"}), ("limited", {"rpm": 3}),
                          ("expired", {"expires": time.time() - 1}), ("revoked", {})):
        secrets[name] = keys.create(conn, name, **options)[1]  # type: ignore[arg-type]
    keys.revoke(conn, "revoked")
    rollout.register(conn, [(v.name, v.source) for v in versions], None, {v.name: task.stored() for v in versions})
    conn.close()
    upstreams = UpstreamClient(timeout=timeout, retries=retries, http=httpx2.AsyncClient(transport=Routed(routes)))
    gw = Gateway(versions, db, upstreams=upstreams, content=content, log_wait_s=log_wait_s, audit_share=audit_share)
    app = create_app(gw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as http:
            yield InProcess(http, gw, db, secrets, routes, app)
