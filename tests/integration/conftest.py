"""Integration fixtures; tiny_model_dir lives in tests/conftest.py (shared with tests/data)."""

import subprocess

import pytest

from tests.conftest import REPO, child_env, swiftpipe_cmd


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_model_dir):
    """`swiftpipe run recipes/demo-cpu.yaml` for real: LoRA → merge → serve → eval → base eval → report.
    Once per session: the serving, evaluation and gateway tests all use its merged model."""
    root = tmp_path_factory.mktemp("runs")
    out = subprocess.run(
        [*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={root}", f"model.id={tiny_model_dir}",
         "--run-id", "full"],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root / "demo-cpu" / "full", out
