"""Reading an answer: think block, fence, strict JSON."""

from swiftpipe.task.answers import parse_answer


def test_answers_that_are_not_json():
    assert parse_answer('{"a": NaN}') == (None, False)
    assert parse_answer("[" * 100_000 + "]" * 100_000) == (None, False)
    assert parse_answer('{"a": 1}') == ({"a": 1}, False)


def test_parse_answer_strips_think_block_and_fence():
    assert parse_answer('{"a": 1}') == ({"a": 1}, False)
    assert parse_answer('<think>\n\n</think>\n\n{"a": 1}') == ({"a": 1}, True)
    assert parse_answer('<think>hmm {"a": 2}</think>{"a": 1}') == ({"a": 1}, True)
    assert parse_answer('```json\n{"a": 1}\n```') == ({"a": 1}, False)
    assert parse_answer('{"a": 1') == (None, False)
    assert parse_answer(None) == (None, False)
