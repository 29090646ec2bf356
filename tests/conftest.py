import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def swiftpipe_cmd() -> list[str]:
    """The CLI of the interpreter running the tests (works without an activated venv)."""
    return [sys.executable, "-m", "swiftpipe.cli"]


def child_env() -> dict:
    """Environment for CLI subprocesses: the venv's bin first so `swift` resolves."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.yaml") -> Path:
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
