"""The gateway's upstream calls through `http1.Http1Client` (what `swiftpipe serve` uses), over
real sockets against the scripted upstream: answers, streams, and what a broken upstream does
become `UpstreamResult` errors (the same ones the in-process httpx2 tests see)."""

import asyncio

import pytest

from swiftpipe.gateway.upstream import UpstreamClient, Version, upstream_lines
from swiftpipe.task import flags
from tests.helpers import free_port


def _ask(text: str, stream: bool = False) -> dict:
    return {"model": "scripted", "messages": [{"role": "user", "content": text}], "logprobs": True, "stream": stream}


def test_answers_streams_and_broken_upstreams_through_the_http1_client(scripted):
    async def go():
        upstreams = UpstreamClient(timeout=3, retries=1)
        upstreams.start()
        version = Version("v1", scripted, None, "key")
        try:
            assert await upstreams.resolve_model(version) == "scripted"
            ok = await upstreams.post(version, "/chat/completions", _ask("张三 13800000000"))
            assert ok.error is None and ok.status == 200 and ok.attempts == 1
            assert ok.completion is not None and ok.completion.body["choices"][0]["logprobs"]["content"][0]["logprob"] < 0
            opened, response = await upstreams.stream(version, "/chat/completions", _ask("张三", stream=True))
            lines = [line async for line in upstream_lines(response) if line]
            await response.aclose()
            assert opened.status == 200 and lines[-1] == "data: [DONE]" and sum(x.startswith("data:") for x in lines) == 3
            failing = await upstreams.post(version, "/chat/completions", _ask("x #500"))
            assert failing.status == 500 and failing.attempts == 2 and failing.flag == flags.UPSTREAM_ERROR
            for marker, why in (("#truncated", "not JSON"), ("#cutbody", "cut off"), ("#nonjson", "not JSON")):
                broken = await upstreams.post(version, "/chat/completions", _ask(f"x {marker}"))
                assert broken.error and why in broken.error and broken.flag == flags.UPSTREAM_ERROR, (marker, broken)
            slow = await UpstreamClient(timeout=0.5, retries=0, http=upstreams.http).post(
                version, "/chat/completions", _ask("x #slow"))
            assert slow.flag == flags.TIMEOUT, slow
            gone = Version("gone", f"http://127.0.0.1:{free_port()}/v1", "m", "key")
            refused = await UpstreamClient(timeout=2, retries=0, http=upstreams.http).post(gone, "/chat/completions",
                                                                                          _ask("x"))
            assert refused.status is None and refused.flag == flags.UPSTREAM_ERROR and "ConnectError" in refused.error
        finally:
            await upstreams.close()

    asyncio.run(go())


@pytest.mark.parametrize("chunks", [[b"data: a\n\ndata: b", b"c\r\n\r\ndata: [DONE]\n\n"], [b"data: abc\n", b"\n"]])
def test_stream_lines_do_not_depend_on_where_chunks_fall(chunks):
    from swiftpipe.gateway.http1 import lines

    async def pieces():
        for c in chunks:
            yield c

    async def go():
        return [line async for line in lines(pieces())]

    found = [x for x in asyncio.run(go()) if x]
    assert found == (["data: a", "data: bc", "data: [DONE]"] if len(chunks[0]) > 12 else ["data: abc"])
