"""Several gateways as one service: two `swiftpipe serve` replicas on different ports sharing one
PostgreSQL database (the session's real server), and `serve --workers 2` on one address. Under
load from 8 clients one replica is SIGKILLed: every answer a client got is in the log once;
revocation, rollout and an --rpm limit hold across replicas."""

import re
import signal
import threading
import time

import httpx
import pytest

from tests.helpers import DEMO_RECIPE, KEY, GatewayProcess, run_cli, wait_for

pytestmark = pytest.mark.integration

TEXT = "张三 13800000000 浙江省杭州市西湖区文三路100号"


def _secret(out) -> str:
    assert out.returncode == 0, out.stderr
    return re.search(r"key \(shown once, store it now\): (\S+)", out.stdout).group(1)


def _extract(url: str, key: str = KEY) -> httpx.Response:
    return httpx.post(url + "/v1/extract", json={"text": TEXT}, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _until(what: str, predicate, timeout: float) -> float:
    """Seconds until `predicate()` holds (polled every 50 ms); fails past `timeout`."""
    started = time.monotonic()
    wait_for(predicate, timeout, what, every=0.05)
    return time.monotonic() - started


def test_two_replicas_on_postgresql_are_one_service(tmp_path, scripted, pg_url):
    serve = ("--upstream", f"v1={scripted}", "--upstream", f"v2={scripted}", "--recipe", DEMO_RECIPE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = GatewayProcess(tmp_path / "a", *serve, "--weights", "v1=100", db=pg_url)
    b = GatewayProcess(tmp_path / "b", *serve, db=pg_url)
    try:
        # 8 clients across both; replica A is SIGKILLed mid-load.
        answered: list[str] = []
        stop = threading.Event()

        def client(url: str) -> None:
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as session:
                while not stop.is_set():
                    try:
                        response = session.post(url + "/v1/extract", json={"text": TEXT})
                    except httpx.HTTPError:
                        return  # its replica is gone
                    if response.status_code == 200:
                        answered.append(response.json()["id"])

        threads = [threading.Thread(target=client, args=(gw.url,)) for gw in (a, b) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) > 100, 120, "100 answers under load")
        a.stop(signal.SIGKILL)
        time.sleep(1)  # B goes on answering alone
        stop.set()
        for t in threads:
            t.join(timeout=30)
        rows = b.rows()
        assert len(answered) == len(set(answered)) > 100
        lost = [rid for rid in answered if rid not in rows]
        assert lost == [], f"{len(lost)} of {len(answered)} answers are not in the log"

        a = GatewayProcess(tmp_path / "a", *serve, db=pg_url, port=a.port)  # A back, on its port

        # A key revoked while both replicas use it: both refuse it within 2 s.
        secret = _secret(run_cli("keys", "create", "--db", pg_url, "--name", "team", cwd=tmp_path))
        assert _extract(a.url, secret).status_code == 200 and _extract(b.url, secret).status_code == 200
        assert run_cli("keys", "revoke", "team", "--db", pg_url, cwd=tmp_path).returncode == 0
        took = _until("both replicas to refuse the revoked key",
                      lambda: {_extract(gw.url, secret).status_code for gw in (a, b)} == {401}, 2.5)
        assert took <= 2.0, took
        print(f"revocation obeyed by both replicas after {took:.2f} s")

        # Rollout to 100% v2 from the CLI: both replicas follow within 2 s.
        assert {_extract(gw.url).json()["version"] for gw in (a, b)} == {"v1"}
        assert run_cli("rollout", "v2=100", "--db", pg_url, cwd=tmp_path).returncode == 0
        took = _until("both replicas to route to v2",
                      lambda: {_extract(gw.url).json()["version"] for gw in (a, b)} == {"v2"}, 2.5)
        assert took <= 2.0, took
        print(f"rollout followed by both replicas after {took:.2f} s")

        # A key of --rpm 30 hammered through both: 30 +- 2 in its minute, whichever replica it asks.
        limited = _secret(run_cli("keys", "create", "--db", pg_url, "--name", "limited", "--rpm", "30", cwd=tmp_path))
        codes: list[int] = []

        def hammer(urls) -> None:
            for i in range(25):
                codes.append(_extract(urls[i % 2], limited).status_code)

        hammers = [threading.Thread(target=hammer, args=((a.url, b.url) if i % 2 else (b.url, a.url),))
                   for i in range(4)]
        for t in hammers:
            t.start()
        for t in hammers:
            t.join(timeout=120)
        assert len(codes) == 100 and set(codes) <= {200, 429}
        assert 28 <= codes.count(200) <= 32, codes.count(200)
        print(f"answers {len(answered)}, all in the log once; --rpm 30 through both: {codes.count(200)} of 100")
    finally:
        for gw in (a, b):
            gw.stop(signal.SIGKILL)


def test_workers_share_one_address_and_stop_together(tmp_path, scripted, gateway_db):
    """`serve --workers 2` on a SQLite file and on PostgreSQL: one rate window, one stop."""
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--workers", "2",
                        db=gateway_db)
    try:
        assert "2 gateway workers (pids" in gw.output()
        pids = [int(p) for p in re.search(r"pids ([\d, ]+)\)", gw.output()).group(1).split(", ")]
        limited = _secret(run_cli("keys", "create", "--db", str(gateway_db), "--name", "w", "--rpm", "10",
                                  cwd=tmp_path))
        codes = [_extract(gw.url, limited).status_code for _ in range(16)]  # new connections: both workers
        assert codes.count(200) == 10 and codes.count(429) == 6
        assert len(gw.rows()) == 10  # refused before their bodies (429): not logged
        # Both workers answered (each has its own metrics and says its pid), and between them they let 10
        # through and refused 6: one shared window, not one each.
        seen: dict[int, tuple[float, float]] = {}
        for _ in range(60):
            text = httpx.get(gw.url + "/metrics", timeout=30).text
            pid = int(float(re.search(r"^swiftpipe_gateway_pid (\S+)$", text, re.M).group(1)))
            answered = sum(float(v) for v in re.findall(r'^swiftpipe_requests_total\{[^}]*status="200"[^}]*\} (\S+)$',
                                                         text, re.M))
            refused = re.search(r'^swiftpipe_rejected_total\{status="429"\} (\S+)$', text, re.M)
            seen[pid] = (answered, float(refused.group(1)) if refused else 0.0)
            if len(seen) == 2:
                break
        assert set(seen) == set(pids), f"scrapes reached {sorted(seen)} of the workers {pids}"
        assert sum(a for a, _ in seen.values()) == 10 and sum(r for _, r in seen.values()) == 6, seen
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    for pid in pids:  # every worker is gone with the supervisor
        try:
            import os

            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, pid
    assert "stopped (SIGTERM)" in gw.output()
