"""Reading an answer: think block, fence, strict JSON."""

from swiftpipe.task.answers import parse_answer


def test_answers_that_are_not_json():
    assert parse_answer('{"a": NaN}') == (None, False)
    assert parse_answer("[" * 100_000 + "]" * 100_000) == (None, False)
    assert parse_answer('{"a": 1}') == ({"a": 1}, False)
