"""Speed of `swiftpipe data synth-address` on one core (the target: >= 20,000 samples/s).

    python bench/synth_speed.py [--n 100000] [--rounds 5]

Generates --n rows into memory (no disk) with the same code the CLI runs, pinned to one CPU where
the OS allows it, and prints the median rows/s over --rounds rounds with the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftpipe.data import synth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    synth.division_triples()  # load the table once, outside the timing
    rates = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        synth.write_samples(io.StringIO(), args.n, seed=1)
        rates.append(args.n / (time.perf_counter() - started))
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.node()} ({cpu}, Python {platform.python_version()}), one core")
    print(f"synth-address: {args.n} rows x {args.rounds} rounds, median {statistics.median(rates):,.0f} rows/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()
