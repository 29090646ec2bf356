"""Child processes in their own process group, stopped on exit, error, Ctrl-C and SIGTERM.

`swift sft` and `vllm serve` are launchers that start a child python; signalling only the
launcher leaves that child running, so we always signal the whole group we created.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Optional

from swiftpipe.errors import StageFailed


def resolve_executable(name: str) -> str:
    """Prefer the tool installed beside our interpreter (the venv's `swift`, `vllm`), so a
    non-activated `.venv/bin/swiftpipe` still runs the venv's tools."""
    sibling = Path(sys.executable).parent / name
    return str(sibling) if "/" not in name and sibling.exists() else name


def start(argv: list[str], env: dict[str, str], log_path: Path, cwd: Optional[Path] = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [resolve_executable(argv[0]), *argv[1:]]
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,  # own process group: pgid == pid
        )
    except FileNotFoundError:
        raise StageFailed(argv[0], 127, log_path, f"command not found: {argv[0]} (is the venv active?)") from None
    finally:
        log.close()


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after `grace` seconds."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return "(no log written)"


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into the same clean-up path as Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(
    stage: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    on_tick: Optional[Callable[[], None]] = None,
    tick: float = 1.0,
) -> None:
    """Run one child to completion; raise StageFailed (with the log's tail) on a non-zero exit."""
    proc = start(argv, env, log_path)
    try:
        with sigterm_as_interrupt():
            while True:
                try:
                    rc = proc.wait(timeout=tick)
                    break
                except subprocess.TimeoutExpired:
                    if on_tick:
                        on_tick()
            if on_tick:
                on_tick()
    except BaseException:
        stop(proc)
        raise
    # The launcher is gone; make sure no grandchild of ours outlives it.
    if _group_alive(proc.pid):
        stop(proc, grace=2.0)
    if rc != 0:
        raise StageFailed(stage, rc, log_path, tail(log_path))
