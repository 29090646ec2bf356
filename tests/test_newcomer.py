"""What a new user meets on a fresh clone (issue: newcomer friction)."""

import socket
import subprocess
import time

import pytest

from swiftpipe.core import procs
from swiftpipe.core.errors import StageFailed
from swiftpipe.train import hub
from tests.helpers import REPO, child_env, swiftpipe_cmd


def run_cli(*args, env=None, cwd=REPO, timeout=120):
    return subprocess.run([*swiftpipe_cmd(), *args], capture_output=True, text=True, cwd=cwd, env=env or child_env(),
                          timeout=timeout)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_in_seconds_naming_hub_model_and_ways_out(tmp_path):
    env = {**child_env(), "MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
           "MODELSCOPE_CACHE": str(tmp_path / "c")}
    started = time.monotonic()
    out = run_cli("run", "recipes/demo-cpu.yaml", "model.id=Qwen/Qwen3-0.6B", "model.tiny=false",
                  f"output.root={tmp_path / 'runs'}", "--run-id", "hub", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "cannot reach ModelScope" in error[0] and "connection refused" in error[0]
    assert "Qwen/Qwen3-0.6B" in error[0] and "swiftpipe download" in error[0] and "offline=true" in error[0]
    assert not (tmp_path / "runs").exists()


def test_a_stage_that_fails_on_the_hub_is_told_in_one_line(tmp_path):
    """A real hub download that cannot resolve the name fails a stage; its forty-line traceback is
    recognised as a hub failure."""
    log = tmp_path / "sft.log"
    code = "from modelscope import snapshot_download; snapshot_download('Qwen/Qwen3-0.6B')"
    env = {"MODELSCOPE_ENDPOINT": "https://no-such-host.invalid", "MODELSCOPE_CACHE": str(tmp_path / "c")}
    with pytest.raises(StageFailed) as info:
        procs.run_stage("sft", ["python", "-c", code], env, log)
    text = log.read_text()
    assert "no-such-host.invalid" in text and hub.failure_in_log(text), text[-2000:]
    message = hub.explain_failure(info.value.stage, "Qwen/Qwen3-0.6B", "modelscope", info.value.log_path)
    assert "ModelScope could not be reached to fetch Qwen/Qwen3-0.6B" in message and "offline=true" in message
    assert not hub.failure_in_log("ValueError: remaining_argv: ['--no_such_flag']")


def test_gpu_sized_recipe_on_a_cpu_machine_stops_before_it_starts(tmp_path):
    env = {**child_env(), "CUDA_VISIBLE_DEVICES": ""}
    out = run_cli("run", "recipes/address-qwen3-0.6b.yaml", f"output.root={tmp_path}", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "found no GPU" in out.stderr and "many hours" in out.stderr
    assert "recipes/demo-cpu.yaml" in out.stderr and "--allow-cpu" in out.stderr
    assert list(tmp_path.iterdir()) == []
    dry = run_cli("run", "recipes/address-qwen3-0.6b.yaml", f"output.root={tmp_path}", "--allow-cpu", "--dry-run",
                  env=env)
    assert dry.returncode == 0 and "found no GPU" not in dry.stderr and "--use_cpu true" in dry.stdout


def test_dry_run_names_a_missing_data_file_and_still_prints_the_commands(tmp_path):
    out = run_cli("run", "recipes/demo-cpu.yaml", "data.train=no/such/train.jsonl", f"output.root={tmp_path}",
                  "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "data.train: file not found" in out.stderr and "no/such/train.jsonl" in out.stderr
    assert "swift sft" in out.stdout and list(tmp_path.iterdir()) == []


def test_interrupted_eval_says_how_to_continue_itself(tmp_path):
    """Ctrl-C in `eval` (here: while it retries a server that is down) names `eval`'s own way on."""
    proc = subprocess.Popen([*swiftpipe_cmd(), "eval", "datasets/demo/address.jsonl", "--base-url",
                             f"http://127.0.0.1:{closed_port()}/v1", "--model", "m", "--out", str(tmp_path / "o")],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(2)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "rerun the same `swiftpipe eval` command" in err and "predictions.jsonl" in err
    assert "--run-id" not in err


def test_retraining_with_a_missing_corrections_file_names_it_before_anything_runs(tmp_path):
    """`data.train=[train,corrections]`: the dry run shows both files in `swift sft --dataset` and warns
    about the missing one; the real run stops on it, naming it, before any stage."""
    files = "data.train=[datasets/demo/address.jsonl,no/such/corrections.jsonl]"
    dry = run_cli("run", "recipes/demo-cpu.yaml", files, f"output.root={tmp_path}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"data.train: file not found: {REPO / 'no/such/corrections.jsonl'}" in dry.stderr
    assert f"--dataset {REPO / 'datasets/demo/address.jsonl'} {REPO / 'no/such/corrections.jsonl'} " in dry.stdout
    real = run_cli("run", "recipes/demo-cpu.yaml", files, f"output.root={tmp_path}")
    assert real.returncode == 2 and "Traceback" not in real.stderr, real.stderr
    assert "cannot start" in real.stderr and "no/such/corrections.jsonl" in real.stderr
    assert "address.jsonl" not in real.stderr  # the good file is not reported
    assert list(tmp_path.iterdir()) == []
