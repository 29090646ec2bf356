"""`swiftpipe keys create|rotate|list|revoke` and `swiftpipe rollout`: small commands on the gateway's database."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Optional

from swiftpipe.core import console
from swiftpipe.gateway import keys, rollout, store


def _when(ts: Optional[float]) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def keys_create(db: str, name: str, rpm: Optional[int], *, role: str = "client", expires: Optional[str] = None,
                versions: Optional[str] = None) -> None:
    until = time.time() + keys.parse_duration(expires, "--expires") if expires else None
    allowed = [v.strip() for v in versions.split(",")] if versions is not None else None
    conn = store.connect(db)
    try:
        key, secret = keys.create(conn, name, rpm=rpm, role=role, expires=until, versions=allowed)
    finally:
        conn.close()
    limit = f"{rpm} requests/minute" if rpm else "no rate limit"
    scope = f", versions {', '.join(key.versions)}" if key.versions is not None else ""
    console.say(f"created {role} key {key.id} '{name}' ({limit}{scope}"
                f"{', expires ' + _when(until) if until else ''}) in {db}")
    console.say(f"key (shown once, store it now): {secret}")


def keys_rotate(db: str, name: str, grace: str) -> None:
    grace_s = keys.parse_duration(grace, "--grace")
    conn = store.connect(db, create=False)
    try:
        key, secret, old = keys.rotate(conn, name, grace_s=grace_s)
    finally:
        conn.close()
    console.say(f"created {key.role} key {key.id} '{key.name}', the successor of {', '.join(old)}, which "
                f"expire{'s' if len(old) == 1 else ''} {_when(time.time() + grace_s)}")
    console.say(f"key (shown once, store it now): {secret}")


def keys_list(db: str) -> None:
    conn = store.connect(db, create=False)
    try:
        rows = keys.listing(conn)
    finally:
        conn.close()
    if not rows:
        console.say(f"no keys in {db}; create one with `swiftpipe keys create --db {db} --name NAME`")
        return
    console.say(f"{'id':<14} {'name':<20} {'role':<9} {'rpm':>6}  {'versions':<14} {'created':<20} {'expires':<20} "
                f"{'last used':<20} revoked")
    for r in rows:
        allowed = ",".join(json.loads(r["versions"])) if r["versions"] else "all"
        console.say(f"{r['id']:<14} {r['name']:<20} {r['role']:<9} {r['rpm'] or '-':>6}  {allowed:<14} "
                    f"{_when(r['created']):<20} {_when(r['expires']):<20} {_when(r['last_used']):<20} "
                    f"{_when(r['revoked'])}")


def keys_revoke(db: str, ident: str) -> None:
    conn = store.connect(db, create=False)
    try:
        ids = keys.revoke(conn, ident)
    finally:
        conn.close()
    console.say(f"revoked {', '.join(ids)}; a running gateway refuses {'it' if len(ids) == 1 else 'them'} within a second")


def set_rollout(db: str, items: list[str]) -> None:
    conn = store.connect(db, create=False)
    try:
        before = dict(rollout.current(conn))
        after = rollout.set_weights(conn, rollout.parse_weights(items, what="rollout"))
    finally:
        conn.close()
    console.say(f"rollout: {rollout.describe(before)} -> {rollout.describe(after)}; a running gateway "
                f"follows within a second")

