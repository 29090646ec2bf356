"""`swiftpipe keys create|list|revoke` and `swiftpipe rollout`: small commands on the gateway's database."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from swiftpipe.core import console
from swiftpipe.gateway import keys, rollout, store


def _when(ts: Optional[float]) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def keys_create(db: str, name: str, rpm: Optional[int]) -> None:
    conn = store.connect(Path(db))
    try:
        key, secret = keys.create(conn, name, rpm=rpm)
    finally:
        conn.close()
    limit = f"{rpm} requests/minute" if rpm else "no rate limit"
    console.say(f"created key {key.id} '{name}' ({limit}) in {db}")
    console.say(f"key (shown once, store it now): {secret}")


def keys_list(db: str) -> None:
    conn = store.connect(Path(db), create=False)
    try:
        rows = keys.listing(conn)
    finally:
        conn.close()
    if not rows:
        console.say(f"no keys in {db}; create one with `swiftpipe keys create --db {db} --name NAME`")
        return
    console.say(f"{'id':<14} {'name':<20} {'rpm':>6}  {'created':<20} revoked")
    for r in rows:
        console.say(f"{r['id']:<14} {r['name']:<20} {r['rpm'] or '-':>6}  {_when(r['created']):<20} {_when(r['revoked'])}")


def keys_revoke(db: str, ident: str) -> None:
    conn = store.connect(Path(db), create=False)
    try:
        ids = keys.revoke(conn, ident)
    finally:
        conn.close()
    console.say(f"revoked {', '.join(ids)}; a running gateway refuses {'it' if len(ids) == 1 else 'them'} within a second")


def set_rollout(db: str, items: list[str]) -> None:
    conn = store.connect(Path(db), create=False)
    try:
        before = dict(rollout.current(conn))
        after = rollout.set_weights(conn, rollout.parse_weights(items, what="rollout"))
    finally:
        conn.close()
    console.say(f"rollout: {rollout.describe(before)} -> {rollout.describe(after)}; a running gateway "
                f"follows within a second")

