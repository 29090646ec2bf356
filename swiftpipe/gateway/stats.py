"""The per-version numbers of the request log, computed in one place for `/v1/stats` (the
dashboard) and `swiftpipe requests --compare`: requests, share answered, latency p50/p95 of the
answered ones, flagged and invalid-JSON rates, each flag's rate, reviews and reviewed accuracy.

Whole UTC days (the dashboard, `--compare` without `--since` or with `--since 3d`) come from the
rollups the log writer keeps per version and day (`store.add_rollups`): a few rows per version and
day whatever the traffic, so 300k requests over ten years answer in milliseconds. Their latency
percentiles are read from a 5%-wide histogram (within 2.5% of the exact value), and their counts
include requests that `--keep-days` has pruned since (the rollups hold no text). A window that
starts within a day (`--since 2h`) or `--flagged` counts the rows themselves, exactly.

Reviewed accuracy is estimated from the random audit sample only (`gateway.feedback`): the share
of reviewed audit answers a person confirmed, with a 95% Wilson interval. The reviews the queue
spent on the doubtful answers are reported beside it ("found N errors in the M most doubtful"):
they say how well the doubt finds errors, not how often the version is right.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from swiftpipe.core.stats import percentile, wilson_interval
from swiftpipe.gateway.db import Connection, count_if, dialect
from swiftpipe.gateway.store import histogram_percentile, utc_day
from swiftpipe.task.flags import INVALID_JSON

ALL = "all"  # the group of a version's whole period (besides its days)
QUANTILES = (0.5, 0.95)  # the latency percentiles reported
DAY_S = 86400


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


def _group() -> dict[str, Any]:
    return {"n": 0, "answered": 0, "flagged": 0, "invalid": 0, "reviewed": 0, "confirmed": 0, "audited": 0,
            "audit_confirmed": 0, "flags": {}, "latencies": []}


_CONFIRMED = "f.verdict = 'correct'"
_REVIEWS = (f"count(f.verdict), {count_if(_CONFIRMED)}, {count_if('f.verdict IS NOT NULL AND r.audit = 1')}, "
            f"{count_if(_CONFIRMED + ' AND r.audit = 1')}")
_ANSWERED, _FLAGGED = count_if("r.status = 200"), count_if("r.flags != '[]'")
_INVALID_MARK = "'\"" + INVALID_JSON + "\"'"  # the flag as it appears in the JSON list, as an SQL literal
_REVIEW_KEYS = ("reviewed", "confirmed", "audited", "audit_confirmed")


def _from_rows(conn: Connection, since: Optional[float], versions: Optional[list[str]], flagged: bool,
               by_day: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """Exact numbers from the request rows themselves (a window that starts within a day, --flagged)."""
    where, params = _where(since, versions, flagged)
    sql = dialect(conn)
    day = sql.utc_day("r.ts") if by_day else f"'{ALL}'"
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    invalid_n = count_if(sql.contains("r.flags", _INVALID_MARK))
    counts = conn.execute(
        f"SELECT r.version, {day} AS day, count(*), {_ANSWERED}, {_FLAGGED}, {invalid_n}, {_REVIEWS} "
        f"FROM requests r LEFT JOIN feedback f ON f.request_id = r.id WHERE {where} GROUP BY 1, 2", params)
    for version, when, n, answered, flagged_n, invalid, *reviews in counts:
        groups[(version, when)] = {**_group(), "n": n, "answered": answered or 0, "flagged": flagged_n or 0,
                                   "invalid": invalid or 0, **{k: v or 0 for k, v in zip(_REVIEW_KEYS, reviews)}}
    for version, when, flag, n in conn.execute(
            f"SELECT r.version, {day} AS day, j.value, count(*) FROM requests r, {sql.json_items('r.flags', 'j')} "
            f"WHERE {where} GROUP BY 1, 2, 3", params):
        groups[(version, when)]["flags"][flag] = n
    for version, when, latency in conn.execute(
            f"SELECT r.version, {day} AS day, r.latency_ms FROM requests r "
            f"WHERE {where} AND r.status = 200 AND r.latency_ms IS NOT NULL", params):
        groups[(version, when)]["latencies"].append(latency)
    return groups


def _from_rollups(conn: Connection, since: Optional[float], versions: Optional[list[str]],
                  by_day: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """Numbers of whole UTC days from the rollups (each day's, with `by_day`, and the whole
    window's); reviews from the reviews of the kept rows. A day that is over has its percentiles
    stored (`store.seal_days`); only open days (today) and the window's total read histograms,
    summed in SQL: the work grows with the number of days, not of requests."""
    def where(table: str = "") -> tuple[str, list[Any]]:
        clause, params = ["1 = 1"], []
        if since is not None:
            clause.append(f"{table}day >= ?")
            params.append(utc_day(since))
        if versions:
            clause.append(f"{table}version IN ({', '.join('?' * len(versions))})")
            params += list(versions)
        return " AND ".join(clause), params

    clause, params = where()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    histograms: dict[tuple[str, str], dict[int, int]] = {}
    if by_day:
        for version, when, n, answered, flagged_n, invalid, p50, p95, sealed in conn.execute(
                f"SELECT version, day, requests, answered, flagged, invalid_json, p50_ms, p95_ms, sealed "
                f"FROM request_days WHERE {clause}", params):
            groups[(version, when)] = {**_group(), "n": n, "answered": answered, "flagged": flagged_n,
                                       "invalid": invalid, "quantiles": {0.5: p50, 0.95: p95} if sealed else None}
        for version, when, flag, n in conn.execute(
                f"SELECT version, day, flag, n FROM request_day_flags WHERE {clause}", params):
            groups[(version, when)]["flags"][flag] = n
        for version, when, bucket, n in conn.execute(
                f"SELECT l.version, l.day, l.bucket, l.n FROM request_days d JOIN request_day_latency l "
                f"USING (version, day) WHERE d.sealed = 0 AND {where('d.')[0]}", params):
            histograms.setdefault((version, when), {})[bucket] = n
    for version, n, answered, flagged_n, invalid in conn.execute(
            f"SELECT version, sum(requests), sum(answered), sum(flagged), sum(invalid_json) "
            f"FROM request_days WHERE {clause} GROUP BY 1", params):
        groups[(version, ALL)] = {**_group(), "n": n, "answered": answered, "flagged": flagged_n, "invalid": invalid,
                                  "quantiles": None}
    for version, flag, n in conn.execute(
            f"SELECT version, flag, sum(n) FROM request_day_flags WHERE {clause} GROUP BY 1, 2", params):
        groups[(version, ALL)]["flags"][flag] = n
    for version, bucket, n in conn.execute(
            f"SELECT version, bucket, sum(n) FROM request_day_latency WHERE {clause} GROUP BY 1, 2", params):
        histograms.setdefault((version, ALL), {})[bucket] = n
    for key, g in groups.items():
        if g["quantiles"] is None:
            histogram = histograms.get(key, {})
            g["quantiles"] = {q: histogram_percentile(histogram, q) for q in QUANTILES}
    # CROSS JOIN keeps feedback (people's reviews: few) the outer loop; SQLite would otherwise walk
    # every request in the window by its ts index and look each one up in feedback.
    rows_where, rows_params = _where(since, versions, False)
    for day in ([dialect(conn).utc_day("r.ts")] if by_day else []) + [f"'{ALL}'"]:
        for version, when, *reviews in conn.execute(
                f"SELECT r.version, {day}, {_REVIEWS} FROM feedback f "
                f"CROSS JOIN requests r ON r.id = f.request_id WHERE {rows_where} GROUP BY 1, 2", rows_params):
            if (version, when) in groups:
                groups[(version, when)].update({k: v or 0 for k, v in zip(_REVIEW_KEYS, reviews)})
    return groups


def _p(g: dict[str, Any], q: float) -> Optional[float]:
    if "quantiles" in g:
        return g["quantiles"].get(q)
    return percentile(g["latencies"], q)


def _rate(count: int, n: int) -> Optional[float]:
    return round(count / n, 4) if n else None


def _ms(value: Optional[float]) -> Optional[float]:
    return round(value, 1) if value is not None else None


def version_stats(conn: Connection, *, since: Optional[float] = None, versions: Optional[list[str]] = None,
                  flagged: bool = False, by_day: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{version: {"all": entry, "<UTC day>": entry, ...}} (days only with `by_day`), each entry
    {requests, answered, p50_ms, p95_ms, flagged, invalid_json, flag_rates, reviewed, reviewed_accuracy}.
    A `since` on a UTC midnight (or None) reads the rollups; any other, or `flagged`, the rows."""
    if not flagged and (since is None or not since % DAY_S):
        groups = _from_rollups(conn, since, versions, by_day)
    else:
        groups = _from_rows(conn, since, versions, flagged, by_day)
    if by_day and not any(when == ALL for _, when in groups):  # each version's whole period, from its days
        for (version, _), g in list(groups.items()):
            total = groups.setdefault((version, ALL), _group())
            for key in ("n", "answered", "flagged", "invalid", *_REVIEW_KEYS):
                total[key] += g[key]
            for flag, n in g["flags"].items():
                total["flags"][flag] = total["flags"].get(flag, 0) + n
            total["latencies"] += g["latencies"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (version, when), g in sorted(groups.items()):
        out.setdefault(version, {})[when] = {
            "requests": g["n"],
            "answered": g["answered"],
            "p50_ms": _ms(_p(g, 0.5)),
            "p95_ms": _ms(_p(g, 0.95)),
            "flagged": _rate(g["flagged"], g["n"]),
            "invalid_json": _rate(g["invalid"], g["n"]),
            "flag_rates": {flag: _rate(n, g["n"]) for flag, n in sorted(g["flags"].items())},
            **reviews(g),
        }
    return out


def reviews(g: dict[str, Any]) -> dict[str, Any]:
    """The review numbers of a group: accuracy from the audit sample with its 95% interval, and what
    the reviews of the doubtful answers found."""
    interval = wilson_interval(g["audit_confirmed"], g["audited"])
    doubtful = g["reviewed"] - g["audited"]
    return {
        "reviewed": g["reviewed"],
        "audited": g["audited"],
        "reviewed_accuracy": _rate(g["audit_confirmed"], g["audited"]),
        "reviewed_accuracy_ci": [round(interval[0], 4), round(interval[1], 4)] if interval else None,
        "doubtful_reviewed": doubtful,
        "doubtful_errors": doubtful - (g["confirmed"] - g["audit_confirmed"]),
    }


def dashboard(conn: Connection, *, days: int = 30) -> dict[str, Any]:
    """`GET /v1/stats`: per version, its UTC days and its total over the last `days` UTC days (today included)."""
    today = int(time.time() // DAY_S) * DAY_S
    stats = version_stats(conn, since=today - (days - 1) * DAY_S, by_day=True)
    versions = {name: {"days": {d: e for d, e in entries.items() if d != ALL}, "total": entries.get(ALL)}
                for name, entries in stats.items()}
    return {"days": days, "versions": versions}


def empty_entry() -> dict[str, Any]:
    """The numbers of a version with no requests (yet)."""
    return {"requests": 0, "answered": 0, "p50_ms": None, "p95_ms": None, "flagged": None, "invalid_json": None,
            "flag_rates": {}, **reviews(_group())}
