"""The shared client's reading of a server's usage."""

from types import SimpleNamespace

from swiftpipe.task.client import cached_tokens


def test_cached_tokens_from_usage_objects_dicts_and_servers_that_do_not_say():
    assert cached_tokens(SimpleNamespace(prompt_tokens_details=SimpleNamespace(cached_tokens=64))) == 64
    assert cached_tokens({"prompt_tokens": 90, "prompt_tokens_details": {"cached_tokens": 32}}) == 32
    assert cached_tokens(SimpleNamespace(prompt_tokens_details=None)) == 0  # vLLM without the flag
    assert cached_tokens({"prompt_tokens": 9}) == 0 and cached_tokens(None) == 0
