"""The per-version numbers, the same for `requests --compare` and the dashboard; `--since`; the
rollups agree with the rows they count."""

import time

import pytest

from swiftpipe.gateway import stats, store
from swiftpipe.gateway.request_log import compare_table, parse_since


def test_since_and_compare(tmp_path, gateway_db):
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("30m", now=10_000) == 10_000 - 1800
    with pytest.raises(store.StoreError, match="--since 'yesterday'"):
        parse_since("yesterday")
    db = gateway_db
    conn = store.connect(db)
    rows = [("a", 200, 10.0, [], "correct"), ("a", 200, 20.0, ["invalid_json"], "corrected"),
            ("b", 200, 30.0, ["empty:x"], None), ("b", 503, 5000.0, ["upstream_error"], None)]
    for i, (version, status, latency, flag_list, verdict) in enumerate(rows):
        store.insert_requests(conn, [store.request_row(id=f"req_{i}", ts=time.time(), version=version, endpoint="extract",
                                                       status=status, latency_ms=latency, flags=flag_list,
                                                       audit=i == 0)])  # req_0: in the random audit sample
        if verdict:
            conn.execute("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, ?, '{}', ?)",
                         (f"req_{i}", verdict, time.time()))
    conn.close()
    table = {r["version"]: r for r in compare_table(str(db), ["a", "b", "c"], version=None, since=None, flagged=False)}
    assert table["a"]["requests"] == 2 and table["a"]["invalid_json"] == 0.5 and table["a"]["flagged"] == 0.5
    # accuracy from the audit sample only (req_0, confirmed), the queue's doubtful review (req_1) beside it
    assert table["a"]["reviewed"] == 2 and table["a"]["audited"] == 1 and table["a"]["reviewed_accuracy"] == 1.0
    assert table["a"]["reviewed_accuracy_ci"] == [0.2065, 1.0]  # Wilson, 1 of 1: says how little one review shows
    assert table["a"]["doubtful_reviewed"] == 1 and table["a"]["doubtful_errors"] == 1 and table["b"]["reviewed"] == 0
    assert table["b"]["answered"] == 1 and table["b"]["p50_ms"] == pytest.approx(30.0, rel=0.025)
    assert table["b"]["upstream_error"] == 0.5
    assert table["c"]["requests"] == 0 and table["c"]["flagged"] is None
    # The dashboard's numbers are the same numbers, per day and in total.
    conn = store.connect(db)
    board = stats.dashboard(conn, days=1)
    total = board["versions"]["a"]["total"]
    assert {k: total[k] for k in ("requests", "invalid_json", "reviewed_accuracy")} == \
        {"requests": 2, "invalid_json": 0.5, "reviewed_accuracy": 1.0}
    [day] = board["versions"]["b"]["days"].values()
    assert day["p95_ms"] == pytest.approx(30.0, rel=0.025) and day["flag_rates"] == {"empty:x": 0.5, "upstream_error": 0.5}
    flagged = stats.version_stats(conn, flagged=True)
    assert flagged["a"]["all"]["requests"] == 1 and flagged["b"]["all"]["requests"] == 2
    conn.close()


def test_rollups_agree_with_the_rows_and_outlive_pruning(tmp_path, gateway_db):
    import random

    rng = random.Random(3)
    conn = store.connect(gateway_db)
    now = time.time()
    rows = [store.request_row(id=f"req_{i}", ts=now - rng.random() * 20 * 86400, version=rng.choice(["a", "b"]),
                              endpoint="extract", status=rng.choice([200, 200, 200, 400, 503]),
                              latency_ms=rng.lognormvariate(4, 1), flags=rng.choice([[], [], ["invalid_json"],
                                                                                     ["empty:x", "not_in_text:y"]]),
                              audit=rng.random() < 0.3)
            for i in range(2000)]
    with conn:
        conn.execute("BEGIN")
        store.insert_requests(conn, rows)
    for i in range(0, 2000, 7):
        conn.execute("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, ?, '{}', ?)",
                     (f"req_{i}", "correct" if i % 3 else "corrected", now))
    midnight = (now // 86400 - 9) * 86400  # the last ten UTC days: rollups
    rolled = stats.version_stats(conn, since=midnight, by_day=True)
    exact = stats.version_stats(conn, since=midnight + 1e-3, by_day=True)  # within a day: the rows themselves
    assert rolled.keys() == exact.keys() == {"a", "b"}
    for version in rolled:
        assert rolled[version].keys() == exact[version].keys()
        for day, entry in rolled[version].items():
            other = exact[version][day]
            for key in ("requests", "answered", "flagged", "invalid_json", "flag_rates", "reviewed", "audited",
                        "reviewed_accuracy", "reviewed_accuracy_ci", "doubtful_reviewed", "doubtful_errors"):
                assert entry[key] == other[key], (version, day, key)
            for key in ("p50_ms", "p95_ms"):
                assert entry[key] == pytest.approx(other[key], rel=0.03), (version, day, key)
    everything = stats.version_stats(conn)["a"]["all"]["requests"]
    store.prune(conn, 5)
    assert stats.version_stats(conn)["a"]["all"]["requests"] == everything  # aggregates hold no text: kept
    assert conn.execute("SELECT count(*) FROM requests WHERE ts < ?", (now - 5 * 86400,)).fetchone()[0] == 0
    conn.close()
