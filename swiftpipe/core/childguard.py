"""A tiny supervisor that makes sure a child command never outlives swiftpipe.

    python -m swiftpipe.core.childguard PARENT_PID GRACE_SECONDS -- COMMAND [ARG...]
    python -m swiftpipe.core.childguard --watch PARENT_PID GRACE_SECONDS   (see `watch`)

Why: swiftpipe cleans up its children on Ctrl-C, SIGTERM and SIGHUP, but nothing runs in a process
that gets SIGKILL (kill -9, the OOM killer). `swift sft` and `vllm serve` are launchers that start a
child python, and PR_SET_PDEATHSIG is not inherited by such grandchildren, so the children of a
killed swiftpipe used to keep running (a vLLM server holding the port and the memory).

`procs.start` runs this guard with start_new_session=True, so the guard leads a new process group
(pgid == guard pid == Popen.pid) and starts COMMAND in that same group; `procs.stop` keeps
signalling the whole group. The guard:

- polls its parent (os.getppid() != PARENT_PID means swiftpipe is gone; PR_SET_PDEATHSIG only
  wakes it early, as it fires when the *thread* that started the guard exits, not the process),
  then SIGTERMs the group, waits GRACE_SECONDS and SIGKILLs whatever is left (itself included);
- exits like COMMAND: the same exit code, or the same signal, re-raised on itself, so the caller's
  Popen.returncode is what it would have been without the guard;
- after COMMAND exits on its own, stops what COMMAND left behind in the group before exiting;
- on SIGTERM/SIGINT/SIGHUP (procs.stop signals the group, so COMMAND got the signal too) does not
  forward it (a second SIGINT makes uvicorn force-exit), but waits for COMMAND up to GRACE_SECONDS
  and then SIGKILLs the group.

Stdlib only and nothing else imported, so it starts in a few milliseconds. Linux only
(signal.sigtimedwait, /proc); elsewhere procs.start runs commands without it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL = 0.25  # seconds between checks of the parent
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {signal.SIGCHLD, signal.SIGUSR1, *STOP_SIGNALS}


def group_members(pgid: int) -> list[int]:
    """Live processes of group `pgid`, the calling process excluded. Zombies do not count: killed
    orphans wait for init to reap them, which can take a second or more."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # the name in (...) may hold anything
            if int(fields[2]) == pgid and fields[0] != b"Z":  # [0] is field 3 (state), [2] is 5 (pgrp)
                found.append(int(entry))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def _wake_on_parent_death() -> None:
    """Fast path: get SIGUSR1 when the parent goes (polling stays the source of truth)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGUSR1), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Guard:
    def __init__(self, parent: int, grace: float, argv: list[str]):
        self.parent, self.grace, self.argv = parent, grace, argv
        self.pgid = os.getpgrp()
        self.child: int | None = None
        self.status: int | None = None  # wait status of the child once reaped

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)  # handled in one loop by sigtimedwait
        _wake_on_parent_death()
        if os.getppid() != self.parent:  # swiftpipe died before we got here
            return 1
        try:
            self.child = os.posix_spawnp(
                self.argv[0], self.argv, os.environ,
                setsigmask=(),  # the mask is inherited through exec: give the command a clean one
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these; Popen restores them too
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            what = "command not found" if code == 127 else f"cannot run command ({exc.strerror})"
            print(f"childguard: {what}: {self.argv[0]}", file=sys.stderr, flush=True)
            return code
        return self.supervise()

    def reap(self) -> bool:
        if self.status is None and self.child is not None:
            pid, status = os.waitpid(self.child, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def supervise(self) -> int:
        while not self.reap():
            sig = signal.sigtimedwait(WATCHED, POLL)
            if os.getppid() != self.parent:
                os.killpg(self.pgid, signal.SIGTERM)  # the guard's own copy stays blocked and pending
                self.wait_group(self.grace)
                return self.exit_code()
            if sig is not None and sig.si_signo in STOP_SIGNALS:
                self.wait_group(self.grace)
                return self.exit_code()
        if group_members(self.pgid):  # the command exited but left processes behind
            os.killpg(self.pgid, signal.SIGTERM)
            self.wait_group(self.grace)
        return self.exit_code()

    def wait_group(self, seconds: float) -> None:
        """Wait until the child and the rest of the group are gone; SIGKILL the group after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.reap() and not group_members(self.pgid):
                return
            signal.sigtimedwait(WATCHED, 0.1)
        # One by one, not killpg: the guard must live to report the command's exit. Repeat in case
        # something forked in between.
        for _ in range(50):
            left = group_members(self.pgid)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            signal.sigtimedwait(WATCHED, 0.05)
        if self.child is not None and self.status is None:
            _, self.status = os.waitpid(self.child, 0)

    def exit_code(self) -> int:
        if self.status is None:
            return 1
        if os.WIFSIGNALED(self.status):
            return -os.WTERMSIG(self.status)
        return os.waitstatus_to_exitcode(self.status)


def exit_like(code: int) -> None:
    """Exit with `code`; a negative code means "killed by signal -code": re-raise it on ourselves."""
    if code >= 0:
        sys.exit(code)
    sig = -code
    sys.stdout.flush(), sys.stderr.flush()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSEGV/SIGABRT: no core file of the guard
    except (ImportError, ValueError, OSError):
        pass
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)  # a signal whose default is not to terminate


def _stat(pid: int) -> tuple[int, bytes] | None:
    """(parent pid, start time) of a live process, None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), fields[19]  # field 4 (ppid) and field 22 (starttime)


def descendants(root: int) -> dict[int, bytes]:
    """pid -> start time of every live descendant of `root` (the calling process left out)."""
    tree: dict[int, list[tuple[int, bytes]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and int(entry) != os.getpid():
            got = _stat(int(entry))
            if got:
                tree.setdefault(got[0], []).append((int(entry), got[1]))
    found: dict[int, bytes] = {}
    todo = [root]
    while todo:
        for pid, started in tree.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def watch(parent: int, grace: float) -> int:
    """For processes that swiftpipe does not start itself (vLLM's offline engine spawns its engine
    core and workers; a local Ray cluster its daemons): note the descendants of `parent` while it
    lives; once it is gone (SIGKILL included), SIGTERM those still running, SIGKILL them after
    `grace` seconds. Processes are matched by pid *and* start time, so a reused pid is left alone."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    _wake_on_parent_death()
    known: dict[int, bytes] = {}
    while os.getppid() == parent:
        known = {pid: st for pid, st in known.items() if (_stat(pid) or (0, b""))[1] == st}
        known.update(descendants(parent))
        signal.sigtimedwait(WATCHED, POLL)
    alive = [pid for pid, st in known.items() if (_stat(pid) or (0, b""))[1] == st]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            alive = [pid for pid in alive if (_stat(pid) or (0, b""))[1] == known[pid]]
            if not alive:
                return 0
            signal.sigtimedwait(WATCHED, 0.1)
    return 0


def main(args: list[str]) -> None:
    if len(args) == 3 and args[0] == "--watch":
        sys.exit(watch(int(args[1]), float(args[2])))
    if len(args) < 4 or args[2] != "--":
        sys.exit("usage: python -m swiftpipe.core.childguard PARENT_PID GRACE_SECONDS -- COMMAND [ARG...]")
    exit_like(Guard(int(args[0]), float(args[1]), args[3:]).run())


if __name__ == "__main__":
    main(sys.argv[1:])
