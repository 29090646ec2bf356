"""The model hub: unreachable before anything starts, or failing inside a stage, told in one line."""

import time

import pytest

from swiftpipe.core import procs
from swiftpipe.core.errors import StageFailed
from swiftpipe.train import hub
from tests.helpers import child_env, free_port, run_cli


def test_unreachable_hub_fails_in_seconds_naming_hub_model_and_ways_out(tmp_path):
    env = child_env(MODELSCOPE_ENDPOINT=f"http://127.0.0.1:{free_port()}", MODELSCOPE_CACHE=str(tmp_path / "c"))
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
