"""swiftpipe dies (SIGHUP, SIGKILL): nothing of the run is left, the run never claims to be running,
and the rerun resumes. Real `swift sft`, real vLLM."""

import json
import os
import re
import signal
import subprocess

import pytest

from swiftpipe.core import runlock
from tests.helpers import REPO, Lines, assert_gone, child_env, free_port, port_free, processes_mentioning, swiftpipe_cmd, wait_for

pytestmark = pytest.mark.integration


def test_sighup_in_sft_and_sigkill_in_eval_leave_nothing_and_the_run_resumes(tmp_path, tiny_model_dir):
    run = tmp_path / "demo-cpu" / "r1"
    args = [*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", f"model.id={tiny_model_dir}",
            "train.max_steps=30", "train.save_steps=10", "train.save_total_limit=null", "eval.compare_base=false",
            "--run-id", "r1"]
    start = lambda: subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,  # noqa: E731
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    # 1. SIGHUP (a closed terminal) during sft.
    first = start()
    wait_for(lambda: (run / "train" / "checkpoint-10" / "trainer_state.json").exists(), 600, "checkpoint-10")
    first.send_signal(signal.SIGHUP)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 130, output
    assert_gone(str(run), 10)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted in sft"
    resume = "--run-id r1"
    assert "interrupted by SIGHUP" in (run / "logs" / "run.log").read_text() and resume in (run / "logs" / "run.log").read_text()

    # 2. Rerun; SIGKILL once vLLM serves the fine-tuned model (eval stage).
    second = start()
    output = Lines(second.stdout)
    line = output.until(lambda line: "serving '" in line, 600, "the eval server")
    port = int(re.search(r":(\d+)/v1", line).group(1))
    assert "resuming from" in "".join(output.seen)
    assert not port_free(port)
    os.kill(second.pid, signal.SIGKILL)
    second.wait()
    assert_gone(str(run), 10)
    wait_for(lambda: port_free(port), 10, f"port {port} to be free")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "running eval" and runlock.effective_status(info) == "interrupted (at stage eval)"
    board = subprocess.run([*swiftpipe_cmd(), "leaderboard", str(tmp_path), "--format", "csv"], cwd=REPO,
                           env=child_env(), capture_output=True, text=True)
    assert "interrupted (at stage eval)" in board.stdout, board.stdout + board.stderr

    # 3. A second process on the same run while one is alive is refused, naming the first's pid.
    third = start()
    wait_for(lambda: (runlock.holder(run) or {}).get("pid") not in (None, second.pid), 60, "the lock")
    holder = runlock.holder(run)["pid"]
    refused = subprocess.run(args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and f"pid {holder}" in refused.stderr and "Traceback" not in refused.stderr

    # 4. The rerun finishes: sft and export were kept, eval was redone.
    output, _ = third.communicate(timeout=900)
    assert third.returncode == 0, output
    assert "[sft] done earlier, skipped" in output and "[export] done earlier, skipped" in output
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "eval" / "finetuned" / "metrics.json").read_text())
    assert info["status"] == "done" and metrics["n"] == 16 and metrics["api_errors"] == 0
    assert info["exact_match"] == metrics["exact_match"]
    state = json.loads((run / "train" / "checkpoint-30" / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == sorted(set(steps))  # the resumed training did not repeat steps
    assert processes_mentioning(str(run)) == []


def test_sigkill_of_serve_stops_vllm(tmp_path, tiny_model_dir):
    gateway_port = free_port()
    proc = subprocess.Popen([*swiftpipe_cmd(), "serve", str(tiny_model_dir), "--name", "lifetime", "--port",
                             str(gateway_port)], cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    line = Lines(proc.stdout).until(lambda line: line.startswith("serving "), 300, "the gateway in front of vLLM")
    assert f":{gateway_port}/v1" in line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert_gone(str(tiny_model_dir), 10)  # its vLLM server: stopped by the guard, not left running
    wait_for(lambda: port_free(gateway_port), 10, f"port {gateway_port} to be free")
