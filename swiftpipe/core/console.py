"""The one way swiftpipe talks to the user: `say` (stdout), `warn` and `error` (stderr).

Output is flushed at once (children's logs and our lines interleave correctly in a shared
terminal or log), and writing never raises: after SIGHUP the terminal is gone, and a message that
cannot be shown must not turn a clean shutdown into a traceback.

Each command registers how it is continued after an interruption (`resume_hint`); the CLI prints
it on Ctrl-C, SIGTERM or SIGHUP, and a run also writes it to its log.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, TextIO

_resume_hint: Optional[str] = None


def _write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # EIO / EPIPE after a hang-up, or a closed stream
        # From now on this stream goes to /dev/null: Python's own flush at exit would fail the same way.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def say(text: str = "") -> None:
    _write(sys.stdout, text)


def warn(text: str) -> None:
    _write(sys.stderr, f"warning: {text}")


def error(text: str) -> None:
    _write(sys.stderr, f"error: {text}")


def resume_hint(text: Optional[str]) -> None:
    """How the running command is continued after an interruption (None: nothing to continue)."""
    global _resume_hint
    _resume_hint = text


def current_resume_hint() -> Optional[str]:
    return _resume_hint
