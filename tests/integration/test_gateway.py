"""The gateway as users run it (`swiftpipe serve --upstream`, its own process) in front of the
scripted upstream, for what needs real processes: keys changed by the CLI while it runs, signals
and a clean stop, secrets kept out of its output, files and `ps`, SIGKILL under load, HTTPS. Its
HTTP contract (every status code and body) is tested in-process in tests/gateway/test_app.py; the
real vLLM runs in test_gateway_vllm.py."""

import json
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from tests.helpers import (
    DEMO_RECIPE,
    KEY,
    GatewayProcess,
    child_env,
    free_port,
    processes_mentioning,
    run_cli,
    start_scripted_upstream,
    stop_group,
    wait_for,
)

pytestmark = pytest.mark.integration

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"


def test_keys_from_the_cli_flags_in_the_log_and_a_clean_stop(tmp_path, scripted):
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--upstream-timeout", "2",
                        "--retries", "0")
    try:
        ok = gw.post("/v1/extract", {"text": WAYBILL})
        assert ok.status_code == 200 and ok.json()["valid"] is True, ok.text
        for text in ("张三 #garbage", "李四 住在上海", "张三 #slow"):  # invalid JSON, a made-up name, a timeout
            gw.post("/v1/extract", {"text": text})

        # A key created by the CLI while the gateway runs works at once; revoked, it is refused.
        created = run_cli("keys", "create", "--db", str(gw.db), "--name", "limited", "--rpm", "3", cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        limited = re.search(r"shown once, store it now\): (\S+)", created.stdout).group(1)
        assert [gw.post("/v1/extract", {"text": "张三"}, key=limited).status_code for _ in range(4)] == [200, 200, 200, 429]
        listed = run_cli("keys", "list", "--db", str(gw.db), cwd=tmp_path)
        assert "limited" in listed.stdout and limited not in listed.stdout
        revoked = run_cli("keys", "revoke", "--db", str(gw.db), "limited", cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: gw.post("/v1/extract", {"text": "张三"}, key=limited).status_code == 401, 3,
                 "the revoked key to be refused")
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

    # `swiftpipe requests`: filters and formats over what the gateway logged.
    flagged = run_cli("requests", "--db", str(gw.db), "--flagged", "--format", "jsonl", cwd=tmp_path)
    records = [json.loads(line) for line in flagged.stdout.splitlines()]
    assert records and all(r["flags"] for r in records)
    assert {"timeout", "invalid_json", "not_in_text:name"} <= {f for r in records for f in r["flags"]}
    table = run_cli("requests", "--db", str(gw.db), "--compare", "v1", cwd=tmp_path)
    assert table.returncode == 0 and "invalid_json" in table.stdout and "p95_ms" in table.stdout
    missing = run_cli("requests", "--db", str(gw.db), "--compare", "v1", "v7", cwd=tmp_path)
    assert missing.returncode != 0 and "no version v7" in missing.stderr


def test_the_key_is_not_in_the_process_listing_and_sighup_stops(tmp_path, scripted):
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE)
    try:
        listing = processes_mentioning("serve")
        assert any(str(gw.db) in line for line in listing)
        assert not any(KEY in line for line in listing)
        assert gw.post("/v1/extract", {"text": "张三"}).status_code == 200
    finally:
        assert gw.stop(signal.SIGHUP) == 0  # a closed terminal stops it like SIGTERM
    assert "stopped (SIGHUP)" in gw.output() and "Traceback" not in gw.output()


def test_sigkill_under_load_loses_no_answered_request(tmp_path, scripted):
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE)
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
    wait_for(lambda: len(answered) > 50, 60, "50 answers under load")
    gw.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    rows = gw.rows()
    lost = [rid for rid in answered if rid not in rows]
    assert lost == [], f"{len(lost)} of {len(answered)} answered requests are not in the log"


def test_https_and_weights_checked_before_start(tmp_path, scripted):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    bad = run_cli("serve", "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--weights", "v1=50,v2=50",
                  "--port", str(free_port()), "--db", str(tmp_path / "x.sqlite"), cwd=tmp_path)
    assert bad.returncode != 0 and "unknown version(s) v2; versions: v1" in bad.stderr
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--ssl-certfile", str(cert),
                        "--ssl-keyfile", str(key), scheme="https")
    try:
        assert "https://127.0.0.1" in gw.output()
        response = gw.post("/v1/extract", {"text": "张三"}, verify=ssl.create_default_context(cafile=str(cert)))
        assert response.status_code == 200 and response.json()["valid"]
        assert response.headers["strict-transport-security"] == "max-age=31536000"  # HSTS over HTTPS only
        with pytest.raises(httpx.HTTPError):
            httpx.post(gw.url.replace("https", "http") + "/v1/extract", json={"text": "a"}, timeout=5)
    finally:
        gw.stop()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def send_chunked(port: int, mib: int, key: str = "") -> bytes:
    """Send a `mib` MiB chunked body as fast as the gateway takes it; what it answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
                 f"Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    try:
        for _ in range(mib):
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the gateway answered and closed: the rest is never read
        pass
    try:
        return sock.recv(65536)
    except OSError:
        return b""
    finally:
        sock.close()


def test_uploads_refused_before_they_are_read_and_idle_connections_starve_nobody(tmp_path, scripted):
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE)
    idle: list[socket.socket] = []
    try:
        before = rss_kib(gw.proc.pid)
        answer = send_chunked(gw.port, 400)  # 400 MiB, no key
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        grown = rss_kib(gw.proc.pid) - before
        assert grown < 50 * 1024, f"RSS grew {grown} KiB for an unauthenticated upload"
        over = send_chunked(gw.port, 12, key=KEY)  # with a key: read up to the cap, then 413
        assert over.startswith(b"HTTP/1.1 413"), over[:200]
        assert b"server:" not in over.lower()  # no banner

        # 1,100 connections that never send a byte: the oldest idle ones make room, others are served.
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
        ok = gw.post("/v1/extract", {"text": "张三"})
        assert ok.status_code == 200, ok.text
        metrics = gw.get("/metrics").text
        evicted = re.search(r'swiftpipe_refused_connections_total\{reason="idle_evicted"\} (\S+)', metrics)
        assert evicted and float(evicted.group(1)) >= 100, metrics[-2000:]
    finally:
        for sock in idle:
            sock.close()
        gw.stop()
    lines = [line for line in gw.output().splitlines() if "an idle connection was closed" in line]
    assert len(lines) == 1, lines  # one line per kind of refusal per minute, not one per connection


def test_a_generated_key_goes_to_a_private_file_and_a_restart_after_sigkill_binds_at_once(tmp_path, scripted):
    env = {k: v for k, v in child_env().items() if k != "SWIFTPIPE_API_KEY"}
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, env=env)
    key_path = gw.db.with_name(gw.db.name + ".admin-key")
    try:
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
        secret = key_path.read_text().strip()
        assert str(key_path) in gw.output() and secret not in gw.output()  # stdout is not a terminal here
        for _ in range(5):
            assert gw.post("/v1/extract", {"text": "张三"}, key=secret).status_code == 200
    finally:
        gw.stop(signal.SIGKILL)
    again = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, env=env,
                           port=gw.port)  # the same port, at once: its old connections sit in TIME-WAIT
    try:
        assert again.post("/v1/extract", {"text": "张三"}, key=secret).status_code == 200
    finally:
        again.stop()


# -- limits below HTTP, on one gateway with short ones -------------------------------------------
MAX_CONNECTIONS, HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 16, 5.0, 1.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One gateway with the fewest connections and short header and body times, shared by the tests
    of the limits below HTTP; each test looks only at the counters and output lines it causes."""
    tmp = tmp_path_factory.mktemp("limits")
    proc, url = start_scripted_upstream(tmp / "upstream.log")
    try:
        gw = GatewayProcess(tmp, "--upstream", f"v1={url}", "--recipe", DEMO_RECIPE, "--max-connections",
                            str(MAX_CONNECTIONS), "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout",
                            str(BODY_TIMEOUT_S))
        try:
            yield gw
        finally:
            gw.stop()
    finally:
        stop_group(proc)


def counted(gw: GatewayProcess, metric: str, label: str) -> float:
    """A counter of the gateway's /metrics, by its one label's value (0 before the first)."""
    found = re.search(rf'^{metric}\{{\w+="{label}"\}} (\S+)$', gw.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def said(gw: GatewayProcess, words: str) -> list[str]:
    return [line for line in gw.output().splitlines() if words in line]


def until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the gateway sends until it closes the connection; fails if it is still open after `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"the connection was still open after {timeout:g} s (got {data[:200]!r})") from None
    return data


def test_headers_over_the_cap_get_431_and_the_connection_closed(limited):
    before = counted(limited, "swiftpipe_refused_connections_total", "headers_too_large")
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40 * 1024 + b"\r\n\r\n")
        except OSError:  # closed while we sent
            pass
        answer = until_closed(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert counted(limited, "swiftpipe_refused_connections_total", "headers_too_large") == before + 1
    padded = httpx.get(limited.url + "/health", headers={"X-Padding": "a" * 16 * 1024}, timeout=30)  # under it: served
    assert padded.status_code == 200, padded.text
    assert len(said(limited, "request headers over 32768 bytes (431)")) == 1


def test_headers_that_come_too_slowly_lose_the_connection(limited):
    before = counted(limited, "swiftpipe_refused_connections_total", "headers_too_slow")
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        closed = False
        while not closed:  # a header that keeps coming, a byte every 0.2 s: the time limit is not reset by it
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 10, "the slow client kept its connection"
            if select.select([sock], [], [], 0.2)[0]:
                try:
                    closed = sock.recv(65536) == b""
                except ConnectionResetError:
                    closed = True
                continue
            try:
                sock.send(b"a")
            except OSError:
                closed = True
        took = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.8 <= took < HEADER_TIMEOUT_S + 5, f"closed after {took:.2f} s"
    assert counted(limited, "swiftpipe_refused_connections_total", "headers_too_slow") == before + 1
    assert len(said(limited, f"request headers did not arrive within {HEADER_TIMEOUT_S:g} s")) == 1


def test_with_every_connection_busy_a_new_one_is_closed_and_counted(limited):
    before = counted(limited, "swiftpipe_refused_connections_total", "too_many")
    busy: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # each has begun its headers: busy, not idle (none is evicted)
            sock = socket.create_connection(("127.0.0.1", limited.port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            busy.append(sock)
            time.sleep(0.1)  # the gateway reads those bytes before the next connection arrives
        with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as extra:
            # closed at once, well before the header time (which would close an accepted one)
            assert until_closed(extra, HEADER_TIMEOUT_S / 2) == b""
        assert select.select(busy, [], [], 0)[0] == [], "a busy connection was closed instead of the new one"
    finally:
        for sock in busy:
            sock.close()

    def served() -> bool:  # once the gateway has seen the busy ones go
        try:
            return limited.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(served, 10, "the gateway to serve again")
    assert counted(limited, "swiftpipe_refused_connections_total", "too_many") == before + 1
    assert len(said(limited, f"a new connection was closed: {MAX_CONNECTIONS} connections are open and busy")) == 1


def test_a_body_that_stalls_gets_408_and_the_connection_closed(limited):
    before = counted(limited, "swiftpipe_rejected_total", "408")
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\": \"".encode())
        started = time.monotonic()
        answer = until_closed(sock, BODY_TIMEOUT_S + 10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"the request body stopped coming" in answer, answer[:300]
    assert BODY_TIMEOUT_S * 0.8 <= took < BODY_TIMEOUT_S + 5, f"408 after {took:.2f} s"
    assert counted(limited, "swiftpipe_rejected_total", "408") == before + 1
