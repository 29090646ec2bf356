"""The installer (scripts/install.sh), the GPU check (scripts/check_gpu.sh) and the packaging metadata.

Throwaway copies of the repository stand in for it wherever a script would create or change files,
so these tests never touch the checkout's own .venv.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

# What scripts/install.sh and a `pip install -e .` need from the checkout (the working tree as it is).
INSTALL_FILES = ("pyproject.toml", "README.md", "sft.sh", "scripts", "constraints", "swiftpipe")
BASH = shutil.which("bash") or "/bin/bash"


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in INSTALL_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(path: Path, version: str = "3.10.12") -> Path:
    """A stand-in interpreter that answers like `python` of another version and logs its calls."""
    return write_exe(path, f"""#!{BASH}
echo "$*" >> "$(dirname "$0")/fake-python-calls.log"
case "${{1:-}}" in
  --version|-V) echo "Python {version}" ;;
  -c) echo "{version}" ;;
  *) echo "fake python {version}: not a real interpreter: $*" >&2; exit 1 ;;
esac
""")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def pip_tail(out: subprocess.CompletedProcess, lines: int = 30) -> str:
    """The end of pip's output, without the noise of missing local index folders."""
    text = [ln for ln in (out.stdout + out.stderr).splitlines()
            if not re.match(r"WARNING: Location '.*' is ignored", ln)]
    return "\n".join(text[-lines:])


def run_install(copy: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(["bash", "scripts/install.sh", *args], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=300)


# --- requires-python / interpreter choice ------------------------------------------------------


def test_install_refuses_a_too_old_PYTHON_and_creates_nothing(repo_copy, tmp_path):
    fake = fake_python(tmp_path / "bin" / "python3.10")
    before = tree(repo_copy)
    out = run_install(repo_copy, "--cpu", env_extra={"PYTHON": str(fake)})
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{fake} (from $PYTHON) is Python 3.10.12" in out.stderr
    assert "needs Python >= 3.11" in out.stderr
    assert "sudo apt install python3.11 python3.11-venv" in out.stderr
    assert "PYTHON=/path/to/python3.11 bash sft.sh" in out.stderr
    assert tree(repo_copy) == before and not (repo_copy / ".venv").exists()
    calls = (tmp_path / "bin" / "fake-python-calls.log").read_text()
    assert "-m venv" not in calls  # only asked for its version


def test_install_skips_broken_shims_and_refuses_an_old_python3_on_PATH(repo_copy, tmp_path):
    bin_dir = Path(path_without_python(tmp_path))
    # python3.12 exists but does not run (a pyenv shim of an inactive version); no python3.11.
    write_exe(bin_dir / "python3.12", "#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    fake_python(bin_dir / "python3")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    out = subprocess.run([BASH, "scripts/install.sh", "--cpu"], cwd=repo_copy, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{bin_dir / 'python3'} is Python 3.10.12" in out.stderr
    assert "sudo apt install python3.11 python3.11-venv" in out.stderr
    assert not (repo_copy / ".venv").exists()


def test_requires_python_matches_the_installer():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    script = (REPO / "scripts" / "install.sh").read_text()
    lo = re.search(r"^min_python=(\d+\.\d+)", script, re.M)
    hi = re.search(r"^max_python=(\d+)\.(\d+)", script, re.M)
    assert lo and hi, "min_python= / max_python= not found in scripts/install.sh"
    assert project["requires-python"] == f">={lo.group(1)},<{hi.group(1)}.{int(hi.group(2)) + 1}"
    assert lo.group(1) == "3.11"  # vLLM's minimum


# --- half-made and outdated .venv ----------------------------------------------------------------


def test_half_made_venv_is_recreated(repo_copy):
    # What a failed `python -m venv` leaves behind (e.g. Ubuntu without python3.X-venv): a python, no pip.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo_copy / ".venv")], check=True, timeout=300)
    venv_python = repo_copy / ".venv" / "bin" / "python"
    assert subprocess.run([venv_python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode != 0
    out = run_install(repo_copy, env_extra={"PYTHON": sys.executable, "SWIFTPIPE_INSTALL_VENV_ONLY": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert ".venv has no working pip (a half-made venv): recreating .venv" in out.stdout
    assert "stopping after the venv step" in out.stdout
    pip = subprocess.run([venv_python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60)
    assert pip.returncode == 0 and pip.stdout.startswith("pip "), pip.stderr
    assert not (repo_copy / ".venv" / ".swiftpipe-install").exists()  # stopped before installing anything


def test_venv_of_a_too_old_python_is_recreated(repo_copy):
    fake_python(repo_copy / ".venv" / "bin" / "python", "3.10.12")
    (repo_copy / ".venv" / "pyvenv.cfg").write_text("version = 3.10.12\n")
    out = run_install(repo_copy, "--venv-only", env_extra={"PYTHON": sys.executable})
    assert out.returncode == 0, out.stdout + out.stderr
    assert ".venv was made with Python 3.10.12" in out.stdout and "recreating .venv" in out.stdout
    version = subprocess.run([repo_copy / ".venv" / "bin" / "python", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert version.strip() == str(sys.version_info[:2])
    assert subprocess.run([repo_copy / ".venv" / "bin" / "python", "-m", "pip", "--version"], timeout=60).returncode == 0


def path_without_python(tmp_path: Path) -> str:
    """A PATH with only the tools install.sh needs around the venv step: no Python on it."""
    bin_dir = tmp_path / "bin"
    for tool in ("dirname", "sort", "head", "tail", "cut"):
        write_exe(bin_dir / tool, f'#!/bin/sh\nexec {shutil.which(tool)} "$@"\n')
    return str(bin_dir)


def test_usable_venv_is_kept_without_any_python_on_PATH(repo_copy, tmp_path):
    subprocess.run([sys.executable, "-m", "venv", str(repo_copy / ".venv")], check=True, timeout=300)
    marker = repo_copy / ".venv" / "keep-me"
    marker.write_text("")
    env = {"PATH": path_without_python(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run([BASH, "scripts/install.sh", "--cpu", "--venv-only"], cwd=repo_copy, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recreating" not in out.stdout and "creating .venv" not in out.stdout
    assert marker.exists()


def test_venv_of_the_other_stack_is_recreated(repo_copy):
    subprocess.run([sys.executable, "-m", "venv", str(repo_copy / ".venv")], check=True, timeout=300)
    (repo_copy / ".venv" / ".swiftpipe-install").write_text("--cpu 0123456789abcdef\n")
    out = run_install(repo_copy, "--gpu", "--venv-only", env_extra={"PYTHON": sys.executable})
    assert out.returncode == 0, out.stdout + out.stderr
    assert ".venv was set up for --cpu, not --gpu: recreating .venv" in out.stdout
    assert not (repo_copy / ".venv" / ".swiftpipe-install").exists()


# --- GPU check (scripts/check_gpu.sh) without a GPU: fake nvidia-smi and a fake torch module -------


def run_check_gpu(tmp_path: Path, driver: str, cuda: str | None, available: bool):
    write_exe(tmp_path / "bin" / "nvidia-smi", f"#!/usr/bin/env bash\necho '{driver}'\n")
    torch_dir = tmp_path / "fake-torch" / "torch"
    torch_dir.mkdir(parents=True, exist_ok=True)
    (torch_dir / "__init__.py").write_text(f"""
__version__ = {"2.13.0+cpu" if cuda is None else "2.13.0"!r}

class version:
    cuda = {cuda!r}

class cuda:
    @staticmethod
    def is_available():
        return {available!r}

    @staticmethod
    def device_count():
        return {int(available)}
""")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(tmp_path / "fake-torch")}
    return subprocess.run(["bash", "scripts/check_gpu.sh", sys.executable], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_gpu_driver_too_old_names_the_minimum_and_the_fix(tmp_path):
    out = run_check_gpu(tmp_path, driver="550.54.14", cuda="13.0", available=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "built with CUDA 13.0; NVIDIA driver 550.54.14" in out.stdout
    assert "driver 550.54.14 is too old for torch's CUDA 13.0: it needs driver >= 580.65.06" in out.stderr
    assert "covers CUDA toolkits up to 12.4" in out.stderr
    assert "update the NVIDIA driver to 580.65.06 or newer" in out.stderr
    assert "builds for a CUDA version this driver supports (<= 12.4)" in out.stderr


@pytest.mark.parametrize("driver,cuda,minimum", [("560.35.03", "12.8", "570.26"), ("570.86.10", "12.9", "575.51.03"),
                                                 ("545.23.08", "12.6", "560.28.03")])
def test_check_gpu_minimum_driver_per_cuda_version(tmp_path, driver, cuda, minimum):
    out = run_check_gpu(tmp_path, driver=driver, cuda=cuda, available=False)
    assert out.returncode == 1 and f"needs driver >= {minimum}" in out.stderr, out.stdout + out.stderr


def test_check_gpu_cuda_newer_than_the_table_needs_at_least_the_newest_minimum(tmp_path):
    out = run_check_gpu(tmp_path, driver="575.51.03", cuda="13.2", available=False)
    assert out.returncode == 1 and "needs driver at least >= 580.65.06" in out.stderr, out.stdout + out.stderr


def test_check_gpu_ok(tmp_path):
    out = run_check_gpu(tmp_path, driver="580.95.05", cuda="13.0", available=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ("torch 2.13.0 built with CUDA 13.0; NVIDIA driver 580.95.05 (CUDA 13.0 needs driver >= 580.65.06)"
            in out.stdout)
    assert "ok: torch sees 1 GPU(s)" in out.stdout and out.stderr == ""


def test_check_gpu_minor_version_compatibility_warns_but_goes_on(tmp_path):
    out = run_check_gpu(tmp_path, driver="560.35.03", cuda="12.8", available=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" in out.stderr and "570.26" in out.stderr


def test_check_gpu_new_enough_driver_but_no_gpu_visible(tmp_path):
    out = run_check_gpu(tmp_path, driver="580.95.05", cuda="13.0", available=False)
    assert out.returncode == 1 and "does not see a GPU although the driver (580.95.05) is new enough" in out.stderr


def test_check_gpu_cpu_torch_in_a_gpu_install(tmp_path):
    out = run_check_gpu(tmp_path, driver="580.95.05", cuda=None, available=False)
    assert out.returncode == 1 and "is a CPU build" in out.stderr and "install.sh --gpu" in out.stderr


def test_sft_sh_dry_run_on_a_gpu_machine_plans_the_gpu_check(repo_copy, tmp_path):
    write_exe(tmp_path / "bin" / "nvidia-smi",
              "#!/usr/bin/env bash\necho 'NVIDIA H100 80GB HBM3, 550.54.14, 81559 MiB'\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "sft.sh", "--dry-run"], cwd=repo_copy, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    plan = out.stdout[out.stdout.index("plan:"):]
    assert plan.index("scripts/install.sh --gpu") < plan.index("scripts/check_gpu.sh") < plan.index("swiftpipe run")


def test_sft_sh_dry_run_prints_the_plan_and_changes_nothing():
    def tree_status() -> str:  # every created, changed or deleted file of the checkout, ignored ones too
        return subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--ignored"], cwd=REPO,
                              capture_output=True, text=True, check=True, timeout=60).stdout

    before = tree_status()
    out = subprocess.run(["bash", "sft.sh", "--dry-run", "--download"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plan:" in out.stdout and "scripts/install.sh" in out.stdout and "swiftpipe download" in out.stdout
    assert "swiftpipe run recipes/" in out.stdout
    assert tree_status() == before


# --- packaging: the GPU extra resolves; no deprecation noise from pyproject.toml -----------------


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


@pytest.mark.integration
def test_gpu_extra_resolves(repo_copy, tmp_path):
    """What `bash scripts/install.sh --gpu` asks pip for, resolved (not installed) in a throwaway venv."""
    python = fresh_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    out = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report),
                          "-c", str(repo_copy / "constraints" / "gpu.txt"), "-e", f"{repo_copy}[gpu,test,ray]"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"pip cannot resolve .[gpu,test,ray] (exit {out.returncode}):\n{pip_tail(out)}"
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]
                for item in json.loads(report.read_text())["install"]}
    versions = {name: meta["version"] for name, meta in resolved.items()}
    summary = ", ".join(f"{n} {versions.get(n)}" for n in ("vllm", "torch", "deepspeed", "ms-swift", "transformers"))
    assert versions.get("vllm", "").startswith("0.32."), summary
    assert re.match(r"0\.(17|18|19)\.", versions.get("deepspeed", "")), summary
    torch = resolved["torch"]
    assert "+cpu" not in torch["version"], f"the GPU extra resolved a CPU torch: {summary}"
    cuda_deps = [d for d in torch.get("requires_dist", []) if re.match(r"(nvidia-|cuda-)", d)]
    assert cuda_deps, f"torch {torch['version']} declares no CUDA libraries: not a CUDA build ({summary})"
    assert versions.get("ray", "").startswith("2.60."), f"ray {versions.get('ray')} ({summary})"
    for tool in ("pytest", "ruff", "mypy", "ms-swift", "pyarrow", "dashscope", "tiktoken"):
        assert tool in versions, f"{tool} missing from the resolution ({summary})"


@pytest.mark.integration
def test_editable_install_prints_no_deprecation_warning(repo_copy, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    # -v shows the build backend's own output, where setuptools prints its deprecation warnings.
    out = subprocess.run([python, "-m", "pip", "install", "-v", "--no-deps", "-e", str(repo_copy)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"pip install --no-deps -e . failed (exit {out.returncode}):\n{pip_tail(out)}"
    noise = [ln for ln in (out.stdout + out.stderr).splitlines() if "deprecat" in ln.lower()]
    assert not noise, "deprecation warnings while building swiftpipe:\n" + "\n".join(noise)
