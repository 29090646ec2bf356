"""Confidence in batch extraction, with the server engine against the scripted upstream's token
logprobs: each row's `confidence` ({field: p} as JSON text) and `needs_review` from the accept
threshold, the share needing review in summary.json; null confidence from a server without them."""

import json

from swiftpipe.core import jsonl
from swiftpipe.extract.commands import extract_command
from tests.helpers import DEMO_RECIPE

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"


def _extract(tmp_path, scripted, name: str, texts: list[str], **options) -> tuple[dict, dict]:
    src = tmp_path / f"{name}.jsonl"
    jsonl.write_lines(src, [{"key": f"r{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / name
    extract_command(str(src), out=str(out), model=None, engine=None, base_urls=[scripted], recipe=DEMO_RECIPE,
                    text_field="text", id_field="key", fmt="jsonl", no_text=False, retry_errors=False,
                    served_name="scripted", ray_address=None, replicas=None, chunk_rows=2, batch_size=None,
                    concurrency=4, **options)
    rows = {r["id"]: r for part in sorted(out.glob("part-*.jsonl")) for r in jsonl.read_all(part)}
    return rows, json.loads((out / "summary.json").read_text())


def test_rows_carry_confidence_and_the_threshold_marks_the_doubtful_one(tmp_path, scripted):
    texts = [WAYBILL, f"{WAYBILL} 订单2", f"{WAYBILL} #doubt", f"{WAYBILL} 订单4"]
    rows, summary = _extract(tmp_path, scripted, "with", texts, accept_threshold=0.9)
    confidence = {key: json.loads(r["confidence"]) for key, r in rows.items()}
    assert set(confidence["r0"]) == {"province", "city", "district", "specific_location", "name", "phone"}
    assert min(confidence["r2"], key=confidence["r2"].get) == "name" and confidence["r2"]["name"] < 0.3
    assert [key for key, r in rows.items() if r["needs_review"]] == ["r2"]
    assert rows["r2"]["flags"] == ["low_confidence:name"] and rows["r2"]["valid"]
    assert summary["needs_review"] == 1 and summary["needs_review_share"] == 0.25
    assert summary["accept_threshold"] == 0.9 and summary["flags"] == {"low_confidence:name": 1}


def test_without_logprobs_confidence_is_null_and_rows_are_as_before(tmp_path, scripted):
    rows, summary = _extract(tmp_path, scripted, "without", [f"{WAYBILL} #nologprobs", "寄给李四 #nologprobs"])
    assert all(r["confidence"] is None for r in rows.values())
    assert rows["r0"]["valid"] and rows["r0"]["flags"] == [] and rows["r0"]["needs_review"] is False
    assert "not_in_text:name" in rows["r1"]["flags"] and rows["r1"]["needs_review"] is True  # a made-up name
    assert summary["needs_review"] == 1 and summary["accept_threshold"] is None
