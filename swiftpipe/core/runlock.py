"""One process at a time per run directory, and telling a live run from an interrupted one.

`<run>/run.lock` is held with flock(LOCK_EX | LOCK_NB) while a process works on the run. The OS
releases the lock when the holder dies, however it dies (SIGKILL and the OOM killer included), so
there is never a stale lock to clean up by hand. The file holds the holder's pid, process start
time, host and command line, only to say who holds it; the lock itself is the truth. The file is
never deleted: deleting it would let a second process lock a new file while the first one still
holds the old one.

run.json says "running sft" from the start of a stage until its end, which stays true forever if
the process is killed. The pipeline also records the `owner()` of the run there, so
`effective_status` can say `interrupted (at stage sft)` when that owner is gone. A pid alone is not
enough, as pids are reused: the start time of the process has to match as well.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from swiftpipe.core.errors import SwiftpipeError

LOCK_NAME = "run.lock"


class RunLocked(SwiftpipeError):
    """Another live process holds the run directory's lock."""


def process_start_time(pid: int) -> Optional[int]:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat field 22); None if there is no
    such (live) process. Identifies a process together with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name in (...) may contain spaces
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return _psutil_start_time(pid)
    if fields[0] in (b"Z", b"X"):  # field 3, the state: a zombie has finished
        return None
    return int(fields[19])  # field 22


def _psutil_start_time(pid: int) -> Optional[int]:
    """Where /proc is missing or unreadable (macOS, hardened /proc): psutil, if installed."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else int(proc.create_time() * 100)
    except Exception:  # ImportError, NoSuchProcess, AccessDenied
        return None


def owner(pid: Optional[int] = None) -> dict[str, Any]:
    """{pid, start_time, host} of this process (or `pid`): what run.json records as "owner"."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_time": process_start_time(pid), "host": socket.gethostname()}


def owner_alive(info: Optional[dict]) -> bool:
    """Whether the process described by `info` (an `owner()` dict) still runs.

    False when the pid is gone or now belongs to another process (different start time). A process
    on another host cannot be checked from here and counts as alive, so a run on a shared
    filesystem is never called interrupted by mistake.
    """
    if not info or not info.get("pid"):
        return False
    if info.get("host") and info["host"] != socket.gethostname():
        return True
    started = process_start_time(int(info["pid"]))
    return started is not None and (info.get("start_time") is None or started == info["start_time"])


def effective_status(run_json: dict) -> str:
    """run.json's status, except that "running X" whose owner is dead reads "interrupted (at stage X)".

    Runs written before the owner field existed keep their status: nothing says whether they run.
    """
    status = str(run_json.get("status", "?"))
    if status.startswith("running ") and run_json.get("owner") and not owner_alive(run_json["owner"]):
        return f"interrupted (at stage {status[len('running '):]})"
    return status


def holder(run_dir: Path, name: str = LOCK_NAME) -> Optional[dict]:
    """Who the lock file says holds (or last held) the run's lock, or None. Only a hint: check it
    with `owner_alive`. Reading does not touch the lock, so it never gets in the way of a taker."""
    try:
        text = (Path(run_dir) / name).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


class RunLock:
    """`with RunLock(run_dir):` work on the run; raises RunLocked if another process does already.

    `name` is the lock file in `run_dir`; separate names give separate locks (the machines of a
    multi-node run share the directory, each with its own lock: "run.node1.lock", ...).

    The lock belongs to this process only: files are opened close-on-exec, so children (swift,
    vLLM) do not inherit it, and it goes away with us even if a child lingers.
    """

    def __init__(self, run_dir: Path, name: str = LOCK_NAME):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self._file: Optional[TextIO] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # "a+": do not truncate the holder's record
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLocked(self._conflict_message(holder(self.run_dir, self.path.name))) from None
        except BaseException:
            f.close()
            raise
        record = {**owner(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(record) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)  # no record is left for a lock nobody holds
            self._file.close()  # closing releases the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _conflict_message(self, info: Optional[dict]) -> str:
        name = self.run_dir
        if not info:
            return f"run {name} is being worked on by another process; wait for it or stop it"
        pid = info.get("pid")
        argv = list(info.get("argv") or ["?"])
        argv[0] = Path(argv[0]).name
        if argv[0] in ("cli.py", "__main__.py"):  # python -m swiftpipe.cli ...
            argv[0] = "swiftpipe"
        command = " ".join(argv)
        where = f" on host {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
        return (f"run {name} is being worked on by pid {pid}{where} ({command}), started at "
                f"{info.get('started_at', '?')}; wait for it or stop it with `kill {pid}`")
