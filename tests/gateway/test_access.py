"""Who may see what, in-process: every endpoint × every kind of caller, reviews nobody can poison,
bodies refused before they are read, the chat allow-list, texts a database cannot hold, what the
request log keeps, a locked log, and the headers every response carries."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftpipe.gateway import pages
from tests.gateway.conftest import asgi_scope, in_process, one_body, query
from tests.helpers import KEY

pytestmark = pytest.mark.anyio

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"
CALLERS = ("none", "client", "reviewer", "admin", "expired", "revoked")


def matrix_expected() -> dict[str, dict[str, int]]:
    """The documented status of each endpoint for each caller (this machine, no proxy)."""
    key_only = {"none": 401, "expired": 401, "revoked": 401}
    client = {**key_only, "client": 200, "reviewer": 200, "admin": 200}
    reviewer = {**key_only, "client": 403, "reviewer": 200, "admin": 200}
    admin = {**key_only, "client": 403, "reviewer": 403, "admin": 200}
    public = {c: 200 for c in CALLERS}
    return {"POST /v1/extract": client, "POST /v1/chat/completions": client, "GET /v1/models": client,
            "GET /v1/requests/own": client, "GET /v1/requests/other": {**client, "client": 404},
            "GET /v1/review/next": reviewer, "POST /v1/feedback": reviewer, "GET /v1/stats": reviewer,
            "GET /openapi.json": admin, "GET /": public, "GET /static/common.js": public,
            "GET /health": public, "GET /metrics": public}


async def test_every_endpoint_for_every_caller(tmp_path):
    async with in_process(tmp_path) as gw:
        own = {c: (await gw.post("/v1/extract", {"text": WAYBILL}, key=gw.keys[c])).json()["id"]
               for c in ("client", "reviewer", "admin")}
        other = (await gw.post("/v1/extract", {"text": WAYBILL}, key=gw.keys["other"])).json()["id"]
        statuses: dict[str, dict[str, int]] = {}
        for endpoint in matrix_expected():
            method, path = endpoint.split(" ")
            for caller in CALLERS:
                key = None if caller == "none" else gw.keys[caller]
                target = path.replace("own", own.get(caller, other)).replace("other", other)
                if method == "POST":
                    body = {"/v1/extract": {"text": WAYBILL},
                            "/v1/chat/completions": {"messages": [{"role": "user", "content": WAYBILL}]},
                            "/v1/feedback": {"id": other, "verdict": "correct"}}[path]
                    response = await gw.post(target, body, key=key)
                else:
                    response = await gw.get(target, key=key)
                statuses.setdefault(endpoint, {})[caller] = response.status_code
                if response.status_code == 403:
                    error = response.json()["error"]
                    assert error["type"] == "permission_error" and error["role_needed"] in error["message"]
        assert statuses == matrix_expected()
        # The refusals of a wrong role are logged with the key's id and no text.
        refused = [r for r in gw.rows().values() if r["status"] == 403]
        assert refused and all(r["key_id"] and r["input"] is None for r in refused)
        assert {r["endpoint"] for r in refused} == {"/v1/review/next", "/v1/feedback", "/v1/stats", "/openapi.json"}


async def test_a_client_key_reads_no_text_of_others(tmp_path):
    async with in_process(tmp_path) as gw:
        ids = [(await gw.post("/v1/extract", {"text": f"{WAYBILL} {i}"}, key=gw.keys["other"])).json()["id"]
               for i in range(5)]
        seen = []
        for request_id in [*ids, "req_0", "req_" + ids[0][4:-1] + "0"]:  # its ids, and guesses
            response = await gw.get(f"/v1/requests/{request_id}", key=gw.keys["client"])
            assert response.status_code == 404  # not 403: whether the request exists is not told
            seen.append(response.text)
        walk = [await gw.get("/v1/review/next?exclude=" + ",".join(ids[:i]), key=gw.keys["client"]) for i in range(3)]
        assert {r.status_code for r in walk} == {403}
        assert not [t for t in seen + [r.text for r in walk] if "张三" in t or "13800000000" in t]
        models = (await gw.get("/v1/models", key=gw.keys["client"])).json()["data"]
        assert "source" not in models[0] and (await gw.get("/v1/models")).json()["data"][0]["source"] == "scripted:v1"


async def test_from_another_host_or_through_a_proxy_metrics_and_health_details_need_admin(tmp_path):
    async with in_process(tmp_path, client=("10.1.2.3", 40000)) as gw:
        assert (await gw.client.get("/metrics")).status_code == 401
        assert (await gw.get("/metrics", key=gw.keys["reviewer"])).status_code == 403
        assert (await gw.get("/metrics")).status_code == 200
        assert (await gw.get("/health", key=gw.keys["client"])).json() == {"status": "ok"}
        assert (await gw.get("/health")).json()["versions"]["v1"]["state"] == "up"
    async with in_process(tmp_path / "proxied") as gw:  # loopback, but forwarded by a proxy on this machine
        proxied = await gw.client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 401
        assert (await gw.client.get("/metrics")).status_code == 200


async def test_expired_and_revoked_keys_say_so(tmp_path):
    async with in_process(tmp_path) as gw:
        expired = (await gw.post("/v1/extract", {"text": "a"}, key=gw.keys["expired"])).json()["error"]
        assert "expired on" in expired["message"] and "keys rotate" in expired["message"]
        revoked = (await gw.post("/v1/extract", {"text": "a"}, key=gw.keys["revoked"])).json()["error"]
        assert revoked["message"] == "invalid or revoked API key"


async def test_reviews_nobody_can_poison(tmp_path):
    async with in_process(tmp_path) as gw:
        answered = (await gw.post("/v1/extract", {"text": WAYBILL}, key=gw.keys["client"])).json()["id"]
        refused = (await gw.post("/v1/extract", {"text": "x" * 9000}, key=gw.keys["client"])).json()["error"]["id"]
        unknown_version = (await gw.post("/v1/extract", {"text": "x", "model": "v9"})).json()["error"]["id"]
        reviewer = gw.keys["reviewer"]
        assert (await gw.post("/v1/feedback", {"id": answered, "verdict": "correct"}, key=gw.keys["client"])).status_code == 403
        for request_id in (refused, unknown_version):
            response = await gw.post("/v1/feedback", {"id": request_id, "fields": {"backdoor": "TRIGGER"}}, key=reviewer)
            assert response.status_code == 400 and "was not answered" in response.json()["error"]["message"]
        off = await gw.post("/v1/feedback", {"id": answered, "fields": {"backdoor": "TRIGGER"}}, key=reviewer)
        assert off.status_code == 400 and "fields not in the schema: backdoor" in off.json()["error"]["message"]
        assert (await gw.post("/v1/feedback", {"id": "req_nope", "verdict": "correct"}, key=reviewer)).status_code == 404
        ok = await gw.post("/v1/feedback", {"id": answered, "verdict": "correct"}, key=reviewer)
        assert ok.status_code == 200
        rows = query(gw.db, "SELECT request_id, key_id FROM feedback")
        reviewer_id = query(gw.db, "SELECT id FROM keys WHERE name = 'reviewer'")[0]["id"]
        assert rows == [{"request_id": answered, "key_id": reviewer_id}]  # one review, and it names its reviewer


async def test_bodies_over_the_limit_are_refused_while_they_stream(tmp_path):
    async def chunks(total: int, size: int = 1 << 20):
        sent = 0
        while sent < total:
            yield b"x" * size
            sent += size

    async with in_process(tmp_path) as gw:
        unauthenticated = await gw.client.post("/v1/extract", content=chunks(16 << 20),
                                               headers={"Content-Type": "application/json"})
        assert unauthenticated.status_code == 401 and unauthenticated.headers["connection"] == "close"
        streamed = await gw.client.post("/v1/extract", content=chunks(16 << 20),
                                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert streamed.status_code == 413 and "over 8388608 bytes" in streamed.json()["error"]["message"]
        assert 'swiftpipe_rejected_total{status="413"} 1.0' in (await gw.client.get("/metrics")).text


async def test_the_chat_pass_through_allows_only_its_list(tmp_path):
    async with in_process(tmp_path) as gw:
        messages = [{"role": "user", "content": WAYBILL}]
        for extra, named in (({"n": 64}, "'n' must be 1"), ({"best_of": 64}, "'best_of'"),
                             ({"prompt_logprobs": 5}, "'prompt_logprobs'"), ({"kv_transfer_params": {}}, "'kv_transfer_params'"),
                             ({"max_tokens": 100_000_000}, "'max_tokens' must be an integer from 1 to 256"),
                             ({"chat_template_kwargs": {"enable_thinking": False, "x": 1}}, "chat_template_kwargs")):
            response = await gw.post("/v1/chat/completions", {"messages": messages, **extra})
            assert response.status_code == 400, (extra, response.text)
            assert named in response.json()["error"]["message"], response.json()
        assert gw.upstreams["v1"].asked.count("/v1/chat/completions") == 0  # none of them reached the model
        fine = await gw.post("/v1/chat/completions", {"messages": messages, "max_tokens": 64, "temperature": 0, "n": 1,
                                                       "seed": 1, "chat_template_kwargs": {"enable_thinking": False}})
        assert fine.status_code == 200, fine.text


async def test_texts_a_database_cannot_hold_are_refused_with_a_row(tmp_path):
    async with in_process(tmp_path) as gw:
        cases = [("/v1/extract", {"text": "张三\x00李四"}, 400, "'text' has a NUL character at position 2"),
                 ("/v1/extract", {"text": "张三\ud800"}, 400, "'text' has a lone surrogate (U+D800) at position 2"),
                 ("/v1/extract", {"text": "张三", "model": "v\udc80"}, 400, "'model' has a lone surrogate"),
                 ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\x00"}]}, 400,
                  "messages[0].content has a NUL")]
        for path, body, status, message in cases:
            response = await gw.post(path, json.dumps(body).encode())  # as JSON escapes: the text reaches the gateway
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert message in error["message"], error
            assert gw.rows()[error["id"]]["status"] == status
        bad_utf8 = await gw.post("/v1/extract", b'{"text": "\xff\xfe"}')
        assert bad_utf8.status_code == 422, bad_utf8.text
        error = bad_utf8.json()["error"]
        assert "not UTF-8 JSON" in error["message"] and gw.rows()[error["id"]]["status"] == 422


@pytest.mark.parametrize("content", ["none", "redacted"])
async def test_what_the_log_keeps_of_texts(tmp_path, content):
    secret = "收件人欧阳娜娜 电话13912345678 邮箱nana@example.com 身份证110101199003077777 文三路100号"
    async with in_process(tmp_path, content=content) as gw:
        answer = (await gw.post("/v1/extract", {"text": secret})).json()
        assert answer["valid"] is True  # the client gets its answer in every mode
        row = gw.rows()[answer["id"]]
        queue = (await gw.get("/v1/review/next")).json()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gateway.sqlite"))
    if isinstance(gw.db, str):  # PostgreSQL: every value of every table the gateway writes
        stored = "".join(str(v) for table in ("requests", "feedback", "events", "request_day_flags", "tasks")
                         for r in query(gw.db, f"SELECT * FROM {table}") for v in r.values()).encode()
        assert stored
    if content == "none":
        assert row["input"] is None and row["output"] is None and row["fields"] is None and row["valid"] == 1
        assert secret.encode() not in stored and "欧阳娜娜".encode() not in stored and b"13912345678" not in stored
        assert queue["request"] is None and "--log-content none" in queue["reason"]
    else:
        assert "13912345678" not in row["input"] and "nana@example.com" not in row["input"] and "欧阳娜娜" in row["input"]
        assert not re.search(r"\d{7}", row["input"] + (row["output"] or "") + (row["fields"] or ""))
        assert b"13912345678" not in stored and b"110101199003077777" not in stored
    assert row["content"] == content and row["flags"] is not None


LOCKER = """
import sys
if sys.argv[1].startswith("postgresql://"):
    import psycopg
    conn = psycopg.connect(sys.argv[1], autocommit=True)
    LOCK = ("BEGIN", "LOCK TABLE requests IN EXCLUSIVE MODE")  # what blocks INSERTs, not readers
else:
    import sqlite3
    conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    LOCK = ("BEGIN EXCLUSIVE",)
for line in sys.stdin:
    for statement in LOCK if line.strip() == "lock" else ("ROLLBACK",):
        conn.execute(statement)
    print("done", flush=True)
"""


class Locker:
    """Another process that takes the database's write lock when told (and gives it back): it waits
    for the gateway's own writer, which may still be committing a row."""

    def __init__(self, db):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def tell(self, what: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done", f"the locker did not {what}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def log_failures(metrics: str) -> float:
    return float(re.search(r"^swiftpipe_request_log_failures_total (\S+)$", metrics, re.M).group(1))


async def log_state(gw) -> str:
    return (await gw.client.get("/health")).json()["request_log"]  # this machine: the details


async def recovers(gw) -> None:
    """Requests succeed again, without a restart, within a few seconds of the lock's release."""
    deadline = time.monotonic() + 10
    while (await gw.post("/v1/extract", {"text": WAYBILL})).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after the lock was released"
        await asyncio.sleep(0.1)


def told_once(capfd) -> None:
    lines = [line for line in capfd.readouterr().err.splitlines() if "request log" in line and "unavailable" in line]
    assert len(lines) == 1, lines  # one line, not one per request


async def test_a_log_locked_while_idle_is_known_before_a_request_reaches_the_model(tmp_path, capfd):
    async with in_process(tmp_path, log_wait_s=1.0) as gw:
        assert (await gw.post("/v1/extract", {"text": WAYBILL})).status_code == 200
        assert await log_state(gw) == "ok"
        locker = Locker(gw.db)
        try:
            locker.tell("lock")
            locked_at = time.time()
            # the idle writer's probe finds out, with no request paying for it
            deadline = time.monotonic() + 10
            while not (state := await log_state(gw)).startswith("failing"):
                assert time.monotonic() < deadline, f"the gateway never noticed the lock (request_log: {state})"
                await asyncio.sleep(0.05)
            assert "lock" in state  # SQLite: database is locked; PostgreSQL: canceling statement due to lock timeout
            asked = len(gw.upstreams["v1"].asked)
            before = log_failures((await gw.client.get("/metrics")).text)
            started = time.monotonic()
            refused = await gw.post("/v1/extract", {"text": WAYBILL})
            took = time.monotonic() - started
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "2", refused.text
            assert "nothing was done" in refused.json()["error"]["message"]
            assert took < gw.gw.log_wait_s, f"the 503 took {took:.2f} s, over the bound of {gw.gw.log_wait_s} s"
            assert len(gw.upstreams["v1"].asked) == asked  # the model received nothing for it
            assert log_failures((await gw.client.get("/metrics")).text) == before + 1
        finally:
            locker.tell("release")
            locker.close()
        await recovers(gw)
        assert await log_state(gw) == "ok"
        gw.gw.refresh()  # the keys' last use, held back while the log failed, is written now
        assert query(gw.db, "SELECT last_used FROM keys WHERE name = 'tests'")[0]["last_used"] >= locked_at
    told_once(capfd)


@pytest.mark.sqlite_only
async def test_a_row_that_cannot_be_committed_in_time_gets_503_and_the_log_recovers(tmp_path, capfd):
    """The lock taken while a request is with the model: its answer cannot be logged, so the client
    gets 503 within the bound (after the model's time); the next ones are refused before the model."""
    delay_s = 1.0
    async with in_process(tmp_path, log_wait_s=1.0, delay_ms=delay_s * 1000) as gw:
        assert (await gw.post("/v1/extract", {"text": WAYBILL})).status_code == 200
        locker = Locker(gw.db)
        try:
            asked = len(gw.upstreams["v1"].asked)
            pending = asyncio.ensure_future(gw.post("/v1/extract", {"text": WAYBILL}))
            deadline = time.monotonic() + 10
            while len(gw.upstreams["v1"].asked) == asked:  # the request is with the model (for delay_s)
                assert time.monotonic() < deadline and not pending.done(), "the request never reached the model"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            locker.tell("lock")
            first = await pending
            took = time.monotonic() - started
            assert first.status_code == 503 and first.headers["Retry-After"] == "2", first.text
            assert "the request was not answered" in first.json()["error"]["message"]
            assert took < delay_s + gw.gw.log_wait_s + 1, f"the 503 took {took:.2f} s after the lock"
            later = [await gw.post("/v1/extract", {"text": WAYBILL}) for _ in range(3)]
            assert {r.status_code for r in later} == {503}
            assert all("nothing was done" in r.json()["error"]["message"] for r in later)
            assert len(gw.upstreams["v1"].asked) == asked + 1  # the later ones never reached the model
        finally:
            locker.tell("release")
            locker.close()
        await recovers(gw)
        assert log_failures((await gw.client.get("/metrics")).text) >= 4
    told_once(capfd)


async def test_every_response_says_nosniff_no_frames_no_referrer(tmp_path):
    async with in_process(tmp_path) as gw:
        for response in (await gw.post("/v1/extract", {"text": WAYBILL}), await gw.client.get("/"),
                         await gw.post("/v1/extract", {"text": "a"}, key=None)):
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "strict-transport-security" not in headers  # plain HTTP here; HTTPS adds HSTS
        assert (await gw.get("/docs")).status_code == 404  # no Swagger page: its scripts would come from a CDN


async def raw_get(app, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """GET `path` exactly as written (a client library would resolve `..` first): status, headers, body."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    gone = asyncio.Event()
    gone.set()
    path, _, query_string = path.partition("?")
    scope = asgi_scope("GET", path, [(b"host", b"gateway")], query=query_string.encode())
    await asyncio.wait_for(app(scope, one_body(b"", gone), send), 30)
    head = sent[0]
    return head["status"], dict(head["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def test_no_path_leads_out_of_the_pages_and_no_text_becomes_html(tmp_path):
    async with in_process(tmp_path) as gw:
        for path in ("/static/../store.py", "/static/../../gateway/store.py", "/static/%2e%2e/store.py",
                     "/static/..%2fstore.py", "/static/common.js/../../store.py", "/static/__init__.py",
                     "/static/../pages/__init__.py", "/static//etc/passwd", "/../../../etc/passwd", "/review/../store.py"):
            status, _, body = await raw_get(gw.app, path)
            assert status == 404, (path, status, body[:200])
            assert b"import " not in body and b"root:" not in body, path
        status, headers, body = await raw_get(gw.app, "/static/common.js")  # what it does serve
        assert status == 200 and headers[b"content-type"].startswith(b"text/javascript") and body

        # A text with markup comes back as JSON (nosniff), never as a page; the pages build no HTML from
        # strings (no innerHTML and the like) and run only their own scripts (CSP script-src 'self').
        payload = '<script>alert(1)</script><img src=x onerror=alert(2)> 张三'
        rid = (await gw.post("/v1/extract", {"text": payload})).json()["id"]
        shown = await gw.get(f"/v1/requests/{rid}")
        assert shown.json()["input"] == payload
        assert shown.headers["content-type"].startswith("application/json") and \
            shown.headers["x-content-type-options"] == "nosniff"
        for page in ("/", "/review", "/dashboard"):
            status, headers, body = await raw_get(gw.app, page + "?q=%3Cscript%3Ealert(1)%3C/script%3E")
            assert status == 200 and b"alert(1)" not in body
            policy = headers[b"content-security-policy"]
            assert b"script-src 'self'" in policy and b"unsafe-inline" not in policy and b"unsafe-eval" not in policy
    here = Path(pages.__file__).parent
    for script in sorted(here.glob("*.js")):
        code = script.read_text(encoding="utf-8")
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", code), script.name
    for html in sorted(here.glob("*.html")):
        assert not re.search(r"<script(?![^>]*\bsrc=)|\son\w+=", html.read_text(encoding="utf-8")), html.name
