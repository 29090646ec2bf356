import subprocess

import pytest

from tests.conftest import REPO, child_env, swiftpipe_cmd


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen3, built once per test session through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen3"
    subprocess.run([*swiftpipe_cmd(), "tiny-model", str(out)], check=True, cwd=REPO, env=child_env(),
                   capture_output=True)
    return out
