import os
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
