"""The request log: group commit before returning, rows SQLite cannot take."""

import asyncio
import json
import sqlite3

from swiftpipe.gateway import store


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
