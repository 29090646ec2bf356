"""API keys of the gateway: created once and shown once, stored as SHA-256 hashes only, each with
a role (what it may call), an optional expiry, an optional list of versions it may call, and a
rate limit.

Roles, each including the one before (see `ROLE_OF` in `gateway/access.py` for the endpoints):
- `client` (the default): extraction and chat, the model list, its own requests by id;
- `reviewer`: also the review queue, reviews, statistics, any request by id;
- `admin`: everything, metrics and health details from other hosts, the OpenAPI schema.

Rate limits: `RateLimiter` counts in this process (one gateway process on a SQLite file);
`SharedRateLimiter` counts in the database (`rate_hits`: one row per admitted request of a limited
key, the last minute's only), so every process (`serve --workers N`) and every replica on one
PostgreSQL database draws from the same minute: a key with --rpm 30 gets 30 a minute in all.

Rotation: `keys rotate NAME --grace 24h` creates the successor (same role, limit and versions),
shows it once, and lets the old key expire after the grace period; `keys revoke` ends a key at
once. A running gateway notices either within a second, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from swiftpipe.gateway import store
from swiftpipe.gateway.db import Connection, dialect

PREFIX = "sk-sp-"
ROLES = ("client", "reviewer", "admin")  # in order: each may do what the ones before it may
MIN_ENV_KEY = 32  # characters of a SWIFTPIPE_API_KEY


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Key:
    id: str
    name: str
    rpm: Optional[int]
    revoked: Optional[float]
    role: str = "client"
    expires: Optional[float] = None
    versions: Optional[tuple[str, ...]] = None  # None: every version

    def may(self, role: str) -> bool:
        """Whether this key has `role` or a wider one."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def expired(self, now: Optional[float] = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def may_call(self, version: str) -> bool:
        return self.versions is None or version in self.versions


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    """`90d`, `24h`, `30m`, `45s` → seconds; StoreError naming `what` otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise store.StoreError(f"{what} '{text}': give a duration like 90d, 24h or 30m")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _row_key(row: Any) -> Key:
    versions = json.loads(row["versions"]) if row["versions"] else None
    return Key(row["id"], row["name"], row["rpm"], row["revoked"], row["role"], row["expires"],
               tuple(versions) if versions is not None else None)


_COLUMNS = "id, name, hash, rpm, revoked, role, expires, versions"


def create(conn: Connection, name: str, *, rpm: Optional[int] = None, key: Optional[str] = None,
           role: str = "client", expires: Optional[float] = None,
           versions: Optional[list[str]] = None) -> tuple[Key, str]:
    """Store a new key (its hash) and return it with the key itself (the only time it exists in clear)."""
    if rpm is not None and rpm < 1:
        raise store.StoreError(f"--rpm must be at least 1 (got {rpm}); leave it out for no limit")
    if role not in ROLES:
        raise store.StoreError(f"--role {role!r}: choose one of {', '.join(ROLES)}")
    if versions is not None and not [v for v in versions if v.strip()]:
        raise store.StoreError("--versions: name at least one version, e.g. --versions v1,v2")
    key = key or new_key()
    key_id = "key_" + secrets.token_hex(4)
    allowed = json.dumps([v.strip() for v in versions if v.strip()]) if versions is not None else None
    try:
        conn.execute("INSERT INTO keys (id, name, hash, rpm, created, role, expires, versions) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (key_id, name, key_hash(key), rpm, time.time(), role, expires,
                                                         allowed))
    except sqlite3.IntegrityError:
        raise store.StoreError("this key is already registered") from None
    store.add_event(conn, "key-create", {"id": key_id, "name": name, "rpm": rpm, "role": role, "expires": expires,
                                         "versions": versions})
    return Key(key_id, name, rpm, None, role, expires, tuple(json.loads(allowed)) if allowed else None), key


def find(conn: Connection, key: str) -> Optional[Key]:
    row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE hash = ?", (key_hash(key),)).fetchone()
    return _row_key(row) if row else None


def active(conn: Connection, now: Optional[float] = None) -> dict[str, Key]:
    """Keys that are neither revoked nor expired, by hash."""
    now = time.time() if now is None else now
    rows = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE revoked IS NULL AND (expires IS NULL OR expires > ?)",
                        (now,)).fetchall()
    return {r["hash"]: _row_key(r) for r in rows}


def listing(conn: Connection) -> list[dict]:
    rows = conn.execute("SELECT id, name, role, rpm, versions, created, expires, last_used, revoked FROM keys "
                        "ORDER BY created").fetchall()
    return [dict(r) for r in rows]


def revoke(conn: Connection, ident: str) -> list[str]:
    """Revoke the key with this id, or every active key with this name; returns the ids revoked."""
    rows = conn.execute("SELECT id FROM keys WHERE (id = ? OR name = ?) AND revoked IS NULL", (ident, ident)).fetchall()
    ids = [r["id"] for r in rows]
    if not ids:
        known = ", ".join(f"{k['id']} ({k['name']})" for k in listing(conn) if not k["revoked"]) or "none"
        raise store.StoreError(f"no active key with id or name '{ident}'; active keys: {known}")
    now = time.time()
    conn.executemany("UPDATE keys SET revoked = ? WHERE id = ?", [(now, i) for i in ids])
    store.add_event(conn, "key-revoke", {"ids": ids})
    return ids


def rotate(conn: Connection, ident: str, *, grace_s: float) -> tuple[Key, str, list[str]]:
    """A successor of the key with this id or name (same name, role, limit, versions); the old
    key(s) expire `grace_s` from now (or earlier, if they already would). Returns (new key, its
    secret, the ids of the keys it replaces)."""
    now = time.time()
    rows = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE (id = ? OR name = ?) AND revoked IS NULL "
                        f"AND (expires IS NULL OR expires > ?) ORDER BY created", (ident, ident, now)).fetchall()
    if not rows:
        known = ", ".join(f"{k['id']} ({k['name']})" for k in listing(conn) if not k["revoked"]) or "none"
        raise store.StoreError(f"no active key with id or name '{ident}' to rotate; active keys: {known}")
    old = [_row_key(r) for r in rows]
    model = old[-1]
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        successor, secret = create(conn, model.name, rpm=model.rpm, role=model.role, expires=None,
                                   versions=list(model.versions) if model.versions is not None else None)
        until = now + grace_s
        conn.executemany("UPDATE keys SET expires = ? WHERE id = ? AND (expires IS NULL OR expires > ?)",
                         [(until, k.id, until) for k in old])
        store.add_event(conn, "key-rotate", {"new": successor.id, "old": [k.id for k in old], "grace_s": grace_s})
    return successor, secret, [k.id for k in old]


def touch(conn: Connection, last_used: dict[str, float]) -> None:
    """Record when keys were last used (batched by the gateway, once a second)."""
    if last_used:
        conn.executemany(f"UPDATE keys SET last_used = {dialect(conn).greatest('coalesce(last_used, 0)', '?')} "
                         f"WHERE id = ?",
                         [(ts, key_id) for key_id, ts in last_used.items()])


class RateLimiter:
    """Requests per minute per key: a sliding window of the last minute's request times."""

    def __init__(self) -> None:
        self._seen: dict[str, deque] = {}

    def retry_after(self, key: Key, now: Optional[float] = None) -> Optional[int]:
        """None when the request may go (and is counted), else the seconds until it may."""
        if not key.rpm:
            return None
        now = time.monotonic() if now is None else now
        window = self._seen.setdefault(key.id, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= key.rpm:
            return max(1, int(window[0] + 60 - now + 0.999))
        window.append(now)
        return None


class SharedRateLimiter:
    """Requests per minute per key, counted in the database: the same sliding window for every
    process and replica using it. One short transaction per request of a limited key (unlimited
    keys cost nothing), serialised per key (PostgreSQL: an advisory lock on the key; SQLite: its
    write lock). Times are the gateways' clocks: keep replicas' clocks in step (NTP). While the
    database cannot be written, each process falls back to counting on its own, and says so."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._local = RateLimiter()
        self._said = 0.0

    def retry_after(self, key: Key, now: Optional[float] = None) -> Optional[int]:
        if not key.rpm:
            return None
        now = time.time() if now is None else now
        conn = self.conn
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                dialect(conn).relaxed_commit(conn)  # a rate window lost in a database crash costs nothing
                dialect(conn).lock_key(conn, key.id)
                conn.execute("DELETE FROM rate_hits WHERE key_id = ? AND ts <= ?", (key.id, now - 60))
                n, oldest = conn.execute("SELECT count(*), min(ts) FROM rate_hits WHERE key_id = ?",
                                         (key.id,)).fetchone()
                if n >= key.rpm:
                    return max(1, int(oldest + 60 - now + 0.999))
                conn.execute("INSERT INTO rate_hits (key_id, ts) VALUES (?, ?)", (key.id, now))
            return None
        except sqlite3.Error as exc:  # the database, for now: limited by this process alone meanwhile
            if time.monotonic() - self._said > 60:
                self._said = time.monotonic()
                print(f"gateway: rate limits counted by this process only (the database: {exc})", file=sys.stderr,
                      flush=True)
            return self._local.retry_after(key)
