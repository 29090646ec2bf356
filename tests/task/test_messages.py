"""messages rows: the rules every reader of training and test rows shares."""

import json

import pytest

from swiftpipe.task import messages
from swiftpipe.train.preflight import data_file_problems


def row(*turns):
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def test_an_empty_system_prompt_is_refused_everywhere(tmp_path):
    # ms-swift trains {"role": "system", "content": ""} as a row without a system turn, but a served
    # request cannot say that (Qwen2.5's template adds its default prompt): the prompts would differ.
    empty = row(("system", ""), ("user", "text"), ("assistant", "{}"))
    with pytest.raises(ValueError, match="empty system prompt"):
        messages.parse(empty)
    assert messages.parse(row(("user", "text"), ("assistant", "{}"))).system is None
    assert messages.parse(row(("system", " "), ("user", "text"), ("assistant", "{}"))).system == " "
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(row(("user", "a"), ("assistant", "{}"))) + "\n" + json.dumps(empty) + "\n")
    [problem] = data_file_problems("data.train", data, json_answer=True)
    assert f"{data}:2: message 0: empty system prompt" in problem


def test_build_never_writes_an_empty_system_turn():
    assert messages.build("", "text", {"a": 1}) == row(("user", "text"), ("assistant", '{"a":1}'))
