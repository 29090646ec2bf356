"""`http1.Http1Client`, the gateway's upstream client, against a raw asyncio server on loopback
that answers each path its own way (chunked, gzip, until close, cut off, silent, closing kept
connections): what it reads, when it reuses a connection, and the httpx2 errors it raises."""

import asyncio
import gzip
import json
import ssl
import subprocess

import httpx2
import pytest

from swiftpipe.gateway.http1 import Http1Client

BODY = json.dumps({"answer": "浙江省杭州市", "n": list(range(50))}, ensure_ascii=False).encode()


def _answer(path: str, body: bytes) -> tuple[bytes, bool]:
    """(the bytes sent back, whether to close the connection after them)."""
    if path == "/plain":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, False
    if path == "/echo":
        return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(body) + body, False
    if path == "/chunked-gzip":
        packed = gzip.compress(BODY)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(packed[i:i + 7]), packed[i:i + 7]) for i in range(0, len(packed), 7))
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n" + chunks
                + b"0\r\n\r\n"), False
    if path == "/until-close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY, True
    if path == "/then-close":  # keep-alive as far as the headers say, then the server closes it anyway
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, True
    if path == "/cut":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + BODY[:10], True
    if path == "/garbage":
        return b"SMTP ready\r\n\r\n", True
    raise AssertionError(path)


class Server:
    def __init__(self):
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        drop_next = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split()[1]
                length = next((int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length) if length else b""
                if drop_next:  # what a server does whose keep-alive ran out as the request came
                    return
                if path == "/then-drop-next":
                    drop_next, path = True, "/plain"
                if path == "/silent":
                    await asyncio.sleep(30)
                    return
                if path == "/slow-ok":
                    await asyncio.sleep(0.3)
                    path = "/plain"
                data, close = _answer(path, body)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            self.open -= 1
            writer.close()


def run_with_server(test) -> None:
    async def go():
        server = Server()
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        client = Http1Client(limit=2)
        try:
            await test(client, f"http://127.0.0.1:{port}", server)
        finally:
            await client.aclose()
            listening.close()

    asyncio.run(go())


async def fetch(client: Http1Client, url: str, *, body: bytes = b"", timeout: float = 5.0,
                headers: dict | None = None) -> tuple[int, bytes]:
    request = client.build_request("POST", url, content=body, headers=headers or {"Content-Type": "application/json"},
                                   timeout=timeout)
    response = await client.send(request, stream=True)
    try:
        return response.status_code, b"".join([chunk async for chunk in response.aiter_bytes()])
    finally:
        await response.aclose()


def test_one_kept_connection_carries_requests_one_after_another():
    async def test(client, base, server):
        for i in range(5):
            assert await fetch(client, base + "/echo", body=b'{"i": %d}' % i) == (201, b'{"i": %d}' % i)
        assert server.connections == 1

    run_with_server(test)


def test_chunked_gzip_and_until_close_bodies_are_read_whole():
    async def test(client, base, server):
        assert await fetch(client, base + "/chunked-gzip") == (200, BODY)
        assert await fetch(client, base + "/until-close") == (200, BODY)
        assert (await client.get(base + "/plain", headers={}, timeout=5)).content == BODY

    run_with_server(test)


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error():
    async def test(client, base, server):
        assert await fetch(client, base + "/then-close") == (200, BODY)
        await asyncio.sleep(0.1)  # the server has closed it: the client has seen it, and opens a new one
        assert await fetch(client, base + "/then-drop-next") == (200, BODY)
        # the next request goes out on that kept connection and the server closes it unanswered:
        # sent once more on a new connection
        assert await fetch(client, base + "/plain") == (200, BODY)
        assert server.connections == 3

    run_with_server(test)


def test_at_most_limit_connections_are_open_and_the_others_wait():
    async def test(client, base, server):
        answers = await asyncio.gather(*(fetch(client, base + "/slow-ok") for _ in range(5)))
        assert answers == [(200, BODY)] * 5
        assert server.most_open == 2

    run_with_server(test)


def test_broken_answers_raise_httpx2_errors_and_the_client_goes_on():
    async def test(client, base, server):
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(client, base + "/cut")
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(client, base + "/garbage")
        with pytest.raises(httpx2.ReadTimeout):
            await fetch(client, base + "/silent", timeout=0.3)
        with pytest.raises(httpx2.LocalProtocolError):
            await fetch(client, base + "/plain", headers={"Authorization": "Bearer x\r\nX-Injected: 1"})
        assert await fetch(client, base + "/plain") == (200, BODY)  # every slot was given back

    run_with_server(test)


def test_a_refused_connection_is_a_connect_error():
    async def go():
        listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        listening.close()
        await listening.wait_closed()
        client = Http1Client()
        with pytest.raises(httpx2.ConnectError):
            await fetch(client, f"http://127.0.0.1:{port}/plain")
        await client.aclose()

    asyncio.run(go())


def test_https_checks_the_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)

    async def go():
        listening = await asyncio.start_server(Server().handle, "127.0.0.1", 0, ssl=serving)
        url = f"https://127.0.0.1:{listening.sockets[0].getsockname()[1]}/plain"
        trusting = Http1Client(tls=ssl.create_default_context(cafile=str(cert)))
        default = Http1Client()  # the system's CAs: a self-signed certificate is refused
        try:
            assert await fetch(trusting, url) == (200, BODY)
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await fetch(default, url)
        finally:
            await trusting.aclose()
            await default.aclose()
            listening.close()

    asyncio.run(go())
