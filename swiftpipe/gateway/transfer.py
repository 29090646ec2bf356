"""`swiftpipe db upgrade` and `swiftpipe db copy`: the gateway database's schema, and moving a
whole database (a SQLite file's log, keys, versions, tasks, reviews, events and statistics'
rollups) into another, e.g. onto the PostgreSQL server several replicas share."""

from __future__ import annotations

from typing import Any

from swiftpipe.core import console
from swiftpipe.gateway import store

# In an order that keeps every reference valid (reviews after the requests they review).
TABLES = ("keys", "versions", "tasks", "requests", "feedback", "events", "request_days", "request_day_flags",
          "request_day_latency")
BATCH = 5000


def upgrade(db: Any) -> tuple[int, int]:
    """Apply the migrations a database lacks; (version before, version after)."""
    conn = store.connect(db, upgrade=False)
    try:
        before = store.schema_version(conn)
        after = store.migrate(conn)
    finally:
        conn.close()
    return before, after


def upgrade_command(db: str) -> None:
    before, after = upgrade(db)
    if before == after:
        console.say(f"{store.target(db)}: schema version {after}, up to date")
        return
    for number, what, _ in store.MIGRATIONS:
        if before < number <= after:
            console.say(f"  applied {number}: {what}")
    console.say(f"{store.target(db)}: schema version {before} -> {after}")


def copy(source: Any, destination: Any) -> dict[str, int]:
    """Copy every table of `source` into `destination` (both brought to the current schema), in one
    transaction: all of it or nothing. The destination must hold no requests and no keys yet."""
    if store.target(source) == store.target(destination):
        raise store.StoreError("--from and --to are the same database")
    src = store.connect(source, create=False)
    dst = store.connect(destination)
    try:
        held = {table: dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("requests", "keys")}
        if any(held.values()):
            raise store.StoreError(f"--to {store.target(destination)} already holds {held['requests']} requests and "
                                   f"{held['keys']} keys; copy into a new, empty database")
        copied: dict[str, int] = {}
        with dst:
            dst.execute("BEGIN IMMEDIATE")
            dst.execute("DELETE FROM versions")  # what an empty database may have: nothing served yet
            for table in TABLES:
                cursor = src.execute(f"SELECT * FROM {table}")
                columns = [d[0] for d in cursor.description]
                insert = (f"INSERT INTO {table} ({', '.join(columns)}) "
                          f"VALUES ({', '.join('?' * len(columns))})")
                copied[table] = 0
                while rows := cursor.fetchmany(BATCH):
                    dst.executemany(insert, [tuple(r) for r in rows])
                    copied[table] += len(rows)
    finally:
        src.close()
        dst.close()
    return copied


def copy_command(source: str, destination: str) -> None:
    copied = copy(source, destination)
    console.say(f"copied {store.target(source)} -> {store.target(destination)}: "
                + ", ".join(f"{table} {n}" for table, n in copied.items()))
