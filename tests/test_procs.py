import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from swiftpipe.core import procs
from swiftpipe.core.errors import StageFailed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_failure_names_stage_log_and_tail(tmp_path):
    log = tmp_path / "logs" / "x.log"
    with pytest.raises(StageFailed) as info:
        procs.run_stage("sft", ["bash", "-c", "for i in $(seq 1 40); do echo line$i; done; exit 3"], {}, log)
    msg = str(info.value)
    assert "stage 'sft' failed (exit code 3)" in msg and str(log) in msg
    assert "line40" in msg and "line1\n" not in msg  # only the tail


def test_missing_executable_is_a_stage_failure(tmp_path):
    with pytest.raises(StageFailed, match="command not found"):
        procs.run_stage("sft", ["no-such-binary-xyz"], {}, tmp_path / "l.log")


def test_interrupt_stops_whole_process_group(tmp_path):
    """A launcher that starts a grandchild (like `swift sft`): both are gone after Ctrl-C."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    main_thread = threading.main_thread().ident

    def interrupt():
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.05)
        signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        procs.run_stage("sft", ["bash", "-c", script], {}, tmp_path / "l.log", tick=0.1)
    grandchild = int(pidfile.read_text())
    deadline = time.time() + 5
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_sigterm_to_us_stops_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (
        "from pathlib import Path; from swiftpipe.core import procs\n"
        f"procs.run_stage('sft', ['bash', '-c', 'sleep 300 & echo $! > {pidfile}; wait'], {{}}, Path('{tmp_path}/l.log'))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=20) != 0
    child = int(pidfile.read_text())
    time.sleep(0.5)
    assert not _alive(child)


def test_tail_of_missing_log(tmp_path):
    assert procs.tail(tmp_path / "none.log") == "(no log written)"


# ------------------------------------------------ children never outlive swiftpipe (childguard)

LAUNCHER = "echo $$ > {d}/launcher.pid; sleep 300 & echo $! > {d}/grandchild.pid; wait"


def _wait_for_pids(directory, names=("launcher.pid", "grandchild.pid"), timeout=20.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        texts = [(directory / n).read_text().strip() if (directory / n).exists() else "" for n in names]
        if all(texts):
            return [int(t) for t in texts]
        time.sleep(0.05)
    raise AssertionError(f"{names} not written within {timeout}s")


def _gone_within(pids, seconds: float) -> float:
    """Seconds until none of `pids` is alive; fails after `seconds`."""
    started = time.time()
    while any(_alive(p) for p in pids):
        assert time.time() - started < seconds, f"still alive after {seconds}s: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)
    return time.time() - started


def _parent(code: str, **kwargs) -> subprocess.Popen:
    """A python process standing in for swiftpipe."""
    prelude = "import sys, time\nfrom pathlib import Path\nfrom swiftpipe.core import console, procs\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], **kwargs)


@pytest.mark.parametrize("how", ["run_stage", "start"])
def test_sigkill_of_parent_stops_child_and_grandchild(tmp_path, how):
    """kill -9 / OOM killer: no clean-up code runs in the parent, the guard stops the group."""
    script = LAUNCHER.format(d=tmp_path)
    if how == "run_stage":
        code = f"procs.run_stage('sft', ['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}))"
    else:  # how a vLLM server is held
        code = f"procs.start(['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}))\ntime.sleep(300)"
    parent = _parent(code)
    pids = _wait_for_pids(tmp_path)
    parent.kill()
    parent.wait()
    assert _gone_within(pids, 10) < 10


def test_sighup_to_parent_stops_children_via_keyboard_interrupt_path(tmp_path):
    """A closed terminal or dropped SSH session: SIGHUP runs the same clean-up as Ctrl-C."""
    script = LAUNCHER.format(d=tmp_path)
    code = (
        "procs.handle_termination_signals()\n"
        "try:\n"
        f"    procs.run_stage('sft', ['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}))\n"
        "except KeyboardInterrupt as exc:\n"
        "    console.error(f'interrupted by {exc.signame}')\n"
        "    sys.exit(130)\n"
    )
    parent = _parent(code, stderr=subprocess.PIPE, text=True)
    pids = _wait_for_pids(tmp_path)
    parent.send_signal(signal.SIGHUP)
    _, err = parent.communicate(timeout=20)
    assert parent.returncode == 130
    assert "interrupted by SIGHUP" in err
    assert not any(_alive(p) for p in pids)  # stopped before the parent exited


def test_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    script = 'trap "" TERM; ' + LAUNCHER.format(d=tmp_path)
    code = f"procs.start(['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}), grace=3)\ntime.sleep(300)"
    parent = _parent(code)
    pids = _wait_for_pids(tmp_path)
    parent.kill()
    parent.wait()
    time.sleep(1.5)
    assert all(_alive(p) for p in pids)  # SIGTERMed, ignored it, still inside the grace
    assert _gone_within(pids, 10) < 10


def test_guard_waits_for_the_command_when_the_group_is_stopped(tmp_path):
    """procs.stop signals the group: the guard must not exit before the command it reports on."""
    proc = procs.start(["bash", "-c", f"trap 'sleep 1; exit 5' TERM; echo $$ > {tmp_path}/launcher.pid; "
                                      "while :; do sleep 0.1; done"], {}, tmp_path / "l.log")
    assert os.getpgid(proc.pid) == proc.pid  # the guard leads the group, as procs.stop expects
    (launcher,) = _wait_for_pids(tmp_path, ("launcher.pid",))
    started = time.time()
    procs.stop(proc)
    assert proc.returncode == 5 and time.time() - started >= 0.9
    assert not _alive(launcher)


def test_exit_code_passes_through_the_guard(tmp_path):
    assert procs.call(["bash", "-c", "exit 7"], {}, tmp_path / "l.log") == 7
    assert procs.call(["bash", "-c", "kill -9 $$"], {}, tmp_path / "l.log") == -9  # as Popen reports a signal
    assert procs.call(["bash", "-c", "exit 0"], {}, tmp_path / "l.log") == 0
    with pytest.raises(StageFailed, match=r"stage 'export' failed \(exit code 7\)"):
        procs.run_stage("export", ["bash", "-c", "echo bad >&2; exit 7"], {}, tmp_path / "l.log")


def test_command_left_behind_by_a_finished_command_is_stopped(tmp_path):
    assert procs.call(["bash", "-c", LAUNCHER.replace("; wait", "").format(d=tmp_path)], {}, tmp_path / "l.log") == 0
    assert not _alive(_wait_for_pids(tmp_path)[1])


def test_command_not_found_is_stage_failure_127(tmp_path):
    with pytest.raises(StageFailed) as info:
        procs.run_stage("sft", ["no-such-binary-xyz"], {}, tmp_path / "l.log")
    assert info.value.returncode == 127
    assert "command not found: no-such-binary-xyz (is the venv active?)" in str(info.value)


def test_guard_reports_exec_failure_itself(tmp_path):
    result = subprocess.run([sys.executable, "-m", "swiftpipe.core.childguard", str(os.getpid()), "1", "--",
                             "no-such-binary-xyz"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 127
    assert "childguard: command not found: no-such-binary-xyz" in result.stderr


def test_output_after_terminal_hangup_does_not_fail(tmp_path):
    """After SIGHUP from a closed terminal, writes to it fail with EIO; clean-up must go on."""
    import pty

    marker = tmp_path / "cleaned-up"
    code = (
        "import os, time\nfrom swiftpipe.core import console, procs\n"
        "procs.handle_termination_signals()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt as exc:\n"
        "    console.error(f'interrupted by {exc.signame}')\n"
        "    print('a plain print after the hangup', flush=True)\n"
        f"    open({str(marker)!r}, 'w').write(exc.signame)\n"
        "    raise SystemExit(130)\n"
    )
    pid, master = pty.fork()  # the child gets the pty as its controlling terminal
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", code])
    output = b""
    while b"ready" not in output:
        output += os.read(master, 100)
    os.close(master)  # hang up: the kernel sends SIGHUP to the terminal's session
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130  # not 120 (failed flush at exit) or 1 (traceback)
    assert marker.read_text() == "SIGHUP"


def test_interrupt_signame_survives_clicks_abort():
    import click

    try:
        try:
            raise procs.Terminated("SIGHUP")
        except KeyboardInterrupt as exc:
            raise click.exceptions.Abort() from exc  # what click does with a KeyboardInterrupt
    except click.exceptions.Abort as exc:
        assert procs.interrupt_signame(exc) == "SIGHUP"
    assert procs.interrupt_signame(KeyboardInterrupt()) is None  # Ctrl-C
    assert isinstance(procs.Terminated("SIGTERM"), KeyboardInterrupt)


def test_child_survives_the_end_of_the_thread_that_started_it(tmp_path):
    """PR_SET_PDEATHSIG fires when the starting *thread* ends; the guard must check its parent."""
    started = []

    def start_and_end():
        started.append(procs.start(["bash", "-c", LAUNCHER.format(d=tmp_path)], {}, tmp_path / "l.log"))
        _wait_for_pids(tmp_path)  # the guard has set PR_SET_PDEATHSIG by now; then this thread ends

    thread = threading.Thread(target=start_and_end)
    thread.start()
    thread.join()
    pids = _wait_for_pids(tmp_path)
    time.sleep(1.0)  # several polls of the guard
    assert all(_alive(p) for p in pids) and started[0].poll() is None
    procs.stop(started[0])
    assert not any(_alive(p) for p in pids)
