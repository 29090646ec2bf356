"""Fixtures shared by the whole suite; helpers (ports, processes, waits, the CLI) are in tests/helpers.py."""

import subprocess

import pytest

from tests.helpers import REPO, child_env, start_scripted_upstream, stop_group, swiftpipe_cmd


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen3, built once per test session through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen3"
    subprocess.run([*swiftpipe_cmd(), "tiny-model", str(out)], check=True, cwd=REPO, env=child_env(),
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_model_dir):
    """`swiftpipe run recipes/demo-cpu.yaml` for real: LoRA → merge → serve → eval → base eval → report.
    Once per session: the serving, evaluation, extraction and gateway tests all use its merged model."""
    root = tmp_path_factory.mktemp("runs")
    out = subprocess.run(
        [*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={root}", f"model.id={tiny_model_dir}",
         "--run-id", "full"],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root / "demo-cpu" / "full", out


@pytest.fixture
def scripted(tmp_path):
    """A scripted OpenAI-compatible upstream (bench/scripted_upstream.py) as a real HTTP server: its /v1 URL."""
    proc, url = start_scripted_upstream(tmp_path / "upstream.log")
    try:
        yield url
    finally:
        stop_group(proc)
