"""A fast scripted OpenAI-compatible upstream, for the gateway's benchmark and its failure tests.

    python bench/scripted_upstream.py --port 8101 [--model scripted] [--delay-ms 0]

It answers `/v1/chat/completions` (streamed too) and `/v1/models` at once with a fixed address
answer, so the gateway's own ceiling can be measured; a marker in the last user message makes
it misbehave the way real servers do:

    #500        HTTP 500 (every attempt)         #nonjson    HTTP 200 with a body that is not JSON
    #huge       a 20 MiB body                    #truncated  a body cut off mid-JSON
    #slow       answers after 30 s               #think      a <think> block before the JSON
    #garbage    content that is not JSON         #cutstream  a stream that ends without [DONE]
    #nochoices  a JSON body without choices      #cutbody    the connection closed mid-body
    #nan        content with NaN (not JSON)      #deep       a body nested 100,000 levels
    #stallstream a stream that stalls for 10 s after its first event
    #ner        a CLUENER answer: {type: [entities]} (张三 a name, 浙江省杭州市 an address, 西湖 a scene)
    #doubt      the answer's `name` generated with low token probabilities (0.2 per token)
    #nologprobs no `logprobs` in the answer, even when asked (a server that does not support them)

Its usage says 32 of the 50 prompt tokens came from the prefix cache (`prompt_tokens_details`, as
vLLM reports with --enable-prompt-tokens-details). `GET /stats` answers
{"texts": {user text: times asked}}: what a client really sent (tests count model calls with it).

Asked for `logprobs: true`, it returns `choices[0].logprobs.content` as vLLM does: one entry per
generated token (here: two characters of the answer a token), each with its logprob (0.9995 per
token, except where #doubt plants a doubtful value).

A raw ASGI app on uvicorn (no framework), so it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

ANSWER = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "specific_location": "文三路100号",
          "name": "张三", "phone": "13800000000"}


def _user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


SURE, DOUBTFUL = math.log(0.9995), math.log(0.2)  # a token's logprob, and a planted doubtful token's


def token_logprobs(content: str, doubtful: str = "") -> list[dict]:
    """vLLM's `logprobs.content` for `content`, two characters a token (about what Qwen's vocabulary
    makes of such an answer); the tokens overlapping the value `doubtful` (its first occurrence as a
    JSON string, with its closing quote) get DOUBTFUL."""
    low = range(0)
    if doubtful:
        quoted = json.dumps(doubtful, ensure_ascii=False)
        start = content.find(quoted)
        if start >= 0:
            low = range(start + 1, start + len(quoted))
    out = []
    for at in range(0, len(content), 2):
        piece = content[at:at + 2]
        doubtful_piece = any(i in low for i in range(at, at + len(piece)))
        out.append({"token": piece, "logprob": DOUBTFUL if doubtful_piece else SURE, "bytes": list(piece.encode()),
                    "top_logprobs": []})
    return out


def _completion(model: str, content: str, logprobs: list[dict] | None = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90,
                                                  "prompt_tokens_details": {"cached_tokens": 32}}}


def make_app(model: str, delay_ms: float):
    asked: dict[str, int] = {}  # user text -> chat requests carrying it
    async def send_body(send, status: int, body: bytes, content_type: bytes = b"application/json",
                        length: int | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type),
                                (b"content-length", str(len(body) if length is None else length).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/stats":
            await send_body(send, 200, json.dumps({"texts": asked}, ensure_ascii=False).encode())
            return
        if path.endswith("/models") or path == "/health":
            await send_body(send, 200, json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode())
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw)
        except ValueError:
            await send_body(send, 400, b'{"error": {"message": "body is not JSON"}}')
            return
        text = _user_text(body)
        asked[text] = asked.get(text, 0) + 1
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if "#500" in text:
            await send_body(send, 500, b'{"error": {"message": "scripted failure"}}')
            return
        if "#slow" in text:
            await asyncio.sleep(30)
        if "#nonjson" in text:
            await send_body(send, 200, b"<html>Bad Gateway</html>", b"text/html")
            return
        if "#huge" in text:
            await send_body(send, 200, b'{"x": "' + b"a" * (20 * 1024 * 1024) + b'"}')
            return
        if "#cutbody" in text:
            data = json.dumps(_completion(model, "{}")).encode()
            await send_body(send, 200, data[: len(data) // 2], length=len(data))
            return
        if "#deep" in text:
            await send_body(send, 200, b"[" * 100_000 + b"]" * 100_000)
            return
        if "#nochoices" in text:
            await send_body(send, 200, b'{"object": "chat.completion"}')
            return
        content = json.dumps(ANSWER, ensure_ascii=False)
        if "#ner" in text:
            from swiftpipe.task.reference import CLUENER_TYPES

            entities = {"name": ["张三"], "address": ["浙江省杭州市"], "scene": ["西湖"]}
            content = json.dumps({t: entities.get(t, []) for t in CLUENER_TYPES}, ensure_ascii=False)
        if "#think" in text:
            content = "<think>\nlet me see\n</think>\n\n" + content
        if "#garbage" in text:
            content = "sorry, I cannot help with that"
        if "#nan" in text:
            content = '{"name": NaN}'
        if "#truncated" in text:
            data = json.dumps(_completion(model, content)).encode()
            await send_body(send, 200, data[: len(data) // 2])
            return
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            pieces = [content[: len(content) // 2], content[len(content) // 2:]]
            for number, piece in enumerate(pieces):
                if number and "#stallstream" in text:
                    await asyncio.sleep(10)
                chunk = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                            "more_body": True})
            end = b"" if "#cutstream" in text else b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": end})
            return
        logprobs = None
        if body.get("logprobs") and "#nologprobs" not in text:
            logprobs = token_logprobs(content, ANSWER["name"] if "#doubt" in text else "")
        await send_body(send, 200, json.dumps(_completion(model, content, logprobs), ensure_ascii=False).encode())

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="scripted")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every answer (a model's time)")
    args = parser.parse_args()
    uvicorn.run(make_app(args.model, args.delay_ms), host=args.host, port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
