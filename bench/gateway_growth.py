"""Does the request log slow the gateway as it grows? Fills a fresh database (a SQLite file, or a
PostgreSQL database given by --pg URL, or both) with synthetic request rows up to each --at size,
arriving in time order over --span-days (a log `--keep-days` keeps), and at each size measures:

  insert   a group commit as the gateway's writer does it (`store.insert_requests` of --batch rows in
           one transaction: the rows, their rollups, the day's seal check), --commits times: p50/p95 ms;
  stats    `/v1/stats` (`stats.dashboard(days=30)`, the dashboard) and `requests --compare`
           (`request_log.compare_table` over every day): median of --repeat runs, ms.

    python bench/gateway_growth.py --at 100000,250000,500000,1000000 [--pg postgresql://USER@HOST/EMPTY_DB]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftpipe.core.dtype import cpu_bf16  # noqa: E402
from swiftpipe.core.stats import percentile  # noqa: E402
from swiftpipe.gateway import stats, store  # noqa: E402
from swiftpipe.gateway.request_log import compare_table  # noqa: E402

FLAGS = [[], [], [], ["empty:phone"], ["invalid_json"], ["not_in_text:name", "empty:district"]]


def rows(rng: random.Random, start: int, count: int, first_ts: float, step: float) -> list[tuple]:
    out = []
    for i in range(start, start + count):
        status = 200 if rng.random() < 0.97 else rng.choice([400, 503])
        out.append(store.request_row(
            id=f"req_{i:010d}", ts=first_ts + i * step, version=rng.choice(["v1", "v2"]), key_id="key_x",
            endpoint="extract", input="张三 13800000000 浙江省杭州市西湖区文三路100号", output="{}",
            fields={"name": "张三", "phone": "13800000000"}, valid=status == 200, flags=rng.choice(FLAGS),
            latency_ms=rng.lognormvariate(3, 0.5), status=status, content="full", row_confidence=rng.random(),
            audit=rng.random() < 0.1))
    return out


def commit(conn: Any, batch: list[tuple]) -> float:
    started = time.perf_counter()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        store.insert_requests(conn, batch)
    return (time.perf_counter() - started) * 1000


def run(where: Any, sizes: list[int], args) -> list[dict[str, Any]]:
    rng = random.Random(0)
    conn = store.connect(where)
    if conn.execute("SELECT count(*) FROM requests").fetchone()[0]:
        raise SystemExit(f"{store.target(where)} is not empty: pass an empty database")
    now = time.time()
    final = sizes[-1] + args.commits * args.batch * len(sizes)
    step = args.span_days * 86400 / final  # rows arrive in time order; the last ones now
    first_ts = now - args.span_days * 86400
    have, results = 0, []
    for size in sizes:
        fill_started = time.perf_counter()
        while have < size:
            n = min(10_000, size - have)
            commit(conn, rows(rng, have, n, first_ts, step))
            have += n
        filled_s = time.perf_counter() - fill_started
        inserts = []
        for _ in range(args.commits):
            inserts.append(commit(conn, rows(rng, have, args.batch, first_ts, step)))
            have += args.batch
        dash, comp = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            stats.dashboard(conn, days=30)
            dash.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            compare_table(str(where), ["v1", "v2"], version=None, since=None, flagged=False)
            comp.append((time.perf_counter() - started) * 1000)
        result = {"rows": have, "fill_s": round(filled_s, 1),
                  "insert_ms": {"p50": round(percentile(inserts, 0.5), 2), "p95": round(percentile(inserts, 0.95), 2)},
                  "stats_ms": round(statistics.median(dash), 1), "compare_ms": round(statistics.median(comp), 1)}
        print(json.dumps({"db": store.target(where).kind, **result}), flush=True)
        results.append(result)
    conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", default="100000,250000,500000,1000000", help="log sizes to measure at (rows)")
    parser.add_argument("--span-days", type=float, default=30.0, help="the days the rows cover (--keep-days)")
    parser.add_argument("--batch", type=int, default=32, help="rows per measured group commit")
    parser.add_argument("--commits", type=int, default=200, help="measured group commits per size")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each statistic per size (median)")
    parser.add_argument("--pg", help="also (or only, with --no-sqlite) an empty PostgreSQL database")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.at.split(","))
    machine = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "cpu": _cpu_model(), "python": platform.python_version()}
    result: dict[str, Any] = {"benchmark": "gateway_growth", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "machine": machine, "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_sqlite:
            result["sqlite"] = run(Path(tmp) / "growth.sqlite", sizes, args)
        if args.pg:
            result["postgresql"] = run(args.pg, sizes, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


def _cpu_model() -> str:
    return cpu_bf16().cpu or platform.processor()


if __name__ == "__main__":
    main()
