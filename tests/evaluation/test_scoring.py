"""Scoring: exact match and per field, the metrics of an evaluation, a schema from the gold answers."""

import pytest

from swiftpipe.evaluation import scoring
from swiftpipe.task.messages import Example


def test_score_exact_and_per_field():
    gold = {"name": "王伟", "phone": "138"}
    assert scoring.score(gold, {"phone": "138", "name": "王伟"}) == (True, {"name": True, "phone": True})
    assert scoring.score(gold, {"name": "王伟", "phone": "139"}) == (False, {"name": True, "phone": False})
    assert scoring.score(gold, {"name": "王伟", "phone": "138", "x": 1}) == (False, {"name": True, "phone": True})
    assert scoring.score(gold, None) == (False, {"name": False, "phone": False})


def test_metrics():
    records = [
        {"correct": True, "fields": {"a": True, "b": True}, "error": None, "prediction": {}, "latency_s": 1.0},
        {"correct": False, "fields": {"a": True, "b": False}, "error": None, "prediction": {}, "latency_s": 3.0},
        {"correct": False, "fields": {"a": False, "b": False}, "error": None, "prediction": None, "latency_s": 2.0},
        {"correct": False, "fields": {"a": False, "b": False}, "error": "HTTP 400", "prediction": None,
         "latency_s": None},
    ]
    m = scoring.compute_metrics(records, wall_seconds=2.0, sent=4)
    assert m["n"] == 4 and m["correct"] == 1 and m["exact_match"] == 0.25
    assert m["invalid_json"] == 1 and m["api_errors"] == 1
    assert m["per_field"] == {"a": 0.5, "b": 0.25}
    assert m["latency_p50_s"] == 2.0 and m["latency_p95_s"] == pytest.approx(2.9)
    assert m["requests_per_s"] == 2.0


def test_schema_from_gold():
    rows = [Example(0, 1, None, "u", "", {"name": "a", "n": 1}), Example(1, 2, None, "u", "", {"name": "b", "n": 2.5})]
    schema = scoring.schema_from_gold(rows)
    assert schema["required"] == ["name", "n"] and schema["additionalProperties"] is False
    assert schema["properties"] == {"name": {"type": "string"}, "n": {"type": ["integer", "number"]}}
    assert scoring.schema_from_gold([Example(0, 1, None, "u", "", ["x"])]) is None


def test_field_outcomes_say_how_a_field_is_wrong():
    from swiftpipe.evaluation.scoring import field_outcomes

    gold = {"name": "张三", "phone": "", "city": "杭州市", "district": "西湖区", "street": "文三路"}
    answer = {"name": "王五", "phone": "110", "city": "", "district": "西湖区", "street": "文二路"}
    assert field_outcomes(gold, answer, "张三 文三路 文二路", ["name"]) == {
        "name": "invented",  # verbatim, and 王五 is not in the text
        "phone": "invented",  # gold empty, the answer not
        "city": "omitted", "district": "correct",
        "street": "wrong",  # a value of the text, not the right one
    }
    # no parsed answer: what gold has is omitted; an empty gold field is not right either (no answer)
    assert field_outcomes(gold, None, "") == {"name": "omitted", "phone": "wrong", "city": "omitted",
                                              "district": "omitted", "street": "omitted"}
