"""The per-version numbers, the same for `requests --compare` and the dashboard; `--since`."""

import json
import time

import pytest

from swiftpipe.gateway import stats, store
from swiftpipe.gateway.request_log import compare_table, parse_since


def test_since_and_compare(tmp_path):
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("30m", now=10_000) == 10_000 - 1800
    with pytest.raises(store.StoreError, match="--since 'yesterday'"):
        parse_since("yesterday")
    db = tmp_path / "g.sqlite"
    conn = store.connect(db)
    rows = [("a", 200, 10.0, [], "correct"), ("a", 200, 20.0, ["invalid_json"], "corrected"),
            ("b", 200, 30.0, ["empty:x"], None), ("b", 503, 5000.0, ["upstream_error"], None)]
    for i, (version, status, latency, flag_list, verdict) in enumerate(rows):
        conn.execute("INSERT INTO requests (id, ts, version, endpoint, status, latency_ms, flags) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (f"req_{i}", time.time(), version, "extract", status, latency, json.dumps(flag_list)))
        if verdict:
            conn.execute("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, ?, '{}', ?)",
                         (f"req_{i}", verdict, time.time()))
    conn.close()
    table = {r["version"]: r for r in compare_table(str(db), ["a", "b", "c"], version=None, since=None, flagged=False)}
    assert table["a"]["requests"] == 2 and table["a"]["invalid_json"] == 0.5 and table["a"]["flagged"] == 0.5
    assert table["a"]["reviewed"] == 2 and table["a"]["reviewed_accuracy"] == 0.5 and table["b"]["reviewed"] == 0
    assert table["b"]["answered"] == 1 and table["b"]["p50_ms"] == 30.0 and table["b"]["upstream_error"] == 0.5
    assert table["c"]["requests"] == 0 and table["c"]["flagged"] is None
    # The dashboard's numbers are the same numbers, per day and in total.
    conn = store.connect(db)
    board = stats.dashboard(conn, days=1)
    total = board["versions"]["a"]["total"]
    assert {k: total[k] for k in ("requests", "invalid_json", "reviewed_accuracy")} == \
        {"requests": 2, "invalid_json": 0.5, "reviewed_accuracy": 0.5}
    [day] = board["versions"]["b"]["days"].values()
    assert day["p95_ms"] == 30.0 and day["flag_rates"] == {"empty:x": 0.5, "upstream_error": 0.5}
    flagged = stats.version_stats(conn, flagged=True)
    assert flagged["a"]["all"]["requests"] == 1 and flagged["b"]["all"]["requests"] == 2
    conn.close()
