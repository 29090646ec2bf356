"""API keys of the gateway: created once and shown once, stored as SHA-256 hashes only.

Rotation: `keys create` a new key, switch the clients to it, `keys revoke` the old one (the
gateway notices within a second, no restart).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

from swiftpipe.gateway import store

PREFIX = "sk-sp-"


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


def create(conn: sqlite3.Connection, name: str, *, rpm: Optional[int] = None, key: Optional[str] = None) -> tuple[Key, str]:
    """Store a new key (its hash) and return it with the key itself (the only time it exists in clear)."""
    if rpm is not None and rpm < 1:
        raise store.StoreError(f"--rpm must be at least 1 (got {rpm}); leave it out for no limit")
    key = key or new_key()
    key_id = "key_" + secrets.token_hex(4)
    try:
        conn.execute("INSERT INTO keys (id, name, hash, rpm, created) VALUES (?, ?, ?, ?, ?)",
                     (key_id, name, key_hash(key), rpm, time.time()))
    except sqlite3.IntegrityError:
        raise store.StoreError("this key is already registered") from None
    store.add_event(conn, "key-create", {"id": key_id, "name": name, "rpm": rpm})
    return Key(key_id, name, rpm, None), key


def find(conn: sqlite3.Connection, key: str) -> Optional[Key]:
    row = conn.execute("SELECT id, name, rpm, revoked FROM keys WHERE hash = ?", (key_hash(key),)).fetchone()
    return Key(row["id"], row["name"], row["rpm"], row["revoked"]) if row else None


def active(conn: sqlite3.Connection) -> dict[str, Key]:
    """Active keys by hash."""
    rows = conn.execute("SELECT id, name, hash, rpm, revoked FROM keys WHERE revoked IS NULL").fetchall()
    return {r["hash"]: Key(r["id"], r["name"], r["rpm"], None) for r in rows}


def listing(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute("SELECT id, name, rpm, created, revoked FROM keys ORDER BY created").fetchall()
    return [dict(r) for r in rows]


def revoke(conn: sqlite3.Connection, ident: str) -> list[str]:
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
