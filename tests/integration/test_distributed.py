"""`swift sft` through swiftpipe with two ranks on CPU (torchrun, gloo backend)."""

import json
import subprocess

import pytest

from tests.helpers import REPO, child_env, swiftpipe_cmd

pytestmark = pytest.mark.integration


def test_two_rank_gloo_training_uses_both_ranks(tmp_path, tiny_model_dir):
    out = subprocess.run(
        [*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", f"model.id={tiny_model_dir}",
         "hardware.nproc_per_node=2", "hardware.ddp_backend=gloo", "train.max_steps=4", "train.save_steps=4",
         "train.logging_steps=1", "eval.enabled=false", "export.merge_lora=false", "--run-id", "ddp"],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "demo-cpu" / "ddp"
    assert "NPROC_PER_NODE=2" in (run / "commands.sh").read_text()
    log = (run / "logs" / "sft.log").read_text(errors="replace")
    assert "torch.distributed.run --nproc_per_node 2" in log and "world_size: 2" in log
    assert "[rank0]" in log and "[rank1]" in log  # both ranks ran the backward pass (DDP reducer)
    steps = [json.loads(line) for line in (run / "train" / "logging.jsonl").read_text().splitlines()
             if '"loss"' in line]
    # 16 demo rows, 8 per rank: one optimizer step covers the whole set only when both ranks take a
    # half each (a single rank would need two steps per epoch).
    assert steps[0]["global_step/max_steps"] == "1/4" and steps[0]["epoch"] == pytest.approx(1.0)
    assert (run / "train" / "checkpoint-4" / "adapter_model.safetensors").exists()
