import json

import pytest

from swiftpipe.evaluation import evaluate as ev
from swiftpipe.evaluation import reports, scoring
from swiftpipe.recipe.task import Task
from swiftpipe.task import messages
from swiftpipe.task.answers import parse_answer
from swiftpipe.task.messages import Example


def _row(user, gold, system="sys"):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(gold, ensure_ascii=False)}]
    return json.dumps({"messages": msgs}, ensure_ascii=False)


def test_parse_answer_strips_think_block_and_fence():
    assert parse_answer('{"a": 1}') == ({"a": 1}, False)
    assert parse_answer('<think>\n\n</think>\n\n{"a": 1}') == ({"a": 1}, True)
    assert parse_answer('<think>hmm {"a": 2}</think>{"a": 1}') == ({"a": 1}, True)
    assert parse_answer('```json\n{"a": 1}\n```') == ({"a": 1}, False)
    assert parse_answer('{"a": 1') == (None, False)
    assert parse_answer(None) == (None, False)


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


def test_read_rows_uses_row_system_or_default(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(_row("u1", {"a": "1"}) + "\n\n" + _row("u2", {"a": "2"}, system=None) + "\n", encoding="utf-8")
    rows = ev.read_test_rows(path, default_system="recipe prompt")
    assert [(r.index, r.line, r.system, r.user, r.answer) for r in rows] == [
        (0, 1, "sys", "u1", {"a": "1"}), (1, 3, "recipe prompt", "u2", {"a": "2"})]
    assert rows[0].key != rows[1].key


def test_bad_rows_named_by_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([
        _row("ok", {"a": 1}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "plain"}]}),
        json.dumps({"text": "x"}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(messages.MessagesError) as info:
        ev.read_test_rows(path)
    msg = str(info.value)
    assert "4 bad row(s)" in msg
    for line, why in ((2, "not valid JSON"), (3, "the last message must be the assistant's answer"),
                      (4, "the assistant's answer is not valid JSON"), (5, 'expected {"messages"')):
        assert f"{path}:{line}: {why}" in msg


def test_schema_from_gold():
    rows = [Example(0, 1, None, "u", "", {"name": "a", "n": 1}), Example(1, 2, None, "u", "", {"name": "b", "n": 2.5})]
    schema = scoring.schema_from_gold(rows)
    assert schema["required"] == ["name", "n"] and schema["additionalProperties"] is False
    assert schema["properties"] == {"name": {"type": "string"}, "n": {"type": ["integer", "number"]}}
    assert scoring.schema_from_gold([Example(0, 1, None, "u", "", ["x"])]) is None


def test_request_uses_response_format_never_guided_json():
    task = Task(system_prompt="sys", schema={"type": "object"}, max_tokens=64)
    kwargs = task.sdk_kwargs("m", "hello")
    assert kwargs["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]
    assert kwargs["temperature"] == 0 and kwargs["max_tokens"] == 64
    assert kwargs["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert kwargs["extra_body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert "guided_json" not in json.dumps(kwargs)
    # A row's own system prompt wins; the raw body is the SDK's call with extra_body merged in.
    assert task.sdk_kwargs("m", "hello", system="own")["messages"][0]["content"] == "own"
    body = task.request_body("m", "hello")
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and "extra_body" not in body
    assert {k: v for k, v in body.items() if k != "chat_template_kwargs"} == \
        {k: v for k, v in kwargs.items() if k != "extra_body"}
    assert Task.from_stored(task.stored()) == task


def test_load_done_keeps_finished_rows_only(tmp_path):
    rows = [Example(i, i + 1, None, f"u{i}", json.dumps({"a": i}), {"a": i}) for i in range(4)]
    pred = tmp_path / "predictions.jsonl"
    lines = [
        json.dumps({"index": 0, "key": rows[0].key, "error": None, "correct": True}),
        json.dumps({"index": 1, "key": "stale-key", "error": None}),  # the test row changed since
        json.dumps({"index": 2, "key": rows[2].key, "error": "APIConnectionError"}),  # retried
        '{"index": 3, "key": "' + rows[3].key + '", "err',  # killed mid-write
    ]
    pred.write_text("\n".join(lines), encoding="utf-8")
    assert list(ev.load_done(pred, rows)) == [0]


def test_comparison_lists_changed_rows():
    base = {"n": 2, "correct": 1, "exact_match": 0.5, "invalid_json": 1, "api_errors": 0, "per_field": {"a": 0.5}}
    tuned = {"n": 2, "correct": 1, "exact_match": 0.5, "invalid_json": 0, "api_errors": 0, "per_field": {"a": 0.5}}
    b = [{"key": "k1", "correct": False, "prediction": None, "raw": "junk"},
         {"key": "k2", "correct": True, "prediction": {"a": 2}, "raw": "{}"}]
    t = [{"key": "k1", "correct": True, "prediction": {"a": 1}, "input": "in1", "gold": {"a": 1}},
         {"key": "k2", "correct": False, "prediction": {"a": 3}, "input": "in2", "gold": {"a": 2}}]
    text = reports.comparison_markdown(base, tuned, b, t)
    assert "| exact match | 50.0% (1/2) | 50.0% (1/2) |" in text
    assert "1 fixed by fine-tuning, 1 broken by it" in text
    assert "- input: in1" in text and "base: 'junk'" in text and "- input: in2" in text
