"""How long the gateway's statistics take as the request log grows (`/v1/stats`, the dashboard,
`swiftpipe requests --compare`): fills a fresh database with N synthetic request rows over a span
of days (two versions, flags, latencies, reviews), then times `stats.dashboard(days=...)` and
`request_log.compare_table` (median of --repeat runs), and how long a review takes to commit while
twelve dashboards are computed at once.

    python bench/gateway_stats.py --rows 300000 --span-days 3650 --days 3660
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftpipe.gateway import stats, store  # noqa: E402
from swiftpipe.gateway.request_log import compare_table  # noqa: E402

FLAGS = [[], [], [], ["empty:phone"], ["invalid_json"], ["not_in_text:name", "empty:district"]]


def fill(db: Path, rows: int, span_days: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    conn = store.connect(db)
    now = time.time()
    batch = []
    with conn:
        conn.execute("BEGIN")
        for i in range(rows):
            status = 200 if rng.random() < 0.97 else rng.choice([400, 503])
            batch.append(store.request_row(
                id=f"req_{i:09d}", ts=now - rng.random() * span_days * 86400, version=rng.choice(["v1", "v2"]),
                key_id="key_x", endpoint="extract", input="张三 13800000000", output="{}", fields={"a": 1},
                valid=status == 200, flags=rng.choice(FLAGS), latency_ms=rng.lognormvariate(3, 0.5), status=status,
                content="full"))
            if len(batch) == 10_000:
                store.insert_requests(conn, batch)
                batch = []
        if batch:
            store.insert_requests(conn, batch)
        conn.executemany("INSERT INTO feedback (request_id, verdict, fields, ts) VALUES (?, ?, '{}', ?)",
                         [(f"req_{i:09d}", rng.choice(["correct", "corrected"]), now)
                          for i in range(0, rows, max(1, rows // 2000))])
    conn.close()


def feedback_during_stats(db: Path, days: int, parallel: int) -> float:
    """How long one review takes to commit while `parallel` dashboards are being computed."""
    import threading

    start = threading.Barrier(parallel + 1)

    def board() -> None:
        conn = store.connect(db)
        start.wait()
        stats.dashboard(conn, days=days)
        conn.close()

    threads = [threading.Thread(target=board) for _ in range(parallel)]
    for t in threads:
        t.start()
    conn = store.connect(db)
    start.wait()
    started = time.perf_counter()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO feedback (request_id, verdict, fields, ts) VALUES ('req_000000001', "
                     "'correct', '{}', ?)", (time.time(),))
    took = time.perf_counter() - started
    for t in threads:
        t.join()
    conn.close()
    return took


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--span-days", type=float, default=3650, help="the rows' ages are spread over this many days")
    ap.add_argument("--days", type=int, default=3660, help="the /v1/stats window")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gw.sqlite"
        started = time.perf_counter()
        fill(db, args.rows, args.span_days)
        fill_s = time.perf_counter() - started
        conn = store.connect(db)
        dashboard_s = timed(lambda: stats.dashboard(conn, days=args.days), args.repeat)
        compare_s = timed(lambda: compare_table(str(db), ["v1", "v2"], version=None, since=None, flagged=False),
                          args.repeat)
        conn.close()
        feedback_s = feedback_during_stats(db, args.days, parallel=12)
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
    result = {"rows": args.rows, "span_days": args.span_days, "days": args.days, "fill_s": round(fill_s, 1),
              "db_mb": round(size_mb, 1), "dashboard_s": round(dashboard_s, 3), "compare_s": round(compare_s, 3),
              "feedback_during_12_stats_s": round(feedback_s, 3),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
