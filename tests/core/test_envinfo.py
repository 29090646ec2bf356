"""What the machine offers: GPUs as nvidia-smi lists them, CUDA_VISIBLE_DEVICES honoured as CUDA reads
it (indices, GPU UUIDs or a unique prefix, MIG ids), on a fake one-GPU machine (there is no GPU here)."""

import os

import pytest

from swiftpipe.core import envinfo
from tests.helpers import child_env, run_cli

UUID = "GPU-8f3c2b1a-1111-2222-3333-444455556666"
MIG = "MIG-1a2b3c4d-aaaa-bbbb-cccc-ddddeeeeffff"


@pytest.fixture
def fake_gpu_machine(tmp_path, monkeypatch):
    """nvidia-smi answering like a one-GPU machine with one MIG instance (there is no GPU here)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *--query-gpu=index,uuid,name,memory.total*) echo "0, {UUID}, NVIDIA H100 80GB HBM3, 81559 MiB" ;;
  *-L*) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: {UUID})"
        echo "  MIG 1g.10gb     Device  0: (UUID: {MIG})" ;;
  *) echo "NVIDIA-SMI 570.86.15" ;;
esac
""")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    return smi.parent


@pytest.mark.parametrize("visible", [UUID, UUID[:12], MIG, "0"])
def test_gpu_uuids_and_mig_ids_in_cuda_visible_devices_are_honoured(fake_gpu_machine, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    env = {**child_env(), "PATH": os.environ["PATH"], "CUDA_VISIBLE_DEVICES": visible}
    out = run_cli("render", "recipes/address-qwen3-0.6b.yaml", env=env)
    assert out.returncode == 0, out.stderr
    assert "--use_cpu" not in out.stdout
    assert "CUDA_VISIBLE_DEVICES=" not in out.stdout  # the scheduler's UUID list is inherited untouched
    picked = run_cli("render", "recipes/address-qwen3-0.6b.yaml", "hardware.gpus=[0]", env=env)
    assert picked.returncode == 0, picked.stderr
    assert "--use_cpu" not in picked.stdout
    assert f"CUDA_VISIBLE_DEVICES={visible} " in picked.stdout  # index 0 of the visible devices


def test_unknown_cuda_device_entries_count_as_no_gpu(fake_gpu_machine, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-nope")
    assert envinfo.gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUID},GPU-nope,0")
    assert envinfo.gpus() == ["NVIDIA H100 80GB HBM3, 81559 MiB"]  # CUDA stops at the first unknown entry
