"""The gateway's database: the request log, the API keys (hashes only), the versions and their
traffic weights, the reviews, the shared rate windows and an event log (rollouts, key changes).

A SQLite file (the default; one machine) or a PostgreSQL database (the store of several replicas),
through one data layer: the queries are written once, `gateway.db` translates what differs.
A SQLite file is in WAL mode, so `swiftpipe requests`, `keys` and `rollout` read and write it while
the gateway runs. Request rows are written by one writer thread that commits a batch of concurrent
requests at once; each request's response waits for the commit that holds its row (a response
the client got is in the log, SIGKILL included) — for a bounded time: a locked or full database
makes requests fail fast (503), never hang, and the log recovers by itself.

Private by construction (SQLite): the file (and SQLite's -wal and -shm beside it, which take its mode) is
created 0600, in a directory created 0700, whatever the umask; deleted rows are overwritten
(`secure_delete`) and the file shrinks after large prunes (incremental vacuum).

The schema is a list of numbered migrations (`MIGRATIONS`), applied in order when a database is
opened (`swiftpipe db upgrade` applies them without serving); `schema_version` says how far a
database has come. On PostgreSQL, replicas starting together migrate one at a time (an advisory lock).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.gateway import db
from swiftpipe.gateway.db import Connection
from swiftpipe.task.flags import INVALID_JSON

BASELINE = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,                 -- unix time the request arrived
    version TEXT,
    key_id TEXT,                      -- keys.id, never the key
    endpoint TEXT NOT NULL,           -- extract | chat | chat-stream
    input TEXT,                       -- the text (extract) or the last user message (chat), as --log-content keeps it
    output TEXT,                      -- the model's raw answer, likewise
    fields TEXT,                      -- the parsed answer, JSON, likewise
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
    rpm INTEGER,                      -- requests per minute (NULL: unlimited)
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
    task TEXT NOT NULL,               -- JSON: Task.stored(): the recipe's name, system prompt, schema, ...
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,      -- requests.id: a later review of a request replaces the earlier one
    verdict TEXT NOT NULL,            -- correct | corrected
    fields TEXT NOT NULL,             -- the right answer (JSON): the confirmed or the corrected one
    key_id TEXT,                      -- the reviewer's key id
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL,
    kind TEXT NOT NULL,               -- serve | rollout | key-create | key-revoke | key-rotate | prune
    detail TEXT NOT NULL              -- JSON
);
"""

# (number, what it adds, statements). A migration runs once per database, in order, in one
# transaction with the new schema_version; a database made before migrations existed is version 0.
MIGRATIONS: list[tuple[int, str, list[Any]]] = [
    (1, "the request log, keys, versions, tasks, reviews and events",
     [statement.strip() for statement in BASELINE.split(";") if statement.strip()]),
    (2, "key roles, expiry, allowed versions and last use; what a request row keeps of its text", [
        "ALTER TABLE keys ADD COLUMN role TEXT NOT NULL DEFAULT 'client'",  # client | reviewer | admin
        "ALTER TABLE keys ADD COLUMN expires REAL",                        # unix time (NULL: never)
        "ALTER TABLE keys ADD COLUMN versions TEXT",                       # JSON list; NULL = every version
        "ALTER TABLE keys ADD COLUMN last_used REAL",
        # The gateway's own key (SWIFTPIPE_API_KEY, or the one it generated) is an admin key.
        "UPDATE keys SET role = 'admin' WHERE name IN ('env', 'default')",
        "ALTER TABLE requests ADD COLUMN content TEXT",                    # full | redacted | none
        "CREATE INDEX IF NOT EXISTS feedback_key ON feedback (key_id)",
    ]),
    (3, "per version and UTC day: request counts, flag counts and a latency histogram (the statistics)", [
        # p50_ms/p95_ms: the day's latency percentiles, set once the day is over (sealed = 1)
        "CREATE TABLE IF NOT EXISTS request_days (version TEXT NOT NULL, day TEXT NOT NULL, "
        "requests INTEGER NOT NULL, answered INTEGER NOT NULL, flagged INTEGER NOT NULL, "
        "invalid_json INTEGER NOT NULL, p50_ms REAL, p95_ms REAL, sealed INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (version, day)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS request_days_open ON request_days (day) WHERE sealed = 0",
        "CREATE TABLE IF NOT EXISTS request_day_flags (version TEXT NOT NULL, day TEXT NOT NULL, "
        "flag TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (version, day, flag)) WITHOUT ROWID",
        # latencies of answered requests, bucket b holding [1.05**b, 1.05**(b+1)) milliseconds
        "CREATE TABLE IF NOT EXISTS request_day_latency (version TEXT NOT NULL, day TEXT NOT NULL, "
        "bucket INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (version, day, bucket)) WITHOUT ROWID",
        # a window's histogram, summed per bucket in index order (no sort of every day's buckets)
        "CREATE INDEX IF NOT EXISTS request_day_latency_bucket ON request_day_latency (version, bucket, day, n)",
        lambda conn: _backfill_rollups(conn),
    ]),
    (4, "each answer's confidence and whether it is in the random audit sample of the review queue", [
        "ALTER TABLE requests ADD COLUMN confidence TEXT",       # JSON {field: p}; NULL: no logprobs
        "ALTER TABLE requests ADD COLUMN row_confidence REAL",   # the least confident field
        "ALTER TABLE requests ADD COLUMN audit INTEGER NOT NULL DEFAULT 0",  # 1: drawn for the audit sample
        "CREATE INDEX IF NOT EXISTS requests_review ON requests (audit, row_confidence) "
        "WHERE status = 200 AND input IS NOT NULL",
    ]),
    (5, "per-key rate windows shared by every process and replica of the gateway (keys.SharedRateLimiter)", [
        "CREATE TABLE IF NOT EXISTS rate_hits (key_id TEXT NOT NULL, ts REAL NOT NULL)",  # one row per admitted request
        "CREATE INDEX IF NOT EXISTS rate_hits_key_ts ON rate_hits (key_id, ts)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

REQUEST_COLUMNS = ("id", "ts", "version", "key_id", "endpoint", "input", "output", "fields", "valid", "flags",
                   "latency_ms", "status", "upstream_status", "error", "prompt_tokens", "completion_tokens", "content",
                   "confidence", "row_confidence", "audit")

DEFAULT_DB = "serve/serve.sqlite"  # the gateway's database when --db is not given
LOG_WAIT_S = 2.0  # longest a response waits for its log row; then 503 (the database is locked or full)
BUSY_MS = 500  # how long one statement of the request log's writer waits for another process's lock
CONNECT_BUSY_MS = 10_000  # how long other connections' statements wait (`connect`)
PROBE_S = 0.5  # an idle request-log writer checks this often that the database takes writes (RequestLog)
LINGER_S = 0.002  # longest a commit waits for the rows of other requests in flight (RequestLog)
SEAL_S = 60.0  # how often the log writer seals the days that are over (`seal_days`; the statistics read
# an unsealed day's histogram instead, so this only decides how soon a past day is read as one row)
LOGGED_TABLES = ("requests", "request_days", "request_day_flags", "request_day_latency")  # what a log row writes


class StoreError(SwiftpipeError):
    pass


def target(where: Any) -> db.Target:
    """`--db` parsed (a path or a URL); StoreError for a URL of another kind."""
    try:
        return db.parse(where)
    except db.DatabaseURLError as exc:
        raise StoreError(str(exc)) from None


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) 0700; an existing directory is left as its owner made it."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)


def private_file(path: Path) -> bool:
    """Create `path` 0600 when it is missing (whatever the umask); True when it was created."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)
    return True


def readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def connect(where: Any, *, create: bool = True, busy_ms: int = CONNECT_BUSY_MS, upgrade: bool = True) -> Connection:
    """Open the gateway database (`--db`: a path or a URL, see `gateway.db`), migrated to the current
    schema. A SQLite file is created privately (unless `create` is false) and opened in WAL mode; a
    PostgreSQL database must exist (its tables are created). `upgrade=False`: no migration (`db upgrade`)."""
    place = target(where)
    if not place.is_sqlite:
        assert place.url is not None
        try:
            pg = db.connect_pg(place.url, lock_timeout_ms=busy_ms)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{place}: cannot open the PostgreSQL database ({exc}); check the URL, that the "
                             f"server runs and that the database exists (createdb), and the password "
                             f"(PGPASSWORD or ~/.pgpass)") from None
        try:
            if upgrade:
                migrate(pg)
        except sqlite3.DatabaseError as exc:
            pg.close()
            raise StoreError(f"{place}: could not bring the schema up to date ({exc})") from None
        return pg
    assert place.path is not None
    path = place.path
    if not create and not path.is_file():
        raise StoreError(f"{path}: no such database; it is created by `swiftpipe serve` (--db) or "
                         f"`swiftpipe keys create --db {path}`")
    new = private_file(path)
    try:
        conn = db.connect_sqlite(path, timeout_s=busy_ms / 1000)
        if new:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect before the first table
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, whatever the build's default
        conn.row_factory = sqlite3.Row
        if upgrade:
            migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable SQLite database ({exc}); pass another --db") from None
    return conn


def schema_version(conn: Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: Connection) -> int:
    """Apply the migrations this database lacks; returns its schema version."""
    shared = db.dialect(conn).name == db.POSTGRESQL
    if shared:  # replicas starting at once: one migrates, the others wait and find it done
        conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    try:
        return _migrate(conn)
    finally:
        if shared:
            conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))


MIGRATION_LOCK = 2023_0023  # the advisory lock id of migrations on PostgreSQL


def _migrate(conn: Connection) -> int:
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(f"the database has schema version {version}, newer than this swiftpipe's "
                         f"{SCHEMA_VERSION}; upgrade swiftpipe")
    for number, _, statements in MIGRATIONS:
        if number <= version:
            continue
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if schema_version(conn) >= number:  # another process migrated meanwhile
                continue
            for statement in statements:
                if callable(statement):  # a step SQL alone cannot do portably (e.g. a backfill)
                    statement(conn)
                elif number == 2 and statement.startswith("ALTER TABLE") and _has_column(conn, statement):
                    continue
                else:
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (number, time.time()))
        version = number
    return version


def _has_column(conn: Connection, alter: str) -> bool:
    """Whether `ALTER TABLE t ADD COLUMN c ...` has been applied already (a file of an older build)."""
    words = alter.split()
    table, column = words[2], words[5]
    return column in db.dialect(conn).columns(conn, table)


def add_event(conn: Connection, kind: str, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)",
                 (time.time(), kind, json.dumps(detail, ensure_ascii=False)))


def _storable(value: Any) -> Any:
    """What both stores can hold: text without lone surrogates or NUL (PostgreSQL refuses it; U+FFFD
    instead), integers within 64 bits."""
    if isinstance(value, str):
        if "\x00" not in value:
            if value.isascii():
                return value
            try:
                value.encode("utf-8")  # no lone surrogate: as it is
                return value
            except UnicodeEncodeError:
                pass
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return None
    return value


_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps(..., ensure_ascii=False), without a new encoder each time


def request_row(**values: Any) -> tuple:
    """A row of `requests` in column order; `fields`, `flags` and `confidence` are stored as JSON."""
    for name in ("fields", "confidence"):
        if values.get(name) is not None:
            values[name] = _JSON.encode(values[name])
    values["audit"] = int(bool(values.get("audit")))
    values["flags"] = _JSON.encode(values.get("flags") or [])
    if values.get("valid") is not None:
        values["valid"] = int(values["valid"])
    return tuple(_storable(values.get(c)) for c in REQUEST_COLUMNS)


_INSERT = f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
_AT = {name: REQUEST_COLUMNS.index(name) for name in ("ts", "version", "flags", "latency_ms", "status")}

# The statistics' rollups (`request_days`, `request_day_flags`, `request_day_latency`) grow with
# every request row, in the same transaction, so the dashboard reads a few rows per version and
# day instead of the whole log; they hold no text and outlive the rows `--keep-days` prunes.
LATENCY_BASE = 1.05  # histogram buckets 5% wide: a percentile read from them is within 2.5%
_LOG_BASE = math.log(LATENCY_BASE)


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def latency_bucket(ms: float) -> int:
    return math.floor(math.log(max(ms, 0.01)) / _LOG_BASE)


def bucket_ms(bucket: int) -> float:
    """The value a bucket stands for: its geometric middle."""
    return LATENCY_BASE ** (bucket + 0.5)


def histogram_percentile(histogram: dict[int, int], q: float) -> Optional[float]:
    """The q-quantile of the latencies a histogram counted, as `core.stats.percentile` computes it
    (linear between the closest ranks), each latency taken as its bucket's geometric middle."""
    total = sum(histogram.values())
    if not total:
        return None
    pos = (total - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, total - 1)
    values, seen = {}, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        for rank in (lo, hi):
            if rank not in values and seen > rank:
                values[rank] = bucket_ms(bucket)
        if hi in values:
            break
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _rollups(rows: list[tuple]) -> tuple[dict, dict, dict]:
    days: dict[tuple[str, str], list[int]] = {}
    flags: dict[tuple[str, str, str], int] = {}
    latency: dict[tuple[str, str, int], int] = {}
    for row in rows:
        version = row[_AT["version"]]
        if version is None:
            continue
        day = utc_day(row[_AT["ts"]])
        names = json.loads(row[_AT["flags"]] or "[]")
        answered = row[_AT["status"]] == 200
        counts = days.setdefault((version, day), [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += answered
        counts[2] += bool(names)
        counts[3] += INVALID_JSON in names
        for name in set(names):
            flags[(version, day, name)] = flags.get((version, day, name), 0) + 1
        if answered and row[_AT["latency_ms"]] is not None:
            key = (version, day, latency_bucket(row[_AT["latency_ms"]]))
            latency[key] = latency.get(key, 0) + 1
    return days, flags, latency


def add_rollups(conn: Connection, rows: list[tuple]) -> None:
    """Count request rows (in REQUEST_COLUMNS order) into the rollups; inside the caller's transaction.
    The rollup rows are written in key order, so writers of several replicas lock them in one order
    (no deadlock) and each holds a day's row only until its commit."""
    days, flags, latency = _rollups(rows)
    conn.executemany(
        "INSERT INTO request_days (version, day, requests, answered, flagged, invalid_json) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (version, day) DO UPDATE SET requests = request_days.requests + excluded.requests, "
        "answered = request_days.answered + excluded.answered, flagged = request_days.flagged + excluded.flagged, "
        "invalid_json = request_days.invalid_json + excluded.invalid_json, sealed = 0",
        [(*key, *counts) for key, counts in sorted(days.items())])
    conn.executemany("INSERT INTO request_day_flags (version, day, flag, n) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (version, day, flag) DO UPDATE SET n = request_day_flags.n + excluded.n",
                     [(*key, n) for key, n in sorted(flags.items())])
    conn.executemany("INSERT INTO request_day_latency (version, day, bucket, n) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (version, day, bucket) DO UPDATE SET n = request_day_latency.n + excluded.n",
                     [(*key, n) for key, n in sorted(latency.items())])


def seal_days(conn: Connection, *, now: Optional[float] = None) -> int:
    """Store the latency percentiles of every day that is over and not sealed yet (the day just
    ended, or a past day that rows reached late), so statistics over years read one row a day.
    Returns how many days were sealed."""
    today = utc_day(time.time() if now is None else now)
    open_days = conn.execute("SELECT version, day FROM request_days WHERE sealed = 0 AND day < ? ORDER BY 1, 2",
                             (today,)).fetchall()
    sealed = []
    for version, day in open_days:
        histogram = dict(conn.execute("SELECT bucket, n FROM request_day_latency WHERE version = ? AND day = ?",
                                      (version, day)).fetchall())
        sealed.append((histogram_percentile(histogram, 0.5), histogram_percentile(histogram, 0.95), version, day))
    conn.executemany("UPDATE request_days SET p50_ms = ?, p95_ms = ?, sealed = 1 WHERE version = ? AND day = ?",
                     sealed)
    return len(sealed)


def insert_requests(conn: Connection, rows: list[tuple], *, seal: bool = True) -> None:
    """The one way request rows enter the log: the rows and their rollups, in the caller's transaction;
    and (`seal`) the days that are over sealed (the log writer: once a minute, `SEAL_S`)."""
    conn.executemany(_INSERT, rows)
    add_rollups(conn, rows)
    if seal:
        seal_days(conn)


def _backfill_rollups(conn: Connection) -> None:
    """Migration 3 on a log that has rows already: count them into the new rollups."""
    have = db.dialect(conn).columns(conn, "requests")  # later migrations add columns
    cursor = conn.execute(f"SELECT {', '.join(c if c in have else 'NULL' for c in REQUEST_COLUMNS)} FROM requests")
    while rows := cursor.fetchmany(10_000):
        add_rollups(conn, [tuple(r) for r in rows])
    seal_days(conn)


class LogUnavailable(StoreError):
    """The request log cannot be written now (locked, full, broken): requests are refused (503)."""


class RequestLog:
    """Group commit: `await log.add(row)` returns once the row is committed, or raises
    LogUnavailable after LOG_WAIT_S (a row not committed by then is not committed at all).

    While the log is failing (`failing`), callers refuse requests before doing any work. The writer
    finds out without a request paying for it: whenever it has had nothing to write for PROBE_S it
    probes the database (`Dialect.probe_write`: SQLite's write lock taken and let go, PostgreSQL's
    INSERT lock in a transaction rolled back; nothing written), so a lock another process took while
    the gateway was idle is known before the next request reaches the model; and the probe clears
    `failing` as soon as the database takes writes again, so a released lock or freed disk is
    noticed without a restart. Under traffic there is no probe: each commit tells the same.

    A commit costs about the same for one row as for ten (SQLite writes every page the rows touch:
    the table, its indexes, the rollups; measured on this VM ~90 us of CPU for one row, ~33 us a
    row in a batch of 32), so while `in_flight()` says other requests are on their way the
    writer waits up to `linger_s` for their rows before it commits (as PostgreSQL's
    commit_delay does while other transactions are open); alone, a row is committed at once."""

    def __init__(self, path: Any, *, max_batch: int = 256, wait_s: float = LOG_WAIT_S, linger_s: float = LINGER_S,
                 in_flight: Optional[Callable[[], int]] = None):
        self.path = db.parse(path)
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.linger_s = linger_s
        self.in_flight = in_flight or (lambda: 0)  # requests in the gateway, each to write a row (this one too)
        self._sealed_at = -SEAL_S
        self._queue: queue.Queue = queue.Queue()
        self._conn = connect(self.path, busy_ms=BUSY_MS)
        self.failing: Optional[str] = None  # why the last write failed, while it fails
        self.failures = 0  # rows that could not be written, for the metrics
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> Optional[str]:
        return self.failing

    async def add(self, row: tuple) -> None:
        if not self._thread.is_alive():
            raise LogUnavailable(f"the request log writer of {self.path} has stopped ({self.failing or 'closed'})")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        item = _Pending(row, done, loop)
        self._queue.put(item)
        try:
            async with asyncio.timeout(self.wait_s):  # a timer, not the task wait_for makes per row
                await done  # (cancelled by the timeout: the writer leaves a cancelled row alone)
        except TimeoutError:
            item.abandoned = True  # the writer skips it if it has not written it yet
            self.failures += 1
            raise LogUnavailable(f"the request log ({self.path}) did not take the row within {self.wait_s:g}s "
                                 f"({self.failing or 'the database is locked or slow'})") from None

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=PROBE_S)
            except queue.Empty:  # idle for PROBE_S: is the database still writable?
                self._probe()
                continue
            if item is None:
                return
            batch = [item]
            until = None
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    if self.in_flight() <= len(batch):  # nobody else is on the way: commit now
                        break
                    until = until or time.monotonic() + self.linger_s
                    try:
                        more = self._queue.get(timeout=max(until - time.monotonic(), 0))
                    except queue.Empty:
                        break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            batch = [i for i in batch if not i.abandoned]
            if batch:
                errors = self._commit([i.row for i in batch])
                by_loop: dict[asyncio.AbstractEventLoop, list] = {}
                for i, error in zip(batch, errors):
                    by_loop.setdefault(i.loop, []).append((i.done, error))
                for loop, settled in by_loop.items():  # one wake-up of each loop per batch, not per row
                    loop.call_soon_threadsafe(_settle_all, settled)

    def _insert(self, rows: list[tuple], attempts: int = 3) -> Optional[BaseException]:
        error: Optional[BaseException] = None
        for attempt in range(attempts):
            try:
                seal = time.monotonic() - self._sealed_at >= SEAL_S
                with self._conn:  # BEGIN ... COMMIT
                    self._conn.execute("BEGIN IMMEDIATE")
                    insert_requests(self._conn, rows, seal=seal)
                if seal:
                    self._sealed_at = time.monotonic()
                return None
            except sqlite3.OperationalError as exc:  # locked by another process, disk full, ...: retried
                error = exc
                self.failing = f"{type(exc).__name__}: {exc}"  # new requests are refused at once meanwhile
                time.sleep(0.05 * 2**attempt)
            except Exception as exc:  # noqa: BLE001 - a row SQLite refuses: not retried
                return exc
        return error

    def _commit(self, rows: list[tuple]) -> list[Optional[BaseException]]:
        """One commit for the batch; if it fails, row by row, so a bad row fails only its request."""
        error = self._insert(rows)
        if error is None:
            self.failing = None
            return [None] * len(rows)
        if isinstance(error, sqlite3.OperationalError) or len(rows) == 1:  # the database, not a row: all fail
            errors: list[Optional[BaseException]] = [error] * len(rows)
        else:
            errors = [self._insert([row], attempts=1) for row in rows]
        failed = [e for e in errors if e is not None]
        self.failures += len(failed)
        if len(failed) == len(rows):
            self.failing = f"{type(failed[0]).__name__}: {failed[0]}"
        return errors

    def _probe(self) -> None:
        """Whether a write could go through now (it writes nothing): `failing` set or cleared."""
        try:
            db.dialect(self._conn).probe_write(self._conn, LOGGED_TABLES)
            self.failing = None
        except sqlite3.Error as exc:
            self.failing = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()


class _Pending:
    __slots__ = ("row", "done", "loop", "abandoned")

    def __init__(self, row: tuple, done: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.row, self.done, self.loop, self.abandoned = row, done, loop, False


def _settle_all(settled: list[tuple[asyncio.Future, Optional[BaseException]]]) -> None:
    for done, error in settled:
        _settle(done, error)


def _settle(done: asyncio.Future, error: Optional[BaseException]) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    elif isinstance(error, sqlite3.OperationalError):  # locked, full, read-only: the database, for now
        done.set_exception(LogUnavailable(f"the request log could not be written: {error}"))
    else:
        done.set_exception(StoreError(f"the request log could not be written: {error}"))


def task(conn: Connection, version: Optional[str]) -> Optional[dict]:
    """What the database knows of a version's recipe (see `tasks`), or None."""
    if not version:
        return None
    row = conn.execute("SELECT task FROM tasks WHERE version = ?", (version,)).fetchone()
    return json.loads(row["task"]) if row else None


DEFAULT_KEEP_DAYS = 30.0  # requests (and their reviews) older than this are deleted by a running gateway


def prune(conn: Connection, keep_days: float) -> int:
    """Delete request rows older than `keep_days`, and their reviews (the same personal data); the
    freed pages go back to the file system (incremental vacuum). Returns how many requests."""
    cutoff = time.time() - keep_days * 86400
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        reviews = conn.execute("DELETE FROM feedback WHERE request_id IN (SELECT id FROM requests WHERE ts < ?)",
                               (cutoff,)).rowcount
        deleted = conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
        if deleted:
            add_event(conn, "prune", {"keep_days": keep_days, "deleted": deleted, "reviews": reviews})
    if deleted and db.dialect(conn).name == db.SQLITE and conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        conn.execute("PRAGMA incremental_vacuum").fetchall()  # runs it to the end
    return deleted
