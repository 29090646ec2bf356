"""The per-version numbers of the request log, computed in one place for `/v1/stats` (the
dashboard) and `swiftpipe requests --compare`: requests, share answered, latency p50/p95 of the
answered ones, flagged and invalid-JSON rates, each flag's rate, reviews and reviewed accuracy.

Counts come from SQL aggregates over the `requests` table (its `(version, ts)` index); only the
latencies of answered requests are read row by row, for their percentiles.

Reviewed accuracy = confirmed / reviewed: the share of reviewed answers a person found right.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Optional

from swiftpipe.core.stats import percentile
from swiftpipe.task.flags import INVALID_JSON

ALL = "all"  # the group of a version's whole period (besides its days)


def _where(since: Optional[float], versions: Optional[list[str]], flagged: bool) -> tuple[str, list[Any]]:
    where: list[str] = ["r.version IS NOT NULL"]
    params: list[Any] = []
    if since is not None:
        where.append("r.ts >= ?")
        params.append(since)
    if versions:
        where.append(f"r.version IN ({', '.join('?' * len(versions))})")
        params += list(versions)
    if flagged:
        where.append("r.flags != '[]'")
    return " AND ".join(where), params


def _rate(count: int, n: int) -> Optional[float]:
    return round(count / n, 4) if n else None


def _ms(value: Optional[float]) -> Optional[float]:
    return round(value, 1) if value is not None else None


def version_stats(conn: sqlite3.Connection, *, since: Optional[float] = None, versions: Optional[list[str]] = None,
                  flagged: bool = False, by_day: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{version: {"all": entry, "<UTC day>": entry, ...}} (days only with `by_day`), each entry
    {requests, answered, p50_ms, p95_ms, flagged, invalid_json, flag_rates, reviewed, reviewed_accuracy}."""
    where, params = _where(since, versions, flagged)
    day = "date(r.ts, 'unixepoch')" if by_day else f"'{ALL}'"
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    counts = conn.execute(
        f"SELECT r.version, {day} AS day, count(*), sum(r.status = 200), sum(r.flags != '[]'), "
        f"sum(instr(r.flags, '\"{INVALID_JSON}\"') > 0), count(f.verdict), sum(f.verdict = 'correct') "
        f"FROM requests r LEFT JOIN feedback f ON f.request_id = r.id WHERE {where} GROUP BY 1, 2", params)
    for version, when, n, answered, flagged_n, invalid, reviewed, confirmed in counts:
        groups[(version, when)] = {"n": n, "answered": answered or 0, "flagged": flagged_n or 0, "invalid": invalid or 0,
                                   "reviewed": reviewed or 0, "confirmed": confirmed or 0, "flags": {}, "latencies": []}
    for version, when, flag, n in conn.execute(
            f"SELECT r.version, {day} AS day, j.value, count(*) FROM requests r, json_each(r.flags) j "
            f"WHERE {where} GROUP BY 1, 2, 3", params):
        groups[(version, when)]["flags"][flag] = n
    for version, when, latency in conn.execute(
            f"SELECT r.version, {day} AS day, r.latency_ms FROM requests r "
            f"WHERE {where} AND r.status = 200 AND r.latency_ms IS NOT NULL", params):
        groups[(version, when)]["latencies"].append(latency)
    if by_day:  # each version's whole period, from its days
        for (version, _), g in list(groups.items()):
            total = groups.setdefault((version, ALL), {"n": 0, "answered": 0, "flagged": 0, "invalid": 0,
                                                       "reviewed": 0, "confirmed": 0, "flags": {}, "latencies": []})
            for key in ("n", "answered", "flagged", "invalid", "reviewed", "confirmed"):
                total[key] += g[key]
            for flag, n in g["flags"].items():
                total["flags"][flag] = total["flags"].get(flag, 0) + n
            total["latencies"] += g["latencies"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (version, when), g in sorted(groups.items()):
        out.setdefault(version, {})[when] = {
            "requests": g["n"],
            "answered": g["answered"],
            "p50_ms": _ms(percentile(g["latencies"], 0.5)),
            "p95_ms": _ms(percentile(g["latencies"], 0.95)),
            "flagged": _rate(g["flagged"], g["n"]),
            "invalid_json": _rate(g["invalid"], g["n"]),
            "flag_rates": {flag: _rate(n, g["n"]) for flag, n in sorted(g["flags"].items())},
            "reviewed": g["reviewed"],
            "reviewed_accuracy": _rate(g["confirmed"], g["reviewed"]),
        }
    return out


def dashboard(conn: sqlite3.Connection, *, days: int = 30) -> dict[str, Any]:
    """`GET /v1/stats`: per version, its UTC days and its total over the last `days` days."""
    stats = version_stats(conn, since=time.time() - days * 86400, by_day=True)
    versions = {name: {"days": {d: e for d, e in entries.items() if d != ALL}, "total": entries.get(ALL)}
                for name, entries in stats.items()}
    return {"days": days, "versions": versions}


def empty_entry() -> dict[str, Any]:
    """The numbers of a version with no requests (yet)."""
    return {"requests": 0, "answered": 0, "p50_ms": None, "p95_ms": None, "flagged": None, "invalid_json": None,
            "flag_rates": {}, "reviewed": 0, "reviewed_accuracy": None}
