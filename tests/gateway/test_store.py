"""The request log: group commit before returning, rows SQLite cannot take."""

import asyncio
import json
import sqlite3

import pytest

from swiftpipe.gateway import store


def test_request_log_commits_before_returning(gateway_db):
    db = gateway_db
    log = store.RequestLog(db)

    async def many():
        rows = [store.request_row(id=f"req_{i}", ts=float(i), version="v1", key_id="key_1", endpoint="extract",
                                  fields={"a": i}, valid=True, flags=["empty:a"] if i % 2 else [], latency_ms=1.0,
                                  status=200) for i in range(300)]
        await asyncio.gather(*(log.add(r) for r in rows))
        # Committed: another connection sees every row now.
        other = store.connect(db)
        count = other.execute("SELECT count(*) FROM requests").fetchone()[0]
        other.close()
        return count

    assert asyncio.run(many()) == 300
    log.close()
    conn = store.connect(db)
    row = conn.execute("SELECT fields, flags, valid FROM requests WHERE id = 'req_7'").fetchone()
    assert json.loads(row["fields"]) == {"a": 7} and json.loads(row["flags"]) == ["empty:a"] and row["valid"] == 1
    if store.target(db).is_sqlite:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_request_log_survives_rows_sqlite_cannot_take(gateway_db):
    log = store.RequestLog(gateway_db)

    async def write():
        odd = store.request_row(id="req_odd", ts=1.0, endpoint="chat", output="x\ud800\x00", fields={"a": "\ud800"},
                                prompt_tokens=2**70, status=200)
        fine = [store.request_row(id=f"req_{i}", ts=1.0, endpoint="extract", status=200) for i in range(20)]
        await asyncio.gather(log.add(odd), *(log.add(r) for r in fine))
        await log.add(store.request_row(id="req_after", ts=2.0, endpoint="extract", status=200))

    asyncio.run(write())
    log.close()
    conn = store.connect(gateway_db)
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 22
    odd = conn.execute("SELECT output, prompt_tokens FROM requests WHERE id = 'req_odd'").fetchone()
    assert odd["output"] == "x?\ufffd" and odd["prompt_tokens"] is None


def test_the_database_is_private_whatever_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        db = tmp_path / "serve" / "gw.sqlite"
        conn = store.connect(db)
        conn.execute("INSERT INTO events (ts, kind, detail) VALUES (1, 'x', '{}')")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
        assert modes == {"gw.sqlite": 0o600, "gw.sqlite-wal": 0o600, "gw.sqlite-shm": 0o600}, modes
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental: pruned pages are given back
        conn.close()
    finally:
        os.umask(old)
    assert not store.readable_by_others(db)
    db.chmod(0o644)
    assert store.readable_by_others(db)


def test_an_older_database_is_migrated_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    old = sqlite3.connect(db)  # the schema of a database made before migrations existed
    old.executescript(store.BASELINE)
    old.execute("INSERT INTO keys (id, name, hash, rpm, created) VALUES ('key_1', 'env', 'h1', NULL, 1.0)")
    old.execute("INSERT INTO keys (id, name, hash, rpm, created) VALUES ('key_2', 'team', 'h2', 5, 1.0)")
    old.execute("INSERT INTO requests (id, ts, version, endpoint, status, latency_ms, flags) "
                "VALUES ('req_1', 86400, 'v1', 'extract', 200, 40.0, '[\"empty:a\"]')")
    old.commit()
    old.close()
    conn = store.connect(db)
    assert store.schema_version(conn) == store.SCHEMA_VERSION
    roles = {r["name"]: r["role"] for r in conn.execute("SELECT name, role FROM keys")}
    assert roles == {"env": "admin", "team": "client"}  # the gateway's own key stays an admin key
    assert "content" in [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    # The statistics' rollups count the rows the log had before they existed.
    about_40 = pytest.approx(40.0, rel=0.025)  # the latency histogram's percentiles, of the sealed day
    assert [tuple(r) for r in conn.execute("SELECT * FROM request_days")] == \
        [("v1", "1970-01-02", 1, 1, 1, 0, about_40, about_40, 1)]
    assert [tuple(r) for r in conn.execute("SELECT flag, n FROM request_day_flags")] == [("empty:a", 1)]
    conn.close()
    assert store.schema_version(store.connect(db)) == store.SCHEMA_VERSION  # reopening changes nothing


def test_pruning_removes_reviews_with_their_requests(tmp_path):
    import time

    conn = store.connect(tmp_path / "g.sqlite")
    now = time.time()
    for i, age_days in enumerate((40, 40, 1)):
        conn.execute("INSERT INTO requests (id, ts, endpoint, input, status) VALUES (?, ?, 'extract', ?, 200)",
                     (f"req_{i}", now - age_days * 86400, "x" * 5000))
        conn.execute("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, 'correct', '{}', ?)",
                     (f"req_{i}", now))
    assert store.prune(conn, store.DEFAULT_KEEP_DAYS) == 2
    assert [r[0] for r in conn.execute("SELECT id FROM requests")] == ["req_2"]
    assert [r[0] for r in conn.execute("SELECT request_id FROM feedback")] == ["req_2"]
    event = json.loads(conn.execute("SELECT detail FROM events WHERE kind = 'prune'").fetchone()[0])
    assert event["deleted"] == 2 and event["reviews"] == 2
    conn.close()
