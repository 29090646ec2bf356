import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from swiftpipe import procs
from swiftpipe.errors import StageFailed


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
        "from pathlib import Path; from swiftpipe import procs\n"
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
