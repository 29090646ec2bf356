"""Calibration in an evaluation, against the scripted upstream's token logprobs (a real HTTP server,
the real OpenAI client): a planted doubtful value ranks its row below the right ones, the accept
threshold leaves it out, and report.md, reliability.png and metrics.json say so; a server without
logprobs gives null confidence and the same exact match."""

import json

from swiftpipe.evaluation import evaluate as ev
from swiftpipe.recipe.schema import EvalSection
from swiftpipe.task import client
from tests.helpers import messages_line as _row

ANSWER = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "specific_location": "文三路100号",
          "name": "张三", "phone": "13800000000"}  # what the scripted upstream answers
WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"


def _evaluate(tmp_path, scripted, marker: str = ""):
    rows = [_row(f"{WAYBILL} 单号{i}{marker}", ANSWER) for i in range(6)]
    rows += [_row(f"李四 13800000000 浙江省杭州市西湖区文三路100号 #doubt{marker}", {**ANSWER, "name": "李四"})
             for _ in range(2)]
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / ("eval" + marker.strip("# "))
    metrics = ev.evaluate([client.Endpoint(scripted, "scripted", timeout=30)], ev.read_test_rows(test), out,
                          schema=None, settings=EvalSection(concurrency=4), progress=False, verbatim_fields=["name"])
    return metrics, out


def test_a_doubtful_wrong_value_ranks_below_the_right_rows_and_is_not_auto_accepted(tmp_path, scripted):
    metrics, out = _evaluate(tmp_path, scripted)
    assert metrics["exact_match"] == 0.75
    # the server's own prefix-cache count (usage.prompt_tokens_details.cached_tokens: 32 of 50)
    assert metrics["cached_prompt_tokens"] == 8 * 32 and metrics["cached_prompt_share"] == 0.64
    conf = metrics["confidence"]
    assert conf["auroc"] == 1.0 and conf["fields"]["name"]["auroc"] == 1.0
    assert set(conf["auroc_by_aggregate"]) == {"prob", "min", "geo"}
    records = ev.read_records(out)
    doubtful = [r for r in records if "#doubt" in r["input"]]
    right = [r for r in records if r["correct"]]
    assert all(min(r["confidence"], key=r["confidence"].get) == "name" for r in doubtful)
    assert max(r["row_confidence"] for r in doubtful) < conf["accept_threshold"] <= min(r["row_confidence"] for r in right)
    assert conf["coverage"] == 0.75 and conf["accepted_exact_match"] == 1.0 and conf["coverage_ci"] is not None
    # how the name is wrong: the answer's 张三 does not occur in those texts (a verbatim field): invented
    assert metrics["field_outcomes"]["name"] == {"correct": 6, "wrong": 0, "omitted": 0, "invented": 2}
    assert metrics["field_outcomes"]["phone"] == {"correct": 8, "wrong": 0, "omitted": 0, "invented": 0}
    assert metrics["exact_match_ci"][0] < 0.75 < metrics["exact_match_ci"][1]
    assert sum(b["count"] for b in conf["reliability"]) == 8
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Calibration of confidence" in report and "![reliability diagram](reliability.png)" in report
    assert "of rows need no review, and those are 100.0%" in report and "| name |" in report and "invented" in report
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text())["confidence"]["accept_threshold"] == conf["accept_threshold"]


def test_without_logprobs_confidence_is_null_and_the_scores_are_unchanged(tmp_path, scripted):
    metrics, out = _evaluate(tmp_path, scripted, " #nologprobs")
    assert metrics["exact_match"] == 0.75 and metrics["confidence"] is None
    assert all(r["confidence"] is None and r["row_confidence"] is None for r in ev.read_records(out))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "returned no token logprobs" in report and not (out / "reliability.png").exists()
