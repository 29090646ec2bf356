"""Versions and traffic weights: which version answers a request.

Unpinned traffic is split by percent weights kept in the database (`versions`), so
`swiftpipe rollout` changes them while the gateway runs (it rereads them every second). The
choice is sticky per key: a stable hash of the key id places each key on a point of [0, 100), and
the versions own consecutive ranges of it in their serve order. Raising a canary from 10 to 50
keeps the keys it already had.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Optional

from swiftpipe.gateway import store
from swiftpipe.gateway.db import Connection, dialect


class RolloutError(store.StoreError):
    pass


def parse_weights(items: list[str], *, what: str = "weights") -> dict[str, float]:
    """`["a=90", "b=10"]` or `["a=90,b=10"]` → {"a": 90.0, "b": 10.0}."""
    weights: dict[str, float] = {}
    for item in (part for entry in items for part in entry.split(",") if part.strip()):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1
        if not sep or not name.strip() or not 0 <= number <= 100:
            raise RolloutError(f"{what}: '{item}' is not NAME=PERCENT with PERCENT from 0 to 100 "
                               f"(e.g. v1=90,v2=10)")
        weights[name.strip()] = number
    return weights


def apply(current: dict[str, float], given: dict[str, float]) -> dict[str, float]:
    """New weights (percent, summing to 100): the given versions get their share, the others split
    the rest in proportion to their current weights (equally if those are all 0)."""
    unknown = [name for name in given if name not in current]
    if unknown:
        raise RolloutError(f"unknown version(s) {', '.join(unknown)}; versions: {', '.join(current)}")
    fixed = sum(given.values())
    others = [name for name in current if name not in given]
    if fixed > 100 + 1e-6 or (not others and abs(fixed - 100) > 1e-6):
        raise RolloutError(f"the weights add up to {fixed:g}; they must add up to 100 "
                           f"(versions not named share what is left)")
    rest = 100 - fixed
    base = sum(current[name] for name in others)
    result = dict(given)
    for name in others:
        result[name] = rest * (current[name] / base if base > 0 else 1 / len(others))
    if sum(result.values()) <= 0:
        raise RolloutError("every version would get 0% of the traffic; give one of them a share")
    return {name: result[name] for name in current}


def bucket(key_id: str) -> float:
    """The key's stable point in [0, 100)."""
    digest = hashlib.sha256(key_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def choose(weights: list[tuple[str, float]], key_id: str) -> str:
    """The version for `key_id` under `weights` (in serve order)."""
    total = sum(max(w, 0) for _, w in weights)
    if total <= 0:
        return weights[0][0]
    point = bucket(key_id) * total / 100
    acc = 0.0
    for name, weight in weights:
        acc += max(weight, 0)
        if point < acc:
            return name
    return [name for name, w in weights if w > 0][-1]


def register(conn: Connection, versions: list[tuple[str, str]], weights: Optional[dict[str, float]],
             tasks: Optional[dict[str, dict]] = None) -> dict[str, float]:
    """At start-up: make `versions` (name, what it serves) the database's versions. Weights: the
    given ones, else those saved for the same versions (a restart keeps a rollout), else all
    traffic to the first version."""
    names = [name for name, _ in versions]
    saved = {r["name"]: r["weight"] for r in conn.execute("SELECT name, weight FROM versions")}
    if weights:
        new = apply({n: saved.get(n, 0.0) for n in names}, weights)
    elif set(saved) == set(names) and sum(saved.values()) > 0:
        new = {n: saved[n] for n in names}
    else:
        new = {n: (100.0 if i == 0 else 0.0) for i, n in enumerate(names)}
    now = time.time()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        dialect(conn).lock_key(conn, "versions")  # replicas starting at once: one after the other
        conn.execute("DELETE FROM versions")
        conn.executemany("INSERT INTO versions (name, position, weight, model, updated) VALUES (?, ?, ?, ?, ?)",
                         [(name, i, new[name], model, now) for i, (name, model) in enumerate(versions)])
        conn.executemany("INSERT INTO tasks (version, task, updated) VALUES (?, ?, ?) ON CONFLICT (version) "
                         "DO UPDATE SET task = excluded.task, updated = excluded.updated",
                         [(name, json.dumps(t, ensure_ascii=False), now) for name, t in (tasks or {}).items()])
        store.add_event(conn, "serve", {"versions": names, "weights": new})
    return new


def current(conn: Connection) -> list[tuple[str, float]]:
    return [(r["name"], r["weight"]) for r in conn.execute("SELECT name, weight FROM versions ORDER BY position")]


def set_weights(conn: Connection, given: dict[str, float]) -> dict[str, float]:
    """`swiftpipe rollout`: change the weights (logged as an event)."""
    now_weights = dict(current(conn))
    if not now_weights:
        raise RolloutError("this database has no versions yet; start `swiftpipe serve` with it first (--db)")
    new = apply(now_weights, given)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE versions SET weight = ?, updated = ? WHERE name = ?",
                         [(w, time.time(), name) for name, w in new.items()])
        store.add_event(conn, "rollout", {"from": now_weights, "to": new, "given": given})
    return new


def describe(weights: dict[str, float]) -> str:
    return ", ".join(f"{name}={w:g}%" for name, w in weights.items())
