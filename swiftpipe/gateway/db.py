"""Where the gateway keeps its state, and the few ways SQLite and PostgreSQL differ.

`--db` is a file path or `sqlite:///PATH` (one machine: the default), or
`postgresql://USER@HOST[:PORT]/DB` (the store several replicas share; driver psycopg 3). Anything
else that looks like a URL is refused with a clear message: a URL never becomes a relative path.

Every query of the gateway is written once, in the SQL both databases speak, against one
connection type (`Connection`): the stdlib's `sqlite3.Connection` for a file, `PgConnection` (a
thin psycopg wrapper with the same `execute` / `executemany` / `with conn:` / rows by name or
position) for PostgreSQL. The shim translates what differs mechanically — `?` and `:name`
placeholders, `BEGIN IMMEDIATE`, `CROSS JOIN ... ON` (SQLite's join-order hint), the column types
and `WITHOUT ROWID` of the schema — and `Dialect` spells the few functions that differ (a UTC day
of a unix time, a JSON list's items, a substring test, the greater of two values, a per-key lock).
Errors keep the DB-API vocabulary of `sqlite3` (OperationalError: the database, for now, retried;
IntegrityError: a row), so callers catch one set of exceptions whatever the store.

Statements a connection repeats are prepared on the server (psycopg's default: a group commit of
32 rows took 6-7 ms instead of 10-11 here); behind PgBouncer in transaction mode that needs
PgBouncer >= 1.21 with `max_prepared_statements` set.

A password belongs in `PGPASSWORD` or `~/.pgpass` (libpq reads both), not in the URL: the URL is
shown in messages (with any password masked) and would be visible in `ps`.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from swiftpipe.core.errors import SwiftpipeError

SQLITE, POSTGRESQL = "sqlite", "postgresql"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
URL_HELP = "a file path, sqlite:///PATH (sqlite:////ABS/PATH) or postgresql://USER@HOST[:PORT]/DATABASE"


class DatabaseURLError(SwiftpipeError):
    pass


# One exception vocabulary for both stores: sqlite3's DB-API classes (PostgreSQL's errors are
# raised as these subclasses, with PostgreSQL's message).
class OperationalError(sqlite3.OperationalError):
    pass


class IntegrityError(sqlite3.IntegrityError):
    pass


class DatabaseError(sqlite3.DatabaseError):
    pass


@dataclass(frozen=True)
class Target:
    """A parsed `--db`: a SQLite file (`path`) or a PostgreSQL database (`url`)."""

    kind: str
    path: Optional[Path] = None
    url: Optional[str] = None

    @property
    def is_sqlite(self) -> bool:
        return self.kind == SQLITE

    def shown(self) -> str:
        """For messages: the path, or the URL with any password masked."""
        if self.path is not None:
            return str(self.path)
        assert self.url is not None
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.url

    def __str__(self) -> str:
        return self.shown()

    @property
    def name(self) -> str:
        """A short name for files that belong to this database (a SQLite file's name, a PostgreSQL database's)."""
        if self.path is not None:
            return self.path.name
        return (urlsplit(self.url or "").path.strip("/") or "postgres").replace("/", "_")


def parse(db: Any) -> Target:
    """`--db` → Target; DatabaseURLError for a scheme we do not speak (a URL is never taken for a path)."""
    if isinstance(db, Target):
        return db
    if isinstance(db, Path):
        return Target(SQLITE, path=db)
    text = str(db).strip()
    match = _URL.match(text)
    if match is None:
        if re.match(r"^(sqlite|postgres(ql)?)(\+\w+)?:", text):
            raise DatabaseURLError(f"--db {text!r}: a database URL needs '//' after the scheme; give {URL_HELP}")
        if not text:
            raise DatabaseURLError(f"--db is empty; give {URL_HELP}")
        return Target(SQLITE, path=Path(text))
    scheme = match.group(1).lower()
    if scheme == "sqlite":
        rest = text[len(match.group(0)):]
        if not rest.startswith("/") or rest == "/":
            raise DatabaseURLError(f"--db {text!r}: write a SQLite URL sqlite:///relative/path or "
                                   f"sqlite:////absolute/path (an in-memory database cannot be shared)")
        return Target(SQLITE, path=Path(rest[1:]))
    if scheme in _PG_SCHEMES:
        parts = urlsplit(text)
        if not parts.path.strip("/"):
            raise DatabaseURLError(f"--db {text!r}: name the database, e.g. postgresql://swiftpipe@localhost/swiftpipe")
        return Target(POSTGRESQL, url=urlunsplit(parts._replace(scheme="postgresql")))
    raise DatabaseURLError(f"--db {text!r}: unsupported database scheme '{scheme}://'; give {URL_HELP}")


class Connection(Protocol):
    """What the gateway's queries use of a connection (sqlite3.Connection and PgConnection both are one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


class Dialect:
    """SQL that differs between the two databases (SQLite's spelling here)."""

    name = SQLITE

    def utc_day(self, column: str) -> str:
        """'YYYY-MM-DD' of a unix time, UTC."""
        return f"date({column}, 'unixepoch')"

    def json_items(self, column: str, alias: str) -> str:
        """A FROM item with one row per element of a JSON list of strings, its text in `alias`.value."""
        return f"json_each({column}) {alias}"

    def contains(self, column: str, literal: str) -> str:
        """Whether `column` contains the text `literal` (no wildcards)."""
        return f"instr({column}, {literal}) > 0"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def lock_key(self, conn: Connection, key: str) -> None:
        """Serialise transactions about `key` until commit (SQLite's BEGIN IMMEDIATE serialises all writers)."""

    def relaxed_commit(self, conn: Connection) -> None:
        """This transaction's commit need not wait for the disk (what it writes may be lost in a crash of the
        database server: SQLite's WAL with synchronous=NORMAL is like that already)."""

    def columns(self, conn: Connection, table: str) -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    def set_lock_wait(self, conn: Connection, ms: int) -> None:
        """How long this connection's statements wait for another's lock, from now on."""
        conn.execute(f"PRAGMA busy_timeout = {int(ms)}")

    def probe_write(self, conn: Connection, tables: Sequence[str]) -> None:
        """Raise OperationalError unless a writer of `tables` could start now (within the connection's
        lock wait), writing nothing. SQLite: take the file's write lock and let it go (no page is
        written, nothing reaches the disk)."""
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")


class PgDialect(Dialect):
    name = POSTGRESQL

    def utc_day(self, column: str) -> str:
        return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def json_items(self, column: str, alias: str) -> str:
        return f"jsonb_array_elements_text({column}::jsonb) AS {alias}(value)"

    def contains(self, column: str, literal: str) -> str:
        return f"strpos({column}, {literal}) > 0"

    def greatest(self, a: str, b: str) -> str:
        return f"greatest({a}, {b})"

    def lock_key(self, conn: Connection, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))

    def relaxed_commit(self, conn: Connection) -> None:
        conn.execute("SET LOCAL synchronous_commit TO OFF")

    def columns(self, conn: Connection, table: str) -> set[str]:
        return {row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ?", (table,))}

    def set_lock_wait(self, conn: Connection, ms: int) -> None:
        conn.execute(f"SET lock_timeout = {int(ms)}")

    def probe_write(self, conn: Connection, tables: Sequence[str]) -> None:
        """PostgreSQL: the table lock an INSERT takes (ROW EXCLUSIVE), in a transaction rolled back at
        once: it waits out `lock_timeout` behind another session's LOCK TABLE, and fails on a server
        that is down, unreachable or read-only (a standby, default_transaction_read_only)."""
        conn.execute("BEGIN")
        try:
            conn.execute(f"LOCK TABLE {', '.join(tables)} IN ROW EXCLUSIVE MODE")
        finally:
            if isinstance(conn, PgConnection):
                conn.rollback()  # also after a failed LOCK; nothing to do on a connection that broke


SQLITE_DIALECT, PG_DIALECT = Dialect(), PgDialect()


def dialect(conn: Any) -> Dialect:
    return getattr(conn, "dialect", SQLITE_DIALECT)


@contextlib.contextmanager
def lock_wait(conn: Connection, ms: int, *, then_ms: int) -> Iterator[None]:
    """The block's statements wait at most `ms` for another's lock; afterwards `then_ms` again."""
    spelled = dialect(conn)
    spelled.set_lock_wait(conn, ms)
    try:
        yield
    finally:
        spelled.set_lock_wait(conn, then_ms)


def count_if(condition: str) -> str:
    """How many rows meet `condition` (SQLite sums booleans; PostgreSQL does not)."""
    return f"sum(CASE WHEN {condition} THEN 1 ELSE 0 END)"


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection, knowing its dialect."""

    dialect = SQLITE_DIALECT


def connect_sqlite(path: Path, *, timeout_s: float) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False,
                           factory=SqliteConnection)


# -- PostgreSQL ------------------------------------------------------------------------------------
_PARAM = re.compile(r"'(?:[^']|'')*'|\?|(?<!:):([A-Za-z_]\w*)|%")
_DDL_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"))
_translated: dict[tuple[str, bool], str] = {}


def pg_sql(sql: str, with_params: bool) -> str:
    """SQLite's SQL as PostgreSQL (cached): placeholders, BEGIN IMMEDIATE, the join hint, the schema's types."""
    cached = _translated.get((sql, with_params))
    if cached is not None:
        return cached
    out = sql
    head = sql.lstrip()[:12].upper()
    if head.startswith("BEGIN"):
        out = "BEGIN"
    elif head.startswith(("CREATE TABLE", "ALTER TABLE")):
        out = out.replace(") WITHOUT ROWID", ")")
        for pattern, replacement in _DDL_TYPES:
            out = pattern.sub(replacement, out)
    out = out.replace(" CROSS JOIN ", " JOIN ")
    if with_params:
        def mark(match: re.Match) -> str:
            token = match.group(0)
            if token == "?":
                return "%s"
            if token == "%":
                return "%%"
            if match.group(1):
                return f"%({match.group(1)})s"
            return token.replace("%", "%%")  # a string literal: as it is (psycopg reads % even there)
        out = _PARAM.sub(mark, out)
    _translated[(sql, with_params)] = out
    return out


class Row:
    """A result row by position or by column name (like sqlite3.Row); `dict(row)` works."""

    __slots__ = ("_values", "_names")

    def __init__(self, values: Sequence[Any], names: dict[str, int]):
        self._values, self._names = tuple(values), names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (Row, tuple)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values))})"


def _row_factory(cursor: Any) -> Any:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


def _errors() -> Any:
    import psycopg

    return psycopg


class PgCursor:
    """What a query returns: rows, `rowcount`, `description` (psycopg's cursor, errors translated)."""

    def __init__(self, cursor: Any):
        self._cursor = cursor

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list:
        return self._cursor.fetchall() if self._cursor.description else []

    def fetchmany(self, size: int = 1) -> list:
        return self._cursor.fetchmany(size) if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return self._cursor.description


class PgConnection:
    """A psycopg connection that takes the gateway's SQLite-flavoured SQL (see `pg_sql`).

    Autocommit unless a statement says BEGIN (as with sqlite3 and isolation_level=None);
    `with conn:` commits an open transaction, or rolls it back on an exception. A connection the
    server dropped is reopened at the next statement outside a transaction."""

    dialect = PG_DIALECT

    def __init__(self, url: str, *, lock_timeout_ms: int, connect_timeout_s: int = 5):
        self.url = url
        self.lock_timeout_ms = lock_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn = self._open()

    def _open(self) -> Any:
        psycopg = _errors()
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout_s,
                                   row_factory=_row_factory)
        except psycopg.Error as exc:
            raise _translate(exc) from None
        _exact_numbers(conn)
        conn.execute(f"SET lock_timeout = {int(self.lock_timeout_ms)}")
        return conn

    @property
    def in_transaction(self) -> bool:
        psycopg = _errors()
        return self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def _ready(self) -> None:
        if self._conn.closed or self._conn.broken:
            self._conn = self._open()

    def execute(self, sql: str, parameters: Any = (), /) -> PgCursor:
        psycopg = _errors()
        with self._lock:
            self._ready()
            params = parameters if parameters else None
            try:
                return PgCursor(self._conn.execute(pg_sql(sql, params is not None), params))
            except psycopg.Error as exc:
                raise _translate(exc) from None

    def executemany(self, sql: str, seq: Iterable[Any], /) -> PgCursor:
        psycopg = _errors()
        rows = list(seq)
        with self._lock:
            self._ready()
            cursor = self._conn.cursor()
            if not rows:
                return PgCursor(cursor)
            try:
                cursor.executemany(pg_sql(sql, True), rows)
            except psycopg.Error as exc:
                raise _translate(exc) from None
            return PgCursor(cursor)

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if not self._conn.closed and not self._conn.broken and self.in_transaction:
            self.execute("ROLLBACK")

    def __enter__(self) -> "PgConnection":
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()

    def close(self) -> None:
        self._conn.close()


def _translate(exc: Exception) -> Exception:
    psycopg = _errors()
    message = str(exc).strip()
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityError(message)
    if isinstance(exc, (psycopg.OperationalError, psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled,
                        psycopg.errors.DiskFull, psycopg.errors.AdminShutdown, psycopg.errors.ReadOnlySqlTransaction)):
        return OperationalError(message)
    return DatabaseError(message)


def _exact_numbers(conn: Any) -> None:
    """sum() of integers is `numeric` in PostgreSQL: load it as int (or float), never Decimal."""
    from psycopg.adapt import Loader

    class NumericLoader(Loader):
        def load(self, data: Any) -> Any:
            text = bytes(data).decode()
            return int(text) if text.lstrip("-").isdigit() else float(text)

    conn.adapters.register_loader("numeric", NumericLoader)


def connect_pg(url: str, *, lock_timeout_ms: int) -> PgConnection:
    return PgConnection(url, lock_timeout_ms=lock_timeout_ms)
