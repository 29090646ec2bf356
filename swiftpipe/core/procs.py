"""Child processes in their own process group, stopped on exit, error, Ctrl-C, SIGTERM, SIGHUP,
and even when swiftpipe itself is SIGKILLed.

`swift sft` and `vllm serve` are launchers that start a child python; signalling only the
launcher leaves that child running, so we always signal the whole group we created. Nothing runs
in a process that gets SIGKILL, so every child is started under `swiftpipe.core.childguard`, which
leads the group and stops it when swiftpipe goes away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Optional

from swiftpipe.core import console
from swiftpipe.core.childguard import group_members
from swiftpipe.core.errors import StageFailed

GUARD = Path(__file__).resolve().with_name("childguard.py")
GUARDED = hasattr(signal, "sigtimedwait")  # the guard needs it: Linux (macOS runs commands unguarded)
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def resolve_executable(name: str) -> str:
    """Prefer the tool installed beside our interpreter (the venv's `swift`, `vllm`), so a
    non-activated `.venv/bin/swiftpipe` still runs the venv's tools."""
    sibling = Path(sys.executable).parent / name
    return str(sibling) if "/" not in name and sibling.exists() else name


SECRET_ENV = ("SWIFTPIPE_API_KEY", "SWIFTPIPE_UPSTREAM_API_KEY")


def start(argv: list[str], env: dict[str, str], log_path: Path, cwd: Optional[Path] = None,
          *, grace: float = 10.0) -> subprocess.Popen:
    """Start `argv` under the child guard, in a new process group led by the guard.

    pgid == Popen.pid, so `stop` signals the guard and everything the command started. The
    returncode is the command's own (negative for a signal). If this process dies, even by
    SIGKILL, the guard SIGTERMs the group, and SIGKILLs it `grace` seconds later.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [resolve_executable(argv[0]), *argv[1:]]
    # The gateway's own keys never reach a child (vLLM gets its key in `env`, as VLLM_API_KEY).
    full_env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    full_env.update(env)
    if shutil.which(argv[0], path=full_env.get("PATH", os.defpath)) is None:
        # Found out here rather than by the guard, so the failure is immediate and says why.
        raise StageFailed(argv[0], 127, log_path, f"command not found: {argv[0]} (is the venv active?)")
    guard = [sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), str(grace), "--"] if GUARDED else []
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [*guard, *argv],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,  # own process group and session: pgid == pid
        )
    finally:
        log.close()


_watcher: Optional[subprocess.Popen] = None


def watch_descendants(grace: float = 5.0) -> None:
    """Make sure processes started by libraries inside this process (vLLM's offline engine core and
    workers, a local Ray cluster) end with it, even when it is SIGKILLed: a watcher in its own session
    notes them by pid and start time and stops them once this process is gone. Once per process."""
    global _watcher
    if _watcher is not None or not GUARDED:
        return
    _watcher = subprocess.Popen([sys.executable, "-I", "-S", str(GUARD), "--watch", str(os.getpid()), str(grace)],
                                stdin=subprocess.DEVNULL, start_new_session=True)


def call(argv: list[str], env: dict[str, str], log_path: Path, *, cwd: Optional[Path] = None,
         on_tick: Optional[Callable[[], None]] = None, tick: float = 1.0, grace: float = 10.0) -> int:
    """Run `argv` to completion and return its exit code (negative: killed by that signal).

    Any exception while waiting (Ctrl-C, `Terminated`) stops the whole group before it propagates,
    SIGKILLing it after `grace` seconds; after a normal exit nothing the command started is left
    running. A child `swiftpipe run` (sweep, reproduce) stops its own children in their own groups,
    so give it a longer grace than theirs.
    """
    proc = start(argv, env, log_path, cwd, grace=grace)
    callback = on_tick

    def tick_once() -> None:
        # A progress view reads other programs' output; whatever goes wrong in it must never stop
        # the child (it runs inside the `except BaseException: stop(proc)` below).
        nonlocal callback
        if callback is None:
            return
        try:
            callback()
        except Exception as exc:  # noqa: BLE001
            console.warn(f"progress display stopped ({type(exc).__name__}: {exc}); the stage goes on")
            callback = None

    try:
        with sigterm_as_interrupt():
            while True:
                try:
                    rc = proc.wait(timeout=tick)
                    break
                except subprocess.TimeoutExpired:
                    tick_once()
            tick_once()
    except BaseException:
        stop(proc, grace=grace)
        raise
    # The guard already stopped what the command left behind; this is a second line of defence.
    if _group_alive(proc.pid):
        stop(proc, grace=2.0)
    return rc


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
    """Whether a live process of the group is left (zombies waiting for init do not count)."""
    if os.path.isdir("/proc"):
        return bool(group_members(pgid))
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into the same clean-up path as Ctrl-C (`finally`, `except
    BaseException`, context managers). `signame` says which ("SIGTERM", "SIGHUP")."""

    def __init__(self, signame: str = "SIGTERM"):
        super().__init__(signame)
        self.signame = signame


_Terminated = Terminated  # the old private name


class _Raiser:
    """Signal handler that raises `Terminated` once. A second SIGTERM/SIGHUP (a dropped SSH session
    delivers SIGHUP twice: from the shell, then from the kernel) would otherwise interrupt the
    clean-up that the first one started; SIGKILL stays the way to force an exit."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            drop_hung_up_terminal()
        if not self.fired:
            self.fired = True
            raise Terminated(signal.Signals(signum).name)


def interrupt_signame(exc: Optional[BaseException]) -> Optional[str]:
    """"SIGTERM"/"SIGHUP" if `exc` is, wraps or was raised while handling a `Terminated`; else None
    (Ctrl-C). click turns KeyboardInterrupt into Abort, keeping the original as __context__."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return exc.signame
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def handle_termination_signals() -> None:
    """Make SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt) for the rest of the process.

    Call once at start-up of the CLI: without it SIGHUP (closed terminal, dropped SSH) kills Python
    on the spot, with no clean-up at all. Only possible in the main thread.
    """
    raiser = _Raiser()
    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, raiser)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated`; the previous handlers come back
    after it. A no-op outside the main thread (Python only handles signals there)."""
    current = signal.getsignal(signal.SIGTERM)
    raiser = current if isinstance(current, _Raiser) else _Raiser()  # nested: keep the one that may have fired
    try:
        previous = {sig: signal.signal(sig, raiser) for sig in TERMINATION_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def drop_hung_up_terminal() -> None:
    """Point stdin/stdout/stderr at /dev/null where they are a terminal that has hung up.

    After a hangup every write to the terminal fails with EIO, including Python's own flush at
    exit and click's messages, which would turn a clean shutdown into tracebacks and exit code 120.
    A hung-up terminal is still a character device but no longer answers isatty() (TCGETS fails
    with EIO), which tells it from a live one (a SIGHUP sent by hand leaves the terminal alone).
    """
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        null_dev = os.fstat(devnull).st_rdev
    except OSError:
        return
    try:
        for fd in (0, 1, 2):
            try:
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev != null_dev and not os.isatty(fd):
                    os.dup2(devnull, fd)
            except OSError:
                continue
    finally:
        os.close(devnull)


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
    rc = call(argv, env, log_path, on_tick=on_tick, tick=tick)
    if rc != 0:
        raise StageFailed(stage, rc, log_path, tail(log_path))
