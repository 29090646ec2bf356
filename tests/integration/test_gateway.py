"""The gateway as users run it (`swiftpipe serve --upstream`), in front of a scripted upstream
that misbehaves on request: keys, limits, bad input, broken upstream answers, the request log,
metrics, HTTPS, SIGKILL under load. Real processes, real HTTP, real SQLite; the real vLLM runs in
test_gateway_vllm.py."""

import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, child_env, swiftpipe_cmd
from tests.integration.test_serve_eval import processes_mentioning

pytestmark = pytest.mark.integration

RECIPE = str(REPO / "recipes" / "demo-cpu.yaml")
KEY = "sk-test-gateway-" + "x7" * 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, seconds: float = 60, **kwargs) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=2, **kwargs)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds}s")


@pytest.fixture
def scripted(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "scripted_upstream.py"), "--port", str(port),
                             "--delay-ms", "5"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "upstream.log", "w"))
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Gateway:
    def __init__(self, tmp_path: Path, *args: str, scheme: str = "http", startup_s: float = 120):
        self.port = free_port()
        self.db = tmp_path / "serve" / "gw.sqlite"
        self.out = tmp_path / f"gateway-{self.port}.out"
        self.env = {**child_env(), "SWIFTPIPE_API_KEY": KEY}
        self.proc = subprocess.Popen([*swiftpipe_cmd(), "serve", *args, "--port", str(self.port), "--db", str(self.db)],
                                     cwd=tmp_path, env=self.env, stdout=open(self.out, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        deadline = time.time() + startup_s
        while "serving " not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.time() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def post(self, path: str, body, key: str = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kwargs)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60, **kwargs)

    def rows(self) -> dict[str, sqlite3.Row]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return {r["id"]: r for r in conn.execute("SELECT * FROM requests")}
        finally:
            conn.close()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=60)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*swiftpipe_cmd(), *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=60)


def test_keys_limits_bad_input_and_broken_upstreams(tmp_path, scripted):
    gw = Gateway(tmp_path, "--upstream", f"v1={scripted}", "--recipe", RECIPE, "--upstream-timeout", "2",
                 "--retries", "1")
    try:
        ok = gw.post("/v1/extract", {"text": "张三 13800000000 浙江省杭州市西湖区文三路100号"})
        assert ok.status_code == 200, ok.text
        answer = ok.json()
        assert answer["version"] == "v1" and answer["valid"] is True and answer["flags"] == []
        assert answer["fields"]["phone"] == "13800000000" and answer["latency_ms"] > 0

        # Keys: none, wrong, rate-limited, revoked.
        assert gw.post("/v1/extract", {"text": "a"}, key="").status_code == 401
        wrong = gw.post("/v1/extract", {"text": "a"}, key="sk-wrong")
        assert wrong.status_code == 401 and "invalid or revoked" in wrong.json()["error"]["message"]
        created = cli("keys", "create", "--db", str(gw.db), "--name", "limited", "--rpm", "3", cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        limited = re.search(r"shown once, store it now\): (\S+)", created.stdout).group(1)
        statuses = [gw.post("/v1/extract", {"text": "张三"}, key=limited) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert 1 <= int(statuses[-1].headers["Retry-After"]) <= 60
        assert "3 requests per minute" in statuses[-1].json()["error"]["message"]
        listed = cli("keys", "list", "--db", str(gw.db), cwd=tmp_path)
        assert "limited" in listed.stdout and limited not in listed.stdout
        revoked = cli("keys", "revoke", "--db", str(gw.db), "limited", cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.5)
        assert gw.post("/v1/extract", {"text": "张三"}, key=limited).status_code == 401

        # Bad input: each with its status and a message naming the problem.
        empty = gw.post("/v1/extract", {"text": "  "})
        assert empty.status_code == 400 and "text is empty" in empty.json()["error"]["message"]
        long = gw.post("/v1/extract", {"text": "浙" * 3000})
        assert long.status_code == 400 and "at most 512" in long.json()["error"]["message"]
        assert "train.max_length" in long.json()["error"]["message"]
        unknown = gw.post("/v1/extract", {"text": "a", "model": "v9"})
        assert unknown.status_code == 404 and unknown.json()["error"]["versions"] == ["v1"]
        assert gw.post("/v1/extract", b'{"text": ').status_code == 422
        assert gw.post("/v1/extract", {"txt": "a"}).status_code == 422
        assert gw.post("/v1/chat/completions", {"messages": []}).status_code == 422
        assert "text: Field required" in gw.post("/v1/extract", {"txt": "a"}).json()["error"]["message"]
        assert gw.post("/v1/extract", {"text": "a"}, key="").status_code == 401

        # Broken upstream answers: a status and a flag, never a crash.
        expected = {"#500": (503, "upstream_error"), "#slow": (503, "timeout"), "#nonjson": (502, "upstream_error"),
                    "#huge": (502, "upstream_error"), "#truncated": (502, "upstream_error"),
                    "#nochoices": (502, "upstream_error"), "#cutbody": (502, "upstream_error"),
                    "#deep": (502, "upstream_error")}
        ids = {}
        for marker, (status, _) in expected.items():
            response = gw.post("/v1/extract", {"text": f"张三 {marker}"})
            assert response.status_code == status, (marker, response.text)
            ids[marker] = response.json()["error"]["id"]
        garbage = gw.post("/v1/extract", {"text": "张三 #garbage"}).json()
        assert garbage["valid"] is False and garbage["flags"] == ["invalid_json"]
        nan = gw.post("/v1/extract", {"text": "张三 #nan"}).json()
        assert nan["valid"] is False and nan["flags"] == ["invalid_json"]
        odd = gw.post("/v1/chat/completions", {"model": "v1", "messages": [
            {"role": "user", "content": [{"type": "text", "text": None}, {"text": "张三"}, "x"]}]})
        assert odd.status_code == 200, odd.text
        assert gw.post("/v1/chat/completions", {"messages": ["not a message"]}).status_code == 422
        unknown_id = unknown.json()["error"]["id"]
        think = gw.post("/v1/extract", {"text": "张三 #think"}).json()
        assert "think_block" in think["flags"] and "not_in_text:phone" in think["flags"]
        cut = gw.post("/v1/chat/completions", {"model": "v1", "stream": True,
                                               "messages": [{"role": "user", "content": "张三 #cutstream"}]})
        assert cut.status_code == 200 and "broke off the answer" in cut.text and "data: [DONE]" not in cut.text

        # The OpenAI SDK, unchanged, against the gateway.
        import openai

        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in sdk.models.list().data] == ["v1", "auto"]
        completion = sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "张三 杭州"}])
        assert json.loads(completion.choices[0].message.content)["name"] == "张三"
        assert completion.model == "v1" and completion.id.startswith("chatcmpl-")
        stream = sdk.chat.completions.create(model="v1", stream=True, messages=[{"role": "user", "content": "张三"}])
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert json.loads(streamed)["city"] == "杭州市"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-nope", max_retries=0).models.list()

        health = httpx.get(gw.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["versions"]["v1"]["state"] == "up"
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert re.search(r'swiftpipe_requests_total\{endpoint="extract",status="200",version="v1"\} (\d+)', metrics)
        assert 'swiftpipe_flags_total{flag="timeout",version="v1"} 1.0' in metrics
        assert 'swiftpipe_rejected_total{status="429"} 1.0' in metrics

        rows = gw.rows()
        for marker, (status, flag) in expected.items():
            row = rows[ids[marker]]
            assert row["status"] == status and json.loads(row["flags"]) == [flag] and row["error"], marker
        assert rows[completion.id]["endpoint"] == "chat" and rows[completion.id]["latency_ms"] > 0
        assert rows[unknown_id]["status"] == 404 and rows[unknown_id]["version"] is None
        assert rows[odd.json()["id"]]["input"] == "张三"
        assert all(r["key_id"] and r["latency_ms"] is not None for r in rows.values())
    finally:
        code = gw.stop(signal.SIGTERM)
    assert code == 0, gw.output()
    output = gw.output()
    assert "stopped (SIGTERM): the gateway and its vLLM servers are down" in output and "Traceback" not in output
    for secret in (KEY, limited):
        assert secret not in output
        for path in gw.db.parent.iterdir():
            assert secret.encode() not in path.read_bytes(), path
    assert processes_mentioning(str(gw.db)) == []

    # `swiftpipe requests`: filters and formats.
    flagged = cli("requests", "--db", str(gw.db), "--flagged", "--format", "jsonl", cwd=tmp_path)
    records = [json.loads(line) for line in flagged.stdout.splitlines()]
    assert records and all(r["flags"] for r in records)
    assert {"timeout", "invalid_json"} <= {f for r in records for f in r["flags"]}
    table = cli("requests", "--db", str(gw.db), "--compare", "v1", cwd=tmp_path)
    assert table.returncode == 0 and "invalid_json" in table.stdout and "p95_ms" in table.stdout
    missing = cli("requests", "--db", str(gw.db), "--compare", "v1", "v7", cwd=tmp_path)
    assert missing.returncode != 0 and "no version v7" in missing.stderr


def test_the_key_is_not_in_the_process_listing(tmp_path, scripted):
    gw = Gateway(tmp_path, "--upstream", f"v1={scripted}", "--recipe", RECIPE)
    try:
        listing = processes_mentioning("serve")
        assert any(str(gw.db) in line for line in listing)
        assert not any(KEY in line for line in listing)
        assert gw.post("/v1/extract", {"text": "张三"}).status_code == 200
    finally:
        gw.stop()


def test_sigkill_under_load_loses_no_answered_request(tmp_path, scripted):
    gw = Gateway(tmp_path, "--upstream", f"v1={scripted}", "--recipe", RECIPE)
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as session:
            while not stop.is_set():
                try:
                    response = session.post(gw.url + "/v1/extract", json={"text": "张三 13800000000"})
                except httpx.HTTPError:
                    return  # the gateway is gone
                if response.status_code == 200:
                    answered.append(response.json()["id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    rows = gw.rows()
    assert len(answered) > 50, len(answered)
    lost = [rid for rid in answered if rid not in rows]
    assert lost == [], f"{len(lost)} of {len(answered)} answered requests are not in the log"


def test_https_and_weights_checked_before_start(tmp_path, scripted):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    bad = cli("serve", "--upstream", f"v1={scripted}", "--recipe", RECIPE, "--weights", "v1=50,v2=50",
              "--port", str(free_port()), "--db", str(tmp_path / "x.sqlite"), cwd=tmp_path)
    assert bad.returncode != 0 and "unknown version(s) v2; versions: v1" in bad.stderr
    gw = Gateway(tmp_path, "--upstream", f"v1={scripted}", "--recipe", RECIPE, "--ssl-certfile", str(cert),
                 "--ssl-keyfile", str(key), scheme="https")
    try:
        assert "https://127.0.0.1" in gw.output()
        response = gw.post("/v1/extract", {"text": "张三"}, verify=ssl.create_default_context(cafile=str(cert)))
        assert response.status_code == 200 and response.json()["valid"]
        with pytest.raises(httpx.HTTPError):
            httpx.post(gw.url.replace("https", "http") + "/v1/extract", json={"text": "a"}, timeout=5)
    finally:
        gw.stop()


def test_a_client_that_leaves_mid_stream_is_logged_and_the_upstream_closed(tmp_path, scripted):
    gw = Gateway(tmp_path, "--upstream", f"v1={scripted}", "--recipe", RECIPE)
    try:
        body = {"model": "v1", "stream": True, "messages": [{"role": "user", "content": "张三 #stallstream"}]}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"}) as response:
            rid = response.headers["X-Request-Id"]
            first = next(response.iter_lines())
            assert first.startswith("data: ") and json.loads(first[6:])["id"] == rid
        deadline = time.time() + 20
        while rid not in gw.rows():
            assert time.time() < deadline, "no row for the abandoned stream"
            time.sleep(0.2)
        row = gw.rows()[rid]
        assert row["status"] == 499 and "went away" in row["error"] and row["endpoint"] == "chat-stream"
        assert gw.post("/v1/extract", {"text": "张三"}).status_code == 200  # and the gateway goes on
    finally:
        assert gw.stop(signal.SIGHUP) == 0
    assert "stopped (SIGHUP)" in gw.output() and "Traceback" not in gw.output()
