"""deploy.sh against a real vLLM start: a server that is not ready in time is reported and stopped."""

import socket
import subprocess
import time

import pytest

from tests.conftest import REPO, child_env
from tests.integration.test_serve_eval import processes_mentioning

pytestmark = pytest.mark.integration


def test_deploy_fails_with_the_log_tail_and_leaves_nothing_running(tiny_model_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = f"t-not-ready-{port}"
    log = tmp_path / "deploy.log"
    env = {**child_env(), "SWIFTPIPE_API_KEY": "sk-test-deploy"}
    out = subprocess.run(["bash", "deploy.sh", str(tiny_model_dir), "--port", str(port), "--name", name, "--log",
                          str(log), "--timeout", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ready:" not in out.stdout
    assert f"'{name}' was not ready within 3s" in out.stderr and "Last lines of" in out.stderr
    assert "vllm serve" in out.stderr  # the log's tail: the command swiftpipe started
    assert not (REPO / ".deploy" / f"{name}.pid").exists()
    time.sleep(1)
    assert processes_mentioning(str(tiny_model_dir)) == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again
