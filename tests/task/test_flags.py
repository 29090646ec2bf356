"""Checking one answer: its fields, validity and flags; and an input text the model cannot take."""

from swiftpipe.task import flags

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "phone": {"type": "string"},
                                            "city": {"type": "string"}},
          "required": ["name", "phone", "city"], "additionalProperties": False}


def test_flags_of_answers():
    text = "张三 13800000000 杭州市"
    ok = flags.check(text, '{"name": "张三", "phone": "13800000000", "city": "杭州市"}', schema=SCHEMA,
                     verbatim_fields=["name", "phone"])
    assert ok.valid and ok.flags == [] and ok.fields["name"] == "张三"
    made_up = flags.check(text, '<think>\nx\n</think>\n{"name": "李四", "phone": "", "city": "杭州"}', schema=SCHEMA,
                          verbatim_fields=["name", "phone"])
    assert made_up.valid  # empty and not-in-text are warnings, not schema problems
    assert made_up.flags == ["think_block", "empty:phone", "not_in_text:name"]
    bad = flags.check(text, '{"name": "张三"}', schema=SCHEMA)
    assert not bad.valid and bad.flags == ["schema_violation"] and "phone" in bad.problems[0]
    assert flags.check(text, "sorry", schema=SCHEMA).flags == ["invalid_json"]
    assert flags.check(text, None, schema=SCHEMA).valid is False
    fenced = flags.check(text, '```json\n{"name": "张三", "phone": "13800000000", "city": "x"}\n```', schema=SCHEMA)
    assert fenced.valid and fenced.fields["city"] == "x"


def test_input_problems_come_with_their_kind():
    problem = flags.input_problem("  ", max_length=10, length=lambda t: (len(t), "characters"), who="w", source="s")
    assert (problem.kind, problem.message) == (flags.EMPTY_TEXT, "text is empty")
    long = flags.input_problem("x" * 11, max_length=10, length=lambda t: (len(t), "tokens"), who="the model", source="s")
    assert long.kind == flags.TOO_LONG and long.message == "text is 11 tokens; the model accepts at most 10 tokens (s)"
    assert flags.input_problem("ok", max_length=10, length=lambda t: (2, "tokens"), who="w", source="s") is None
