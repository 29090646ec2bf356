"""`swiftpipe serve --workers N`: N gateway processes answering on one address.

The supervisor (the `serve` process, which also owns the vLLM servers) binds N listening sockets to
the one address with SO_REUSEPORT and forks N workers, one socket each: the kernel spreads new
connections over the sockets by a hash of the client's address and port. (One shared socket would
not spread them: epoll wakes the most recently waiting worker first, so at low load one worker
takes every connection, the "one NGINX worker takes all the load" effect.) The supervisor keeps
every socket open, so connections queued for a worker that dies wait for its replacement. Each
worker has its own event loop, its own database connections and its own group-commit log writer,
and shares everything else through the database: keys, weights and the per-key rate windows
(`keys.SharedRateLimiter`). Workers stay in the supervisor's process group and die with it
(PR_SET_PDEATHSIG). SIGTERM, SIGINT or SIGHUP to the supervisor stops every worker (each drains
like a single gateway) before the vLLM servers go; a worker that dies on its own is restarted.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Optional

from swiftpipe.core import console

RESTART_PAUSE_S = 1.0  # between a worker's death and its replacement
READY_TIMEOUT_S = 120.0


def bind(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """`count` listening sockets on one address (port 0: one free port for all), one per worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None and count > 1:
        raise OSError("--workers needs SO_REUSEPORT (Linux, macOS, the BSDs); run one worker per port instead")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port is not None:
                sock.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # the next sockets join the port the first one got
            sock.listen(backlog)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's stop still reaches them
        pass


def _worker(sock: socket.socket, serve_one: Callable[[socket.socket, Callable[[], None]], None], ready_fd: int,
            supervisor: int) -> None:
    """In the forked child: serve until told to stop; never returns."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != supervisor:  # the supervisor died before prctl took effect
            os._exit(1)

        def ready() -> None:
            os.write(ready_fd, b"r")

        serve_one(sock, ready)
        code = 0
    except KeyboardInterrupt:  # uvicorn re-raises the signal it stopped on
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a worker reports and exits; the supervisor restarts it
        print(f"gateway worker {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(sockets: list[socket.socket], serve_one: Callable[[socket.socket, Callable[[], None]], None],
        announce: Callable[[], None]) -> Optional[str]:
    """Start one process per socket, each running `serve_one(its socket, ready)`; announce once all are
    ready; supervise until a stop signal. Returns the signal's name (None: every worker failed to start)."""
    workers = len(sockets)
    read_fd, write_fd = os.pipe()
    alive: dict[int, int] = {}  # pid -> the index of its socket
    stopping: list[str] = []
    supervisor = os.getpid()

    def spawn(slot: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for i, other in enumerate(sockets):  # a worker listens on its own socket only
                if i != slot:
                    other.close()
            _worker(sockets[slot], serve_one, write_fd, supervisor)
        alive[pid] = slot

    def stop(signum: int, frame: Any) -> None:
        if not stopping:
            stopping.append(signal.Signals(signum).name if signum != signal.SIGINT else "Ctrl-C")
        for pid in list(alive):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for slot in range(workers):
            spawn(slot)
        ready, deadline = 0, time.monotonic() + READY_TIMEOUT_S
        while ready < workers and not stopping and time.monotonic() < deadline:
            if _reap(alive, stopping):  # a worker died before it was ready: start-up failed
                stop(signal.SIGTERM, None)
                stopping[:] = []
                break
            try:
                if select.select([read_fd], [], [], 0.2)[0]:
                    ready += len(os.read(read_fd, 64))
            except InterruptedError:
                continue
        if ready < workers:
            _wait_all(alive)
            return stopping[0] if stopping else None
        announce()
        console.say(f"  {workers} gateway workers (pids {', '.join(map(str, alive))}) share this address")
        while alive:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in alive:
                continue
            slot = alive.pop(pid)
            if not stopping:
                how = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                       if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}")
                console.warn(f"gateway worker {pid} ended ({how}); starting another")
                time.sleep(RESTART_PAUSE_S)
                if not stopping:
                    spawn(slot)
        return stopping[0] if stopping else "shutdown"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)
        for sock in sockets:
            sock.close()


def _reap(alive: dict[int, int], stopping: list[str]) -> bool:
    """Collect workers that ended; True when one did (before all were ready)."""
    ended = False
    for pid in list(alive):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            del alive[pid]
            ended = True
    return ended


def _wait_all(alive: dict[int, int], grace: float = 15.0) -> None:
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        _reap(alive, [])
        time.sleep(0.05)
    for pid in list(alive):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        del alive[pid]
