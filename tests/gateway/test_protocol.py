"""`protocol.Completion`: an upstream's answer read through its typed fast path (/v1/extract) says
the same as the whole-JSON reading, whatever shape the answer has."""

import json

import pytest

from swiftpipe.gateway.protocol import Completion

TOKENS = [{"token": '{"', "logprob": -0.01, "bytes": [123, 34], "top_logprobs": []},
          {"token": "name", "logprob": 0.0, "bytes": [110], "top_logprobs": [{"token": "x", "logprob": -3.0}]},
          {"token": '":"张', "logprob": -0.5, "bytes": None, "top_logprobs": []}]


def answer(**choice) -> dict:
    return {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"name":"张"}'},
                                     **choice}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 3}}


SHAPES = {
    "plain": answer(logprobs={"content": TOKENS}),
    "no logprobs": answer(),
    "logprobs null": answer(logprobs=None),
    "a token without logprob": answer(logprobs={"content": [{"token": "a", "logprob": None}]}),
    "token ids": answer(logprobs={"content": [{"token": "token_id:42", "logprob": -0.1}]}),
    "content a list": {"choices": [{"message": {"content": [{"type": "text", "text": "x"}]}}]},
    "content null": {"choices": [{"message": {"content": None}}]},
    "no message": {"choices": [{"text": "x"}]},
    "no choices": {"choices": []},
    "usage in floats": {**answer(), "usage": {"prompt_tokens": 5.0, "completion_tokens": "3"}},
    "not an object": [1, 2],
    "integer logprob": answer(logprobs={"content": [{"token": "a", "logprob": 0}]}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_typed_reading_says_what_the_whole_json_says(shape):
    raw = json.dumps(SHAPES[shape], ensure_ascii=False).encode()
    fast, whole = Completion.read(raw, typed=True), Completion.read(raw, typed=False)
    assert fast.content() == whole.content()
    assert fast.pieces() == whole.pieces()
    assert fast.usage() == whole.usage()
    relabeled = {**SHAPES[shape], "id": "chatcmpl-1", "model": "v2"} if isinstance(SHAPES[shape], dict) else SHAPES[shape]
    assert json.loads(fast.relabeled(id="chatcmpl-1", model="v2")) == relabeled
    assert json.loads(whole.relabeled(id="chatcmpl-1", model="v2")) == relabeled
    assert fast.body == whole.body == SHAPES[shape]


def test_the_plain_shape_is_read_without_decoding_the_whole_answer():
    raw = json.dumps(SHAPES["plain"], ensure_ascii=False).encode()
    fast = Completion.read(raw, typed=True)
    assert fast._body is None  # nothing but the typed fields so far
    assert fast.pieces() == [(b'{"', -0.01), (b"name", 0.0), ('":"张'.encode(), -0.5)]
    assert fast.content() == ('{"name":"张"}', None) and fast.usage() == (50, 3)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"choices": [}', b"NaN"])
def test_an_answer_that_is_not_json_is_refused_either_way(raw):
    for typed in (True, False):
        with pytest.raises(ValueError):
            Completion.read(raw, typed=typed)
