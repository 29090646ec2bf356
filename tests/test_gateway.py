"""The gateway's pure parts and its SQLite file: flags, weights and sticky routing, keys and rate
limits, the group-committed request log, `--since` parsing, version planning errors."""

import asyncio
import json
import sqlite3
import time

import pytest

from swiftpipe.gateway import keys, rollout, stats, store
from swiftpipe.gateway.report import compare_table, parse_since
from tests.helpers import REPO

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "phone": {"type": "string"},
                                            "city": {"type": "string"}},
          "required": ["name", "phone", "city"], "additionalProperties": False}


def test_weights_parse_and_apply():
    assert rollout.parse_weights(["a=90,b=10"]) == {"a": 90.0, "b": 10.0}
    assert rollout.parse_weights(["a=90", "b=10"]) == {"a": 90.0, "b": 10.0}
    for bad in (["a"], ["a=x"], ["a=101"], ["=5"]):
        with pytest.raises(rollout.RolloutError, match="NAME=PERCENT"):
            rollout.parse_weights(bad)
    current = {"v1": 90.0, "v2": 10.0}
    assert rollout.apply(current, {"v2": 50}) == {"v1": 50.0, "v2": 50.0}
    assert rollout.apply(current, {"v2": 100}) == {"v1": 0.0, "v2": 100.0}
    assert rollout.apply(current, {"v2": 0}) == {"v1": 100.0, "v2": 0.0}
    assert rollout.apply({"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 40}) == {"a": 40, "b": 30.0, "c": 30.0}
    with pytest.raises(rollout.RolloutError, match="unknown version.*v3.*versions: v1, v2"):
        rollout.apply(current, {"v3": 10})
    with pytest.raises(rollout.RolloutError, match="add up to 110"):
        rollout.apply(current, {"v1": 60, "v2": 50})
    with pytest.raises(rollout.RolloutError, match="add up to 60"):
        rollout.apply(current, {"v1": 30, "v2": 30})


def test_sticky_split_follows_weights():
    ids = [f"key_{i:04x}" for i in range(2000)]
    weights = [("v1", 80.0), ("v2", 20.0)]
    chosen = [rollout.choose(weights, k) for k in ids]
    share = chosen.count("v1") / len(ids)
    assert 0.77 < share < 0.83, share
    assert chosen == [rollout.choose(weights, k) for k in ids]  # sticky
    # Raising the canary keeps every key it had.
    wider = [rollout.choose([("v1", 50.0), ("v2", 50.0)], k) for k in ids]
    assert all(w == "v2" for c, w in zip(chosen, wider) if c == "v2")
    assert {rollout.choose([("v1", 0.0), ("v2", 100.0)], k) for k in ids} == {"v2"}


def test_keys_are_stored_as_hashes_and_revoked(tmp_path):
    db = tmp_path / "g.sqlite"
    conn = store.connect(db)
    key, secret = keys.create(conn, "team-a", rpm=5)
    assert secret.startswith("sk-sp-") and keys.find(conn, secret).id == key.id
    assert keys.key_hash(secret) in keys.active(conn)
    revoked = keys.revoke(conn, "team-a")
    assert revoked == [key.id] and keys.find(conn, secret).revoked is not None and keys.active(conn) == {}
    with pytest.raises(store.StoreError, match="no active key with id or name 'team-a'"):
        keys.revoke(conn, "team-a")
    for path in tmp_path.iterdir():  # the file and its WAL/SHM
        assert secret.encode() not in path.read_bytes(), path
    conn.close()
    assert secret.encode() not in db.read_bytes()


def test_rate_limiter_sliding_window():
    limiter = keys.RateLimiter()
    key = keys.Key("key_1", "k", 3, None)
    assert [limiter.retry_after(key, now=t) for t in (0, 1, 2)] == [None, None, None]
    assert limiter.retry_after(key, now=10) == 50  # the first of the three leaves the window at t=60
    assert limiter.retry_after(key, now=60.5) is None
    assert limiter.retry_after(keys.Key("key_2", "free", None, None), now=0) is None


def test_request_log_commits_before_returning(tmp_path):
    db = tmp_path / "log.sqlite"
    log = store.RequestLog(db)

    async def many():
        rows = [store.request_row(id=f"req_{i}", ts=float(i), version="v1", key_id="key_1", endpoint="extract",
                                  fields={"a": i}, valid=True, flags=["empty:a"] if i % 2 else [], latency_ms=1.0,
                                  status=200) for i in range(300)]
        await asyncio.gather(*(log.add(r) for r in rows))
        # Committed: another connection sees every row now.
        other = sqlite3.connect(db)
        count = other.execute("SELECT count(*) FROM requests").fetchone()[0]
        other.close()
        return count

    assert asyncio.run(many()) == 300
    log.close()
    conn = store.connect(db)
    row = conn.execute("SELECT fields, flags, valid FROM requests WHERE id = 'req_7'").fetchone()
    assert json.loads(row["fields"]) == {"a": 7} and json.loads(row["flags"]) == ["empty:a"] and row["valid"] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_register_keeps_a_rollout_across_restarts(tmp_path):
    conn = store.connect(tmp_path / "g.sqlite")
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], None) == {"v1": 100.0, "v2": 0.0}
    rollout.set_weights(conn, {"v2": 30})
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], None) == {"v1": 70.0, "v2": 30.0}
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], {"v1": 10, "v2": 90}) == {"v1": 10.0, "v2": 90.0}
    assert rollout.register(conn, [("v3", "c")], None) == {"v3": 100.0}
    events = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY ts")]
    assert events.count("rollout") == 1 and events.count("serve") == 4


def test_since_and_compare(tmp_path):
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("30m", now=10_000) == 10_000 - 1800
    with pytest.raises(store.StoreError, match="--since 'yesterday'"):
        parse_since("yesterday")
    db = tmp_path / "g.sqlite"
    conn = store.connect(db)
    rows = [("a", 200, 10.0, [], "correct"), ("a", 200, 20.0, ["invalid_json"], "corrected"),
            ("b", 200, 30.0, ["empty:x"], None), ("b", 503, 5000.0, ["upstream_error"], None)]
    for i, (version, status, latency, flag_list, verdict) in enumerate(rows):
        conn.execute("INSERT INTO requests (id, ts, version, endpoint, status, latency_ms, flags) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (f"req_{i}", time.time(), version, "extract", status, latency, json.dumps(flag_list)))
        if verdict:
            conn.execute("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, ?, '{}', ?)",
                         (f"req_{i}", verdict, time.time()))
    conn.close()
    table = {r["version"]: r for r in compare_table(str(db), ["a", "b", "c"], version=None, since=None, flagged=False)}
    assert table["a"]["requests"] == 2 and table["a"]["invalid_json"] == 0.5 and table["a"]["flagged"] == 0.5
    assert table["a"]["reviewed"] == 2 and table["a"]["reviewed_accuracy"] == 0.5 and table["b"]["reviewed"] == 0
    assert table["b"]["answered"] == 1 and table["b"]["p50_ms"] == 30.0 and table["b"]["upstream_error"] == 0.5
    assert table["c"]["requests"] == 0 and table["c"]["flagged"] is None
    # The dashboard's numbers are the same numbers, per day and in total.
    conn = store.connect(db)
    board = stats.dashboard(conn, days=1)
    total = board["versions"]["a"]["total"]
    assert {k: total[k] for k in ("requests", "invalid_json", "reviewed_accuracy")} == \
        {"requests": 2, "invalid_json": 0.5, "reviewed_accuracy": 0.5}
    [day] = board["versions"]["b"]["days"].values()
    assert day["p95_ms"] == 30.0 and day["flag_rates"] == {"empty:x": 0.5, "upstream_error": 0.5}
    flagged = stats.version_stats(conn, flagged=True)
    assert flagged["a"]["all"]["requests"] == 1 and flagged["b"]["all"]["requests"] == 2
    conn.close()


def test_version_planning_errors(tmp_path):
    from swiftpipe.gateway.service import ServeError, plan_versions, split_name

    assert split_name("v1=runs/a") == ("v1", "runs/a")
    assert split_name("runs/a") == (None, "runs/a")
    recipe = str(REPO / "recipes" / "demo-cpu.yaml")
    with pytest.raises(ServeError, match="nothing to serve"):
        plan_versions([], [], recipe=None, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(ServeError, match="does not exist"):
        plan_versions([str(tmp_path / "nope")], [], recipe=None, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(ServeError, match="NAME=URL"):
        plan_versions([], ["v1:http://x"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(ServeError, match="both named 'v1'"):
        plan_versions([], ["v1=http://a/v1", "v1=http://b/v1"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    planned = plan_versions([], ["v1=http://127.0.0.1:9/"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    assert planned[0].url == "http://127.0.0.1:9/v1" and planned[0].recipe.name == "demo-cpu"


def test_request_log_survives_rows_sqlite_cannot_take(tmp_path):
    log = store.RequestLog(tmp_path / "log.sqlite")

    async def write():
        odd = store.request_row(id="req_odd", ts=1.0, endpoint="chat", output="x\ud800", fields={"a": "\ud800"},
                                prompt_tokens=2**70, status=200)
        fine = [store.request_row(id=f"req_{i}", ts=1.0, endpoint="extract", status=200) for i in range(20)]
        await asyncio.gather(log.add(odd), *(log.add(r) for r in fine))
        await log.add(store.request_row(id="req_after", ts=2.0, endpoint="extract", status=200))

    asyncio.run(write())
    log.close()
    conn = store.connect(tmp_path / "log.sqlite")
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 22
    odd = conn.execute("SELECT output, prompt_tokens FROM requests WHERE id = 'req_odd'").fetchone()
    assert odd["output"] == "x?" and odd["prompt_tokens"] is None


