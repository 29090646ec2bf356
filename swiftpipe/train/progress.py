"""The live view of `swift sft`: step/total, loss, elapsed and ETA read from swift's logging.jsonl."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

from swiftpipe.core import jsonl


class SftProgress:
    """Reads swift's logging.jsonl as it grows and shows step/total, loss, elapsed and ETA.

    It runs inside the training stage's loop: nothing it reads may stop training, so a malformed
    line (a loss that is not a number, a partial line) is skipped, never raised.
    """

    def __init__(self, logging_jsonl: Path, out=None, *, from_end: bool = False):
        self.log = jsonl.Follower(logging_jsonl, from_end=from_end)
        self.last: Optional[str] = None
        self.out = out or sys.stdout
        self.tty = self.out.isatty()

    def __call__(self) -> None:
        for entry in self.log.new():
            if isinstance(entry, dict) and "loss" in entry and "global_step/max_steps" in entry:
                self.show(entry)

    @staticmethod
    def line(entry: dict) -> Optional[str]:
        """The progress line of one log entry; None when the entry is not one swift would write."""
        step, _, total = str(entry.get("global_step/max_steps")).partition("/")
        try:
            loss = float(entry["loss"])
        except (TypeError, ValueError):
            return None
        pct = int(step) * 100 // max(int(total), 1) if step.isdigit() and total.isdigit() else 0
        return (f"  sft {step}/{total} ({pct}%)  loss {loss:.4f}  "
                f"elapsed {entry.get('elapsed_time', '?')}  eta {entry.get('remaining_time', '?')}")

    def show(self, entry: dict) -> None:
        text = self.line(entry)
        if text is None:
            return
        try:
            self.out.write("\r" + text.ljust(78) if self.tty else text + "\n")
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away (SIGHUP): training goes on
            pass
        self.last = text

    def finish(self) -> None:
        if self.tty and self.last:
            with contextlib.suppress(OSError, ValueError):
                self.out.write("\n")
                self.out.flush()
