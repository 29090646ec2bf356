"""The package layering (pyproject.toml's import-linter contracts) holds, and an arrow that runs
back up is caught: the check itself can fail."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)})


def test_the_layers_hold_and_a_broken_arrow_is_caught(tmp_path):
    kept = lint(REPO)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "swiftpipe", copy / "swiftpipe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    with open(copy / "swiftpipe" / "gateway" / "feedback.py", "a", encoding="utf-8") as f:
        f.write("\nfrom swiftpipe.train import pipeline  # noqa: E402,F401\n")
    broken = lint(copy)
    assert broken.returncode != 0
    assert "the gateway and extract never import the trainer BROKEN" in broken.stdout
    assert "swiftpipe.gateway.feedback -> swiftpipe.train.pipeline" in broken.stdout
