"""The gateway's SQLite file: the request log, the API keys (hashes only), the versions and their
traffic weights, and an event log (rollouts, key changes).

One file, WAL mode, so `swiftpipe requests`, `keys` and `rollout` read and write it while the
gateway runs. Request rows are written by one writer thread that commits a batch of concurrent
requests at once; each request's response waits for the commit that holds its row (a response
the client got is in the log, SIGKILL included).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core.errors import SwiftpipeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,                 -- unix time the request arrived
    version TEXT,
    key_id TEXT,                      -- keys.id, never the key
    endpoint TEXT NOT NULL,           -- extract | chat | chat-stream
    input TEXT,                       -- the text (extract) or the last user message (chat)
    output TEXT,                      -- the model's raw answer
    fields TEXT,                      -- the parsed answer, JSON
    valid INTEGER,
    flags TEXT NOT NULL DEFAULT '[]', -- JSON list
    latency_ms REAL,
    status INTEGER,                   -- the HTTP status the client got
    upstream_status INTEGER,
    error TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_version_ts ON requests (version, ts);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,        -- sha256 of the key
    rpm INTEGER,                      -- requests per minute; NULL = unlimited
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    weight REAL NOT NULL,             -- share of unpinned traffic, percent
    model TEXT,                       -- what it serves (run or model directory, or upstream URL)
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    version TEXT PRIMARY KEY,         -- every version ever served, kept after it is no longer served
    task TEXT NOT NULL,               -- JSON: the recipe's name, system prompt, schema, verbatim fields, metric
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,      -- requests.id; a later review of a request replaces the earlier one
    verdict TEXT NOT NULL,            -- correct | corrected
    fields TEXT NOT NULL,             -- the right answer (JSON): the confirmed or the corrected one
    key_id TEXT,                      -- the reviewer's key id
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL,
    kind TEXT NOT NULL,               -- serve | rollout | key-create | key-revoke | prune
    detail TEXT NOT NULL              -- JSON
);
"""

REQUEST_COLUMNS = ("id", "ts", "version", "key_id", "endpoint", "input", "output", "fields", "valid", "flags",
                   "latency_ms", "status", "upstream_status", "error", "prompt_tokens", "completion_tokens")


DEFAULT_DB = "serve/serve.sqlite"  # the gateway's database when --db is not given


class StoreError(SwiftpipeError):
    pass


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and create) the gateway database; WAL mode, waits up to 10 s for a lock."""
    path = Path(path)
    if not create and not path.is_file():
        raise StoreError(f"{path}: no such database; it is created by `swiftpipe serve` (--db) or "
                         f"`swiftpipe keys create --db {path}`")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable SQLite database ({exc}); pass another --db") from None
    conn.row_factory = sqlite3.Row
    return conn


def add_event(conn: sqlite3.Connection, kind: str, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)",
                 (time.time(), kind, json.dumps(detail, ensure_ascii=False)))


def _storable(value: Any) -> Any:
    """What SQLite can hold: text without lone surrogates, integers within 64 bits."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return None
    return value


def request_row(**values: Any) -> tuple:
    """A row of `requests` in column order; `fields` and `flags` are stored as JSON."""
    values = dict(values)
    if values.get("fields") is not None:
        values["fields"] = json.dumps(values["fields"], ensure_ascii=False)
    values["flags"] = json.dumps(values.get("flags") or [], ensure_ascii=False)
    if values.get("valid") is not None:
        values["valid"] = int(values["valid"])
    return tuple(_storable(values.get(c)) for c in REQUEST_COLUMNS)


_INSERT = f"INSERT OR REPLACE INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"


class RequestLog:
    """Group commit: `await log.add(row)` returns once the row is committed."""

    def __init__(self, path: Path, *, max_batch: int = 256):
        self.path = Path(path)
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._conn = connect(self.path)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        self.failed: Optional[str] = None

    async def add(self, row: tuple) -> None:
        if not self._thread.is_alive():
            raise StoreError(f"the request log writer of {self.path} has stopped ({self.failed or 'closed'})")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.put((row, done, loop))
        await done

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            errors = self._commit([row for row, _, _ in batch])
            for (_, done, loop), error in zip(batch, errors):
                loop.call_soon_threadsafe(_settle, done, error)

    def _insert(self, rows: list[tuple]) -> Optional[BaseException]:
        error: Optional[BaseException] = None
        for attempt in range(5):
            try:
                with self._conn:  # BEGIN ... COMMIT
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany(_INSERT, rows)
                return None
            except sqlite3.OperationalError as exc:  # locked by a long reader, disk full, ...: retried
                error = exc
                time.sleep(0.05 * 2**attempt)
            except Exception as exc:  # noqa: BLE001 - a row SQLite refuses: not retried
                return exc
        return error

    def _commit(self, rows: list[tuple]) -> list[Optional[BaseException]]:
        """One commit for the batch; if it fails, row by row, so a bad row fails only its request."""
        error = self._insert(rows)
        if error is None:
            self.failed = None
            return [None] * len(rows)
        errors: list[Optional[BaseException]] = [self._insert([row]) for row in rows] if len(rows) > 1 else [error]
        failed = [e for e in errors if e is not None]
        self.failed = f"{type(failed[0]).__name__}: {failed[0]}" if len(failed) == len(rows) else None
        return errors

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()


def _settle(done: asyncio.Future, error: Optional[BaseException]) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(StoreError(f"the request log could not be written: {error}"))


def task(conn: sqlite3.Connection, version: Optional[str]) -> Optional[dict]:
    """What the database knows of a version's recipe (see `tasks`), or None."""
    if not version:
        return None
    row = conn.execute("SELECT task FROM tasks WHERE version = ?", (version,)).fetchone()
    return json.loads(row["task"]) if row else None


def prune(conn: sqlite3.Connection, keep_days: float) -> int:
    """Delete request rows older than `keep_days`; returns how many."""
    cutoff = time.time() - keep_days * 86400
    deleted = conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
    if deleted:
        add_event(conn, "prune", {"keep_days": keep_days, "deleted": deleted})
    return deleted
