"""`swiftpipe requests`: the request log, filtered (table, CSV or JSONL), and versions compared
side by side (request count, invalid-JSON and flag rates, latency p50/p95, reviewed accuracy; the
numbers of `gateway.stats`, as the dashboard shows them) for a canary decision."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from typing import Any, Optional

from swiftpipe.core import console
from swiftpipe.gateway import store
from swiftpipe.gateway.stats import ALL, empty_entry, version_stats
from swiftpipe.task.flags import INVALID_JSON

# The numbers `requests --compare` shows for each version, in this order (then one column per flag).
# reviewed_accuracy: from the random audit sample (audited reviews), with its 95% interval; the
# reviews of the most doubtful answers and the errors they found beside it (`gateway.stats`).
COMPARED = ("requests", "answered", "invalid_json", "flagged", "p50_ms", "p95_ms", "reviewed", "audited",
            "reviewed_accuracy", "reviewed_accuracy_ci", "doubtful_reviewed", "doubtful_errors")

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: Optional[float] = None) -> float:
    """`15m`, `2h`, `7d` (ago) or an ISO date/time (local time unless it says otherwise) → unix time."""
    now = time.time() if now is None else now
    match = _AGO.match(value.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise store.StoreError(f"--since '{value}': give a time like 2026-11-23, 2026-11-23T14:00, or an age "
                               f"like 30m, 2h, 7d") from None


def filters(*, version: Optional[str], since: Optional[str], since_column: str = "r.ts") -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) on `requests r` for --version and --since."""
    where: list[str] = []
    params: list[Any] = []
    if version:
        where.append("r.version = ?")
        params.append(version)
    if since:
        where.append(f"{since_column} >= ?")
        params.append(parse_since(since))
    return where, params


def load(db: str, *, flagged: bool = False, version: Optional[str] = None, since: Optional[str] = None,
         limit: Optional[int] = None):
    """The log's rows, newest first, as a DataFrame (flags and fields parsed)."""
    import pandas as pd

    conn = store.connect(db, create=False)
    where, params = filters(version=version, since=since)
    if flagged:
        where.append("r.flags != '[]'")
    sql = ("SELECT r.*, f.verdict AS review FROM requests r LEFT JOIN feedback f ON f.request_id = r.id"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.ts DESC")
    if limit:
        sql += f" LIMIT {int(limit)}"
    try:
        cursor = conn.execute(sql, params)
        columns = [d[0] for d in cursor.description]
        frame = pd.DataFrame.from_records([tuple(r) for r in cursor.fetchall()], columns=columns, coerce_float=True)
    finally:
        conn.close()
    frame["flags"] = frame["flags"].map(lambda s: json.loads(s) if s else [])
    for column in ("fields", "confidence"):
        frame[column] = frame[column].map(lambda s: json.loads(s) if isinstance(s, str) else None)
    frame["audit"] = frame["audit"].astype(bool)
    frame["time_utc"] = pd.to_datetime(frame["ts"], unit="s", utc=True).dt.tz_convert(None).dt.strftime("%Y-%m-%d %H:%M:%S")
    return frame


def versions_of(db: str) -> list[str]:
    conn = store.connect(db, create=False)
    try:
        names = [r[0] for r in conn.execute("SELECT DISTINCT version FROM request_days")]
        names += [r[0] for r in conn.execute("SELECT name FROM versions") if r[0] not in names]
    finally:
        conn.close()
    return names


def compare_table(db: str, names: list[str], *, version: Optional[str], since: Optional[str],
                  flagged: bool) -> list[dict[str, Any]]:
    """Per version (in `names`' order): the numbers of `gateway.stats`, each flag's rate a column."""
    conn = store.connect(db, create=False)
    try:
        numbers = version_stats(conn, since=parse_since(since) if since else None,
                                versions=[version] if version else names, flagged=flagged)
    finally:
        conn.close()
    rows = []
    for name in names:
        entry = numbers.get(name, {}).get(ALL) or empty_entry()
        row: dict[str, Any] = {"version": name, **{k: entry[k] for k in COMPARED}}
        row.update({flag: rate for flag, rate in entry["flag_rates"].items() if flag != INVALID_JSON})
        rows.append(row)
    return rows


def show(db: str, *, flagged: bool, version: Optional[str], since: Optional[str], fmt: str,
         limit: Optional[int], compare: bool = False, compare_versions: Optional[list[str]] = None) -> None:
    import pandas as pd

    if compare:
        known = versions_of(db)
        compare_versions = compare_versions or known
        unknown = [v for v in compare_versions if v not in known]
        if unknown:
            raise store.StoreError(f"--compare: no version {', '.join(unknown)} in {db}; versions: "
                                   f"{', '.join(known) or 'none yet'}")
        rows = compare_table(db, compare_versions, version=version, since=since, flagged=flagged)
        _print(pd.DataFrame(rows), fmt)
        return
    frame = load(db, flagged=flagged, version=version, since=since, limit=limit)
    if frame.empty:
        console.say("no requests match")
        return
    if fmt == "table":
        view = frame[["time_utc", "id", "version", "endpoint", "status", "valid", "row_confidence", "flags",
                      "latency_ms", "input"]].copy()
        view = view.rename(columns={"row_confidence": "confidence"})
        view["confidence"] = view["confidence"].map(lambda p: "" if p is None or p != p else f"{p:.3f}")
        view["flags"] = view["flags"].map(lambda f: ",".join(f))
        view["input"] = view["input"].map(lambda s: (s or "")[:40].replace("\n", " "))
        console.say(view.to_string(index=False))
        return
    frame = frame.drop(columns=["ts"])
    _print(frame, fmt)


def _print(frame, fmt: str) -> None:
    frame = frame.astype(object).where(frame.notna(), None)  # missing values: null / empty, never NaN
    for column in ("flags", "fields", "confidence", "reviewed_accuracy_ci"):
        if column in frame and fmt == "csv":
            frame[column] = frame[column].map(lambda v: json.dumps(v, ensure_ascii=False) if v is not None else "")
    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "jsonl":
        for record in frame.to_dict(orient="records"):
            console.say(json.dumps(record, ensure_ascii=False, default=str))
    else:
        console.say(frame.to_string(index=False))
