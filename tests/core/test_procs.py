"""Running stages as child processes: failures named with their log, Ctrl-C / SIGTERM / SIGHUP / SIGKILL
stop the whole group (the guard, childguard), and processes libraries start end with swiftpipe."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from swiftpipe.core import procs
from swiftpipe.core.errors import StageFailed
from tests.helpers import REPO, Lines, processes_mentioning, wait_for


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
    problems = []

    def interrupt():
        try:
            wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, f"{pidfile}", every=0.05)
        except AssertionError as exc:
            problems.append(exc)
        finally:  # Ctrl-C in any case, so that a launcher that never wrote its pid does not hang the test
            signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        procs.run_stage("sft", ["bash", "-c", script], {}, tmp_path / "l.log", tick=0.1)
    assert not problems, problems
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not _alive(grandchild), 5, f"the grandchild {grandchild} to end")


def test_sigterm_to_us_stops_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (
        "from pathlib import Path; from swiftpipe.core import procs\n"
        f"procs.run_stage('sft', ['bash', '-c', 'sleep 300 & echo $! > {pidfile}; wait'], {{}}, Path('{tmp_path}/l.log'))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, f"{pidfile}")
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) != 0
    finally:
        parent.kill()
        parent.wait(timeout=20)
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 5, f"the child {child} to end")


def test_tail_of_missing_log(tmp_path):
    assert procs.tail(tmp_path / "none.log") == "(no log written)"


def test_a_progress_callback_that_raises_does_not_stop_the_stage(tmp_path):
    calls = []

    def broken_tick():
        calls.append(1)
        raise ValueError("could not convert string to float: 'abc'")

    # the stage sleeps on purpose: it runs for several ticks of 0.1 s
    procs.run_stage("sft", ["bash", "-c", "sleep 0.5; echo trained"], {}, tmp_path / "l.log", on_tick=broken_tick,
                    tick=0.1)
    assert calls and "trained" in (tmp_path / "l.log").read_text()


# ------------------------------------------------ children never outlive swiftpipe (childguard)

LAUNCHER = "echo $$ > {d}/launcher.pid; sleep 300 & echo $! > {d}/grandchild.pid; wait"


def _wait_for_pids(directory, names=("launcher.pid", "grandchild.pid"), timeout=20.0) -> list[int]:
    def written():
        texts = [(directory / n).read_text().strip() if (directory / n).exists() else "" for n in names]
        return all(texts) and [int(t) for t in texts]

    return wait_for(written, timeout, f"{names} to be written", every=0.05)


def _gone_within(pids, seconds: float) -> float:
    """Seconds until none of `pids` is alive; fails after `seconds`."""
    started = time.monotonic()
    wait_for(lambda: not any(_alive(p) for p in pids), seconds, f"the processes {pids} to end", every=0.05)
    return time.monotonic() - started


def _parent(code: str, **kwargs) -> subprocess.Popen:
    """A python process standing in for swiftpipe."""
    prelude = "import sys, time\nfrom pathlib import Path\nfrom swiftpipe.core import console, procs\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], **kwargs)


def _sigkill_once_started(code: str, directory) -> list[int]:
    """Run `code` in a stand-in parent, wait for its launcher's pid files in `directory`, SIGKILL the
    parent (kill -9, the OOM killer: no clean-up code runs in it); the pids of the launcher and grandchild."""
    parent = _parent(code)
    try:
        return _wait_for_pids(directory)
    finally:
        parent.kill()
        parent.wait(timeout=20)


@pytest.mark.parametrize("how", ["run_stage", "start"])
def test_sigkill_of_parent_stops_child_and_grandchild(tmp_path, how):
    """kill -9 / OOM killer: no clean-up code runs in the parent, the guard stops the group."""
    script = LAUNCHER.format(d=tmp_path)
    if how == "run_stage":
        code = f"procs.run_stage('sft', ['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}))"
    else:  # how a vLLM server is held
        code = f"procs.start(['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}))\ntime.sleep(300)"
    pids = _sigkill_once_started(code, tmp_path)
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
    try:
        pids = _wait_for_pids(tmp_path)
        parent.send_signal(signal.SIGHUP)
        _, err = parent.communicate(timeout=20)
    finally:
        parent.kill()
        parent.wait(timeout=20)
    assert parent.returncode == 130
    assert "interrupted by SIGHUP" in err
    assert not any(_alive(p) for p in pids)  # stopped before the parent exited


def test_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    script = 'trap "" TERM; ' + LAUNCHER.format(d=tmp_path)
    code = f"procs.start(['bash', '-c', {script!r}], {{}}, Path({str(tmp_path / 'l.log')!r}), grace=3)\ntime.sleep(300)"
    pids = _sigkill_once_started(code, tmp_path)
    time.sleep(1.5)  # on purpose: time passes inside the 3 s grace, and the children must still be there
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
    output = bytearray()

    def printed_ready() -> bool:
        if select.select([master], [], [], 0)[0]:
            output.extend(os.read(master, 100))
        return b"ready" in output

    def exited():
        done, status = os.waitpid(pid, os.WNOHANG)
        return (status,) if done else None

    try:
        wait_for(printed_ready, 30, "the child on the terminal to print 'ready'", every=0.05)
        os.close(master)  # hang up: the kernel sends SIGHUP to the terminal's session
        master = -1
        (status,) = wait_for(exited, 30, "the child to exit after the hangup", every=0.05)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        if master >= 0:
            os.close(master)
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
    thread.join(timeout=60)
    assert not thread.is_alive() and started, "the starting thread did not finish"
    pids = _wait_for_pids(tmp_path)
    time.sleep(1.0)  # on purpose: several polls of the guard pass, and the children must still be there
    assert all(_alive(p) for p in pids) and started[0].poll() is None
    procs.stop(started[0])
    assert not any(_alive(p) for p in pids)


def test_watcher_stops_what_a_killed_process_started(tmp_path):
    """A process started by a library (here a plain `sleep`, as vLLM's engine core would be) ends
    with swiftpipe even when swiftpipe is SIGKILLed."""
    from swiftpipe.core.childguard import _stat

    script = ("import subprocess, time\nfrom swiftpipe.core import procs\nprocs.watch_descendants(1.0)\n"
              "p = subprocess.Popen(['sleep', '300'])\nprint(p.pid, flush=True)\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = None
    try:
        child = int(Lines(parent.stdout).until(lambda line: line.strip().isdigit(), 60, "the child's pid"))
        wait_for(lambda: processes_mentioning(f"--watch {parent.pid} "), 30, "the watcher to run")
        # On purpose: the watcher notes descendants every 0.25 s and shows nothing when it has; let
        # several of its polls pass before the SIGKILL.
        time.sleep(1.0)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=20)
        wait_for(lambda: _stat(child) is None, 10, "the library's child to end with its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=20)
        if child and _stat(child):
            os.kill(child, signal.SIGKILL)
