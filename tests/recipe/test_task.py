"""A task (system prompt, schema, limits) as the request an OpenAI-compatible server gets."""

import json

from swiftpipe.recipe.task import Task


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
