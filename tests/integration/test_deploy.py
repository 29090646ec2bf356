"""deploy.sh against a real vLLM start: a server that is not ready in time is reported and stopped."""

import subprocess

import pytest

from tests.helpers import REPO, assert_gone, child_env, free_port, port_free, swiftpipe_cmd

pytestmark = pytest.mark.integration

DEPLOY_KEY = "sk-test-deploy-ok-" + "k" * 24


def test_deploy_fails_with_the_log_tail_and_leaves_nothing_running(tiny_model_dir, tmp_path):
    port = free_port()
    name = f"t-not-ready-{port}"
    log = tmp_path / "deploy.log"
    env = {**child_env(), "SWIFTPIPE_API_KEY": "sk-test-deploy-" + "n" * 24}
    out = subprocess.run(["bash", "deploy.sh", str(tiny_model_dir), "--port", str(port), "--name", name, "--log",
                          str(log), "--timeout", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ready:" not in out.stdout
    assert f"'{name}' was not ready within 3s" in out.stderr and "Last lines of" in out.stderr
    assert "vllm serve" in out.stderr  # the log's tail: the command swiftpipe started
    assert not (REPO / ".deploy" / f"{name}.pid").exists()
    assert_gone(str(tiny_model_dir), 10)
    assert port_free(port)


def test_deploy_serves_the_gateway_and_stops_it(tiny_model_dir, tmp_path):
    import httpx

    port = free_port()
    name = f"t-deploy-{port}"
    env = {**child_env(), "SWIFTPIPE_API_KEY": DEPLOY_KEY}
    try:
        out = subprocess.run(["bash", "deploy.sh", str(tiny_model_dir), "--port", str(port), "--name", name,
                              "--timeout", "300", "--", "--recipe", "recipes/demo-cpu.yaml"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"ready: '{name}' at http://127.0.0.1:{port}/v1" in out.stdout and "from SWIFTPIPE_API_KEY" in out.stdout
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/extract", json={"text": "张三 13800000000"}, timeout=60,
                            headers={"Authorization": f"Bearer {DEPLOY_KEY}"})
        assert answer.status_code == 200 and answer.json()["version"] == name, answer.text
        listed = subprocess.run([*swiftpipe_cmd(), "requests", "--db", f".deploy/{name}.sqlite", "--format", "csv"],
                                cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
        assert answer.json()["id"] in listed.stdout
    finally:
        stop = subprocess.run(["bash", "deploy.sh", "--stop", "--name", name], cwd=REPO, capture_output=True, text=True,
                              timeout=200)
        for leftover in (REPO / ".deploy").glob(f"{name}*"):
            leftover.unlink()
    assert stop.returncode == 0 and f"stopped '{name}'" in stop.stdout
    assert_gone(str(tiny_model_dir), 10)
