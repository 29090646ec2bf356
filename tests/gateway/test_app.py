"""The gateway's HTTP contract, in-process: every status code the README documents (200, 400, 401,
404, 413, 422, 429, 499, 500, 502, 503) with its body, and the log row each request leaves."""

from __future__ import annotations

import dataclasses
import json
import re

import httpx
import pytest

from swiftpipe.gateway import keys, store
from swiftpipe.gateway.protocol import RETRY_AFTER_S
from tests.gateway.conftest import in_process, leave_after_first_chunk
from tests.helpers import KEY

pytestmark = pytest.mark.anyio

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"  # the scripted upstream's answer is all in it


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == response.status_code
    return body["error"]


async def test_200_extract_chat_stream_and_models(tmp_path):
    async with in_process(tmp_path) as gw:
        ok = await gw.post("/v1/extract", {"text": WAYBILL})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert set(body) == {"id", "version", "fields", "valid", "flags", "latency_ms", "confidence", "row_confidence",
                             "needs_review"}
        assert body["version"] == "v1" and body["valid"] is True and body["flags"] == []
        assert body["fields"]["phone"] == "13800000000" and ok.headers["X-Request-Id"] == body["id"]

        chat = await gw.post("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": WAYBILL}]})
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        assert answer["id"].startswith("chatcmpl-") and answer["model"] == "v1"
        assert chat.headers["X-Swiftpipe-Version"] == "v1" and chat.headers["X-Request-Id"] == answer["id"]
        assert json.loads(answer["choices"][0]["message"]["content"])["name"] == "张三"

        stream = await gw.post("/v1/chat/completions", {"model": "v1", "stream": True,
                                                        "messages": [{"role": "user", "content": "张三"}]})
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        parsed = [json.loads(e) for e in events[:-1]]
        assert {e["id"] for e in parsed} == {stream.headers["X-Request-Id"]} and {e["model"] for e in parsed} == {"v1"}
        assert json.loads("".join(e["choices"][0]["delta"]["content"] for e in parsed))["city"] == "杭州市"

        models = await gw.get("/v1/models")
        assert models.status_code == 200
        listed = {m["id"]: m for m in models.json()["data"]}
        assert list(listed) == ["v1", "auto"] and listed["v1"]["weight"] == 100.0
        assert listed["v1"]["schema"]["required"][0] == "province" and listed["v1"]["recipe"] == "demo-cpu"

        rows = gw.rows()
        assert rows[body["id"]]["status"] == 200 and rows[body["id"]]["endpoint"] == "extract"
        assert rows[body["id"]]["latency_ms"] == body["latency_ms"] and rows[body["id"]]["key_id"].startswith("key_")
        assert rows[answer["id"]]["endpoint"] == "chat" and rows[answer["id"]]["input"] == WAYBILL
        streamed = rows[stream.headers["X-Request-Id"]]
        assert streamed["endpoint"] == "chat-stream" and streamed["status"] == 200 and streamed["valid"] == 1

        health = await gw.client.get("/health")  # loopback: no key needed
        assert health.status_code == 200 and health.json()["versions"]["v1"]["state"] == "up"
        metrics = (await gw.client.get("/metrics")).text
        assert re.search(r'swiftpipe_requests_total\{endpoint="extract",status="200",version="v1"\} 1\.0', metrics)


async def test_400_texts_the_model_cannot_take_and_bad_parameters(tmp_path):
    async with in_process(tmp_path) as gw:
        empty = await gw.post("/v1/extract", {"text": "  "})
        assert empty.status_code == 400
        error = error_of(empty)
        assert error["type"] == "invalid_request_error" and error["id"].startswith("req_")
        assert error["message"] == "text is empty; send the text to extract from in 'text'"
        long = await gw.post("/v1/extract", {"text": "浙" * 3000})
        assert long.status_code == 400
        message = error_of(long)["message"]
        assert "at most 512" in message and "train.max_length of recipe 'demo-cpu'" in message
        days = await gw.get("/v1/stats?days=0")
        assert days.status_code == 400 and "days must be from 1 to 3660" in error_of(days)["message"]
        rows = gw.rows()
        assert rows[error["id"]]["status"] == 400 and rows[error["id"]]["error"].startswith("text is empty")
        too_long = rows[error_of(long)["id"]]
        assert too_long["status"] == 400 and too_long["input"] is None and too_long["output"] is None  # refused: no text


async def test_401_without_a_valid_key_and_from_another_host(tmp_path):
    async with in_process(tmp_path) as gw:
        for key in (None, "sk-wrong"):
            refused = await gw.post("/v1/extract", {"text": "a"}, key=key)
            assert refused.status_code == 401 and error_of(refused)["type"] == "authentication_error"
        assert "invalid or revoked" in error_of(await gw.post("/v1/extract", {"text": "a"}, key="sk-wrong"))["message"]
        assert "Authorization: Bearer" in error_of(await gw.get("/v1/models", key=None))["message"]
        # A key revoked in the database is refused once the gateway rereads its keys (every second).
        conn = store.connect(gw.db)
        keys.revoke(conn, "limited")
        conn.close()
        gw.gw.refresh()
        assert (await gw.post("/v1/extract", {"text": WAYBILL}, key=gw.limited_key)).status_code == 401
        # The key is checked before the body is validated: an invalid body without a key gets 401, not 422.
        assert (await gw.post("/v1/extract", {"txt": "a"}, key=None)).status_code == 401
        assert gw.rows() == {}  # refused keys leave no row, only a metric
    async with in_process(tmp_path / "remote", client=("10.1.2.3", 40000)) as remote:
        assert (await remote.client.get("/health")).status_code == 401
        assert (await remote.client.get("/metrics")).status_code == 401
        assert (await remote.get("/health")).status_code == 200


async def test_404_unknown_version_request_and_review(tmp_path):
    async with in_process(tmp_path) as gw:
        for path, body in (("/v1/extract", {"text": "a", "model": "v9"}),
                           ("/v1/chat/completions", {"model": "v9", "messages": [{"role": "user", "content": "a"}]})):
            unknown = await gw.post(path, body)
            assert unknown.status_code == 404
            error = error_of(unknown)
            assert error["type"] == "not_found_error" and error["versions"] == ["v1"] and "v9" in error["message"]
            row = gw.rows()[error["id"]]  # chat errors carry the request id, like extract's
            assert row["status"] == 404 and row["version"] is None and row["input"] is None  # refused: no text
        missing = await gw.get("/v1/requests/req_nope")
        assert missing.status_code == 404 and "req_nope" in error_of(missing)["message"]
        review = await gw.post("/v1/feedback", {"id": "req_nope", "verdict": "correct"})
        assert review.status_code == 404 and error_of(review)["type"] == "not_found_error"


async def test_413_a_body_over_the_limit_is_refused_unread(tmp_path):
    async with in_process(tmp_path) as gw:
        huge = await gw.post("/v1/extract", b"x" * (8 * 1024 * 1024 + 1))
        assert huge.status_code == 413 and "request body over 8388608 bytes" in error_of(huge)["message"]
        assert gw.rows() == {}


async def test_422_malformed_bodies(tmp_path):
    async with in_process(tmp_path) as gw:
        for path, body, expected in (("/v1/extract", b'{"text": ', "JSON decode error"),
                                     ("/v1/extract", {"txt": "a"}, "text: Field required"),
                                     ("/v1/extract", {"text": "a", "extra": 1}, "extra: Extra inputs are not permitted"),
                                     ("/v1/chat/completions", {"messages": []}, "messages: List should have at least 1"),
                                     ("/v1/chat/completions", {"messages": ["x"]}, "messages.0"),
                                     ("/v1/feedback", {"verdict": "correct"}, "id: Field required")):
            response = await gw.post(path, body)
            assert response.status_code == 422, (path, body, response.text)
            error = error_of(response)
            assert error["type"] == "invalid_request_error" and expected in error["message"], error


async def test_429_over_the_keys_rate(tmp_path):
    async with in_process(tmp_path) as gw:
        statuses = [(await gw.post("/v1/extract", {"text": WAYBILL}, key=gw.limited_key)) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert 1 <= int(statuses[-1].headers["Retry-After"]) <= 60
        error = error_of(statuses[-1])
        assert error["type"] == "rate_limit_error" and "3 requests per minute" in error["message"]
        assert (await gw.post("/v1/extract", {"text": WAYBILL})).status_code == 200  # other keys are not limited
        assert 'swiftpipe_rejected_total{status="429"} 1.0' in (await gw.client.get("/metrics")).text


async def test_499_a_client_that_leaves_mid_stream_is_logged_and_the_upstream_closed(tmp_path):
    async with in_process(tmp_path) as gw:
        app = gw.client._transport.app  # type: ignore[attr-defined]
        stalling = [{"role": "user", "content": "张三 #stallstream"}]  # the upstream stalls after its first event
        body = json.dumps({"model": "v1", "stream": True, "messages": stalling}).encode()
        sent = await leave_after_first_chunk(app, "/v1/chat/completions", body, [
            (b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")])
        start = next(m for m in sent if m["type"] == "http.response.start")
        rid = dict(start["headers"])[b"x-request-id"].decode()
        assert start["status"] == 200
        row = gw.rows()[rid]
        assert row["status"] == 499 and "went away" in row["error"] and row["endpoint"] == "chat-stream"
        assert gw.upstreams["v1"].open == 0  # the upstream's stream was closed, not left stalling
        assert (await gw.post("/v1/extract", {"text": WAYBILL})).status_code == 200  # and the gateway goes on


async def test_500_on_an_unexpected_error_and_503_when_the_log_cannot_be_written(tmp_path, capfd):
    async with in_process(tmp_path) as gw:
        class Broken(type(gw.gw.versions["v1"].task)):  # type: ignore[misc]
            def check(self, text, raw, pieces=None):
                raise RuntimeError("a bug in the checks")

        task = gw.gw.versions["v1"].task
        gw.gw.versions["v1"].task = Broken(**{f.name: getattr(task, f.name) for f in dataclasses.fields(task)})
        crashed = await gw.post("/v1/extract", {"text": WAYBILL})
        assert crashed.status_code == 500 and "internal error (RuntimeError)" in error_of(crashed)["message"]
        assert "RuntimeError: a bug in the checks" in capfd.readouterr().err  # one line in the gateway's output
        gw.gw.versions["v1"].task = task
        assert (await gw.post("/v1/extract", {"text": WAYBILL})).status_code == 200  # and it goes on
        assert gw.gw.log is not None
        gw.gw.log.close()  # the request log can no longer be written: no answer goes out unlogged (503)
        for path, body in (("/v1/extract", {"text": WAYBILL}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": WAYBILL}]})):
            unlogged = await gw.post(path, body)
            assert unlogged.status_code == 503 and unlogged.headers["Retry-After"] == "2", unlogged.text
            error = error_of(unlogged)
            assert "the request was not answered" in error["message"] and error["id"]


async def test_502_unusable_answers(tmp_path):
    async with in_process(tmp_path) as gw:
        for marker in ("#nonjson", "#huge", "#truncated", "#nochoices", "#cutbody", "#deep"):
            for path, body in (("/v1/extract", {"text": f"张三 {marker}"}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": f"张三 {marker}"}]})):
                response = await gw.post(path, body)
                assert response.status_code == 502, (marker, path, response.text)
                error = error_of(response)
                assert error["type"] == "upstream_error" and "gave an unusable answer" in error["message"]
                row = gw.rows()[error["id"]]
                assert row["status"] == 502 and row["flags"] == ["upstream_error"] and row["error"], marker
        cut = await gw.post("/v1/chat/completions",
                            {"stream": True, "messages": [{"role": "user", "content": "张三 #cutstream"}]})
        assert cut.status_code == 200 and "broke off the answer" in cut.text and "data: [DONE]" not in cut.text
        assert gw.rows()[cut.headers["X-Request-Id"]]["status"] == 502
        # Answers that are there but wrong are 200 with flags, not errors.
        garbage = (await gw.post("/v1/extract", {"text": "张三 #garbage"})).json()
        assert garbage["valid"] is False and garbage["flags"] == ["invalid_json"]
        think = (await gw.post("/v1/extract", {"text": "张三 #think"})).json()
        assert "think_block" in think["flags"] and "not_in_text:phone" in think["flags"]


async def test_503_unavailable_timed_out_and_down_versions(tmp_path):
    async with in_process(tmp_path, up=("v1",), down=("v2",), timeout=0.5) as gw:
        failing = await gw.post("/v1/extract", {"text": "张三 #500"})
        assert failing.status_code == 503 and failing.headers["Retry-After"] == str(RETRY_AFTER_S)
        error = error_of(failing)
        assert error["type"] == "upstream_unavailable" and "2 attempt(s)" in error["message"]
        slow = await gw.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "张三 #slow"}]})
        assert slow.status_code == 503 and slow.headers["Retry-After"] == str(RETRY_AFTER_S)
        slow_error = error_of(slow)
        assert slow_error["type"] == "upstream_timeout" and "did not answer in time" in slow_error["message"]
        down = await gw.post("/v1/extract", {"text": WAYBILL, "model": "v2"})
        assert down.status_code == 503 and "asking http://v2/v1/models" in error_of(down)["message"]
        assert down.headers["Retry-After"] == str(RETRY_AFTER_S)  # every 503 says when to come back
        rows = gw.rows()
        assert rows[error["id"]]["flags"] == ["upstream_error"] and rows[slow_error["id"]]["flags"] == ["timeout"]
        health = await gw.client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["versions"]["v2"]["state"] == "down"
        metrics = (await gw.client.get("/metrics")).text
        assert 'swiftpipe_flags_total{flag="timeout",version="v1"} 1.0' in metrics
    async with in_process(tmp_path / "all-down", up=(), down=("v1",)) as gw:
        health = await gw.client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "down"
        assert health.headers["Retry-After"] == str(RETRY_AFTER_S)


async def test_reviews_requests_and_stats(tmp_path):
    async with in_process(tmp_path) as gw:
        flagged = (await gw.post("/v1/extract", {"text": "李四 住在上海"})).json()  # the answer is not in this text
        fine = (await gw.post("/v1/extract", {"text": WAYBILL})).json()
        queue = (await gw.get("/v1/review/next")).json()
        assert queue["request"]["id"] == flagged["id"]
        assert queue["remaining"] == {"flagged": 1, "unflagged": 1, "audit": 0}
        corrected = await gw.post("/v1/feedback", {"id": flagged["id"], "fields": {**flagged["fields"], "name": "李四"}})
        assert corrected.status_code == 200 and corrected.json()["verdict"] == "corrected"
        assert (await gw.post("/v1/feedback", {"id": fine["id"], "verdict": "correct"})).json()["verdict"] == "correct"
        off_schema = await gw.post("/v1/feedback", {"id": fine["id"], "fields": {"backdoor": "x"}})
        assert off_schema.status_code == 400 and "fields not in the schema: backdoor" in error_of(off_schema)["message"]
        both = await gw.post("/v1/feedback", {"id": fine["id"], "fields": {}, "verdict": "correct"})
        assert both.status_code == 400 and "not both or neither" in error_of(both)["message"]
        detail = (await gw.get(f"/v1/requests/{flagged['id']}")).json()
        assert detail["input"] == "李四 住在上海" and detail["review"]["verdict"] == "corrected"
        assert (await gw.get("/v1/review/next")).json()["request"] is None
        total = (await gw.get("/v1/stats?days=1")).json()["versions"]["v1"]["total"]
        assert total["requests"] == 2 and total["reviewed"] == 2 and total["audited"] == 0
        # no audit answer reviewed: no accuracy estimate, only what the doubtful reviews found
        assert total["reviewed_accuracy"] is None and total["doubtful_reviewed"] == 2 and total["doubtful_errors"] == 1
