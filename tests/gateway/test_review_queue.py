"""Confidence in the gateway, in-process against the scripted upstream's token logprobs: /v1/extract
says each field's confidence, the log keeps it, `low_confidence:<field>` is flagged and counted below
the version's accept threshold, the review queue serves the most doubtful answer first and mixes in
its random audit sample; an upstream without logprobs leaves confidence null and changes nothing else."""

from __future__ import annotations

import json
import time

import pytest

from swiftpipe.gateway import feedback, store
from swiftpipe.recipe.task import Task
from tests.gateway.conftest import in_process

pytestmark = pytest.mark.anyio

TASK = Task(schema={"type": "object", "properties": {"a": {"type": "string"}}})
WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"  # the scripted upstream's answer is all in it


def with_threshold(gw, threshold: float) -> None:
    version = gw.gw.versions["v1"]
    version.task = version.task.with_threshold(threshold)


async def test_a_planted_doubtful_value_is_the_least_confident_flagged_and_reviewed_first(tmp_path):
    async with in_process(tmp_path) as gw:
        with_threshold(gw, 0.9)
        sure = [(await gw.post("/v1/extract", {"text": f"{WAYBILL} 订单{i}"})).json() for i in range(5)]
        doubtful = (await gw.post("/v1/extract", {"text": f"{WAYBILL} #doubt"})).json()

        for answer in sure:
            assert set(answer["confidence"]) == set(answer["fields"])
            assert all(0.99 < p <= 1 for p in answer["confidence"].values()), answer["confidence"]
            assert answer["needs_review"] is False and not any(f.startswith("low_confidence") for f in answer["flags"])
        confidence = doubtful["confidence"]
        assert min(confidence, key=confidence.get) == "name" and confidence["name"] < 0.3  # 0.2 per token
        assert doubtful["row_confidence"] == confidence["name"] and doubtful["valid"] is True
        assert doubtful["flags"] == ["low_confidence:name"] and doubtful["needs_review"] is True

        row = gw.rows()[doubtful["id"]]
        assert json.loads(row["confidence"]) == confidence and row["row_confidence"] == confidence["name"]
        metrics = (await gw.client.get("/metrics")).text
        assert 'swiftpipe_flags_total{flag="low_confidence:name",version="v1"} 1.0' in metrics

        served = (await gw.get("/v1/review/next")).json()["request"]
        assert served["id"] == doubtful["id"] and served["confidence"] == confidence and served["audit"] is False


async def test_an_upstream_without_logprobs_gives_null_confidence_and_changes_nothing_else(tmp_path):
    async with in_process(tmp_path) as gw:
        plain = (await gw.post("/v1/extract", {"text": f"{WAYBILL} #nologprobs"})).json()
        assert plain["confidence"] is None and plain["row_confidence"] is None
        assert plain["valid"] is True and plain["flags"] == [] and plain["needs_review"] is False
        assert gw.rows()[plain["id"]]["confidence"] is None
        # with a threshold, an answer whose confidence is unknown is never auto-accepted
        with_threshold(gw, 0.9)
        unknown = (await gw.post("/v1/extract", {"text": f"{WAYBILL} #nologprobs"})).json()
        assert unknown["needs_review"] is True and unknown["flags"] == []
        flagged = (await gw.post("/v1/extract", {"text": "李四 住在上海 #nologprobs"})).json()  # not in this text
        assert (await gw.get("/v1/review/next")).json()["request"]["id"] == flagged["id"]  # flags still come first


def _rows(conn, specs):
    now = time.time()
    rows = [store.request_row(id=rid, ts=now - i, version="v1", endpoint="extract", status=200, input="t",
                              fields={"a": "x"}, valid=valid, flags=flags, latency_ms=10.0, row_confidence=conf,
                              confidence={"a": conf} if conf is not None else None, audit=audit)
            for i, (rid, conf, valid, flags, audit) in enumerate(specs)]
    store.insert_requests(conn, rows)


def test_the_queue_spends_one_review_in_ten_on_the_random_audit_sample(tmp_path, gateway_db):
    conn = store.connect(gateway_db)
    specs = [(f"doubt{i}", 0.1 + i / 100, True, [], False) for i in range(20)]
    specs += [("invalid", 0.99, False, ["schema_violation"], False), ("unknown", None, True, [], False)]
    specs += [(f"audit{i}", 0.05, True, [], True) for i in range(3)]  # lowest confidence, but audit rows
    _rows(conn, specs)
    served = []
    for _n in range(12):
        item = feedback.next_for_review(conn, version=None, flag=None, exclude=[])["request"]
        served.append((item["id"], item["audit"]))
        feedback.save(conn, request_id=item["id"], fields=None, verdict="correct",
                      task=TASK, key_id="reviewer")
    # an invalid answer first whatever its confidence; then by confidence; audit rows only as the sample
    assert served[0] == ("invalid", False) and [rid for rid, _ in served[1:9]] == [f"doubt{i}" for i in range(8)]
    # the tenth review is an audit answer, picked at random; then the doubtful ones again
    assert served[9][1] is True and served[9][0].startswith("audit")
    assert served[10:] == [("doubt8", False), ("doubt9", False)]
    remaining = feedback.next_for_review(conn, version=None, flag=None, exclude=[])["remaining"]
    assert remaining["audit"] == 2

