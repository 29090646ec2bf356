#!/usr/bin/env bash
# After a GPU install: does the venv's torch see the GPU, and is the NVIDIA driver new enough for
# the CUDA version torch was built with? sft.sh runs this before any stage starts.
# Prints torch's CUDA version next to the driver's; exits 1 with the fix when the GPU is unusable.
# Usage: bash scripts/check_gpu.sh [PYTHON]        (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "check_gpu: nvidia-smi not found: no NVIDIA driver on this machine (use the CPU stack: bash scripts/install.sh --cpu)" >&2
  exit 1
fi
if ! driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1) || [ -z "$driver" ]; then
  echo "check_gpu: nvidia-smi cannot report the driver version: ${driver:-no output}" >&2
  exit 1
fi

DRIVER="$driver" "$python" - <<'PY'
import os
import re
import sys

# NVIDIA's minimum Linux x86_64 driver per CUDA toolkit version (CUDA Toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions", GA releases).
MIN_DRIVER = {
    (11, 8): "520.61.05",
    (12, 0): "525.60.13",
    (12, 1): "530.30.02",
    (12, 2): "535.54.03",
    (12, 3): "545.23.06",
    (12, 4): "550.54.14",
    (12, 5): "555.42.02",
    (12, 6): "560.28.03",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}


def vtuple(text):
    return tuple(int(p) for p in text.strip().split(".") if p.isdigit())


def fail(lines):
    print("\n".join(lines), file=sys.stderr)
    sys.exit(1)


driver = os.environ["DRIVER"].strip()
if not re.fullmatch(r"\d+\.\d+(\.\d+)?", driver):
    fail([f"check_gpu: cannot read the driver version from nvidia-smi: {driver!r}",
          "  fix: check that `nvidia-smi` works (reboot after a driver update, or reinstall the driver)"])
try:
    import torch
except ImportError as exc:
    fail([f"check_gpu: cannot import torch with {sys.executable}: {exc}",
          "  fix: bash scripts/install.sh --gpu"])

cuda = torch.version.cuda
if not cuda:
    fail([f"check_gpu: torch {torch.__version__} is a CPU build (torch.version.cuda is None); NVIDIA driver {driver}.",
          "  fix: reinstall the GPU stack: rm -rf .venv && bash scripts/install.sh --gpu"])

cuda_v = vtuple(cuda)[:2]
known = [v for v in MIN_DRIVER if v <= cuda_v]
# A CUDA newer than the table needs at least the newest driver listed.
need = MIN_DRIVER[max(known)] if known else None
at_least = "" if cuda_v in MIN_DRIVER else "at least "
supported = [v for v, d in MIN_DRIVER.items() if vtuple(d) <= vtuple(driver)]
driver_cuda = ".".join(map(str, max(supported))) if supported else "none listed"
available = torch.cuda.is_available()
print(f"check_gpu: torch {torch.__version__} built with CUDA {cuda}; NVIDIA driver {driver}"
      + (f" (CUDA {cuda} needs driver {at_least}>= {need})" if need else ""))

if need and vtuple(driver) < vtuple(need):
    lines = [
        f"check_gpu: NVIDIA driver {driver} is too old for torch's CUDA {cuda}: it needs driver {at_least}>= {need}"
        f" (driver {driver} covers CUDA toolkits up to {driver_cuda}).",
        f"  fix: update the NVIDIA driver to {need} or newer (Ubuntu: sudo apt install nvidia-driver-{need.split('.')[0]},"
        " then reboot),",
        f"       or install torch and vLLM builds for a CUDA version this driver supports (<= {driver_cuda}) into .venv.",
    ]
    if not available:
        fail(lines)
    # CUDA minor-version compatibility can still run it (same major version); kernels that need
    # JIT compilation may fail. Say so, but do not stop a setup that works.
    print("\n".join(["check_gpu: warning: torch sees the GPU through CUDA minor-version compatibility, but:"] + lines),
          file=sys.stderr)

if not available:
    fail([f"check_gpu: torch {torch.__version__} (CUDA {cuda}) does not see a GPU although the driver ({driver}) is new enough.",
          f"  CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}",
          "  fix: check that `nvidia-smi` lists the GPU and CUDA_VISIBLE_DEVICES is unset or names it;"
          " reboot after a driver update (the kernel module and the user-space driver must match)."])
print(f"check_gpu: ok: torch sees {torch.cuda.device_count()} GPU(s)")
PY
