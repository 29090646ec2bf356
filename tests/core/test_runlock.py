"""The run lock: one process per run directory, the holder named, a dead holder's lock free again."""

import os
import socket
import subprocess
import sys

import pytest

from swiftpipe.core import runlock
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.runlock import RunLock, RunLocked, effective_status, owner, owner_alive
from tests.helpers import Lines, wait_for


def _holder(run_dir) -> subprocess.Popen:
    """Another process that takes the run's lock and keeps it."""
    code = (
        "import sys, time\nfrom swiftpipe.core.runlock import RunLock\n"
        f"with RunLock({str(run_dir)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "recipe.yaml"], stdout=subprocess.PIPE, text=True)
    try:
        Lines(proc.stdout).until(lambda line: line.strip() == "locked", 60, "the holder to take the lock")
    except BaseException:
        proc.kill()
        proc.wait(timeout=20)
        raise
    return proc


def test_second_process_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLocked) as info:
            with RunLock(tmp_path / "run"):
                pass
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and f"kill {holder.pid}" in msg
        assert "run recipe.yaml" in msg  # the holder's command line
        assert isinstance(info.value, SwiftpipeError)  # the CLI prints it without a traceback
        assert runlock.holder(tmp_path / "run")["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=20)


def test_lock_of_a_sigkilled_holder_can_be_taken(tmp_path):
    holder = _holder(tmp_path / "run")
    holder.kill()  # no clean-up runs: the OS drops the flock with the process
    holder.wait(timeout=20)
    with RunLock(tmp_path / "run") as lock:
        assert runlock.holder(tmp_path / "run")["pid"] == os.getpid()
        assert lock.path.name == "run.lock"
    assert runlock.holder(tmp_path / "run") is None  # released: no record left
    with RunLock(tmp_path / "run"):  # and again
        pass


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=20)
    return proc.pid


def test_owner_alive():
    me = owner()
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname() and me["start_time"]
    assert owner_alive(me)
    assert not owner_alive({**me, "start_time": me["start_time"] + 1})  # pid reused by another process
    assert not owner_alive({**me, "pid": _dead_pid()})
    assert not owner_alive(None) and not owner_alive({})
    assert owner_alive({**me, "pid": _dead_pid(), "host": "some-other-host"})  # cannot tell: not "dead"


def zombie(pid: int) -> bool:
    """Exited but not reaped: /proc/PID/stat says state Z."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_owner_of_a_zombie_is_dead():
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: zombie(proc.pid), 20, "`true` to exit (not reaped yet)", every=0.05)
        assert runlock.process_start_time(proc.pid) is None
    finally:
        proc.wait(timeout=20)


def test_effective_status():
    me = owner()
    dead = {**me, "pid": _dead_pid()}
    reused = {**me, "start_time": me["start_time"] - 5}
    assert effective_status({"status": "running sft", "owner": dead}) == "interrupted (at stage sft)"
    assert effective_status({"status": "running eval-base", "owner": reused}) == "interrupted (at stage eval-base)"
    assert effective_status({"status": "running sft", "owner": me}) == "running sft"
    assert effective_status({"status": "done", "owner": dead}) == "done"
    assert effective_status({"status": "failed in export", "owner": dead}) == "failed in export"
    assert effective_status({"status": "running sft"}) == "running sft"  # runs from before the owner field
    assert effective_status({}) == "?"


def test_locks_with_other_names_are_independent(tmp_path):
    """The machines of a multi-node run share the run directory, each with its own lock."""
    with RunLock(tmp_path, name="run.node1.lock"):
        with RunLock(tmp_path):
            with pytest.raises(RunLocked):
                RunLock(tmp_path, name="run.node1.lock").acquire()
        assert runlock.holder(tmp_path, "run.node1.lock")["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock", "run.node1.lock"]
