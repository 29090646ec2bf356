"""Regression tests for the defects a review found (issue: foundation for the production side)."""

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from swiftpipe.core.errors import RecipeError
from swiftpipe.evaluation import compare
from swiftpipe.evaluation import leaderboard as runs
from swiftpipe.recipe import derived
from swiftpipe.recipe.load import load_recipe
from swiftpipe.train import pipeline, sweep
from swiftpipe.train.progress import SftProgress
from tests.helpers import REPO, child_env, swiftpipe_cmd

ADDRESS = REPO / "recipes" / "address-qwen3-0.6b.yaml"
UUID = "GPU-8f3c2b1a-1111-2222-3333-444455556666"
MIG = "MIG-1a2b3c4d-aaaa-bbbb-cccc-ddddeeeeffff"


def test_second_machine_of_a_multi_node_run_reopens_the_shared_run_dir(tmp_path):
    """node_rank differs per machine: it must not count as a different recipe."""
    plans = [pipeline.plan(load_recipe(ADDRESS, ["hardware.nnodes=2", f"hardware.node_rank={rank}",
                                                 f"output.root={tmp_path}"]), run_id="r", base=REPO)
             for rank in (0, 1)]
    assert pipeline.prepare_run_dir(plans[0]) is False
    assert pipeline.prepare_run_dir(plans[1]) is True  # re-opened, not refused
    assert plans[0].lock_path.name == "run.lock" and plans[1].lock_path.name == "run.node1.lock"
    other = pipeline.plan(load_recipe(ADDRESS, ["hardware.nnodes=2", "hardware.node_rank=1", "train.lr=2e-4",
                                                f"output.root={tmp_path}"]), run_id="r", base=REPO)
    with pytest.raises(RecipeError, match="made with a different recipe"):
        pipeline.prepare_run_dir(other)


def test_sweep_point_ids_are_unique_for_distinct_points():
    axis = ("lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj],"
            "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]")
    out = subprocess.run([*swiftpipe_cmd(), "sweep", "recipes/demo-cpu.yaml", axis, "--sweep-id", "s", "--dry-run"],
                         cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ids = [line.rsplit("--run-id ", 1)[1] for line in out.stdout.splitlines() if "--run-id" in line]
    assert len(ids) == 2 and ids[0] != ids[1], out.stdout
    assert sweep.slug("8") == "8" and sweep.slug("1e-4") == "1e-4"  # short values stay readable
    with pytest.raises(RecipeError, match="map to the same run id"):
        sweep.point_ids("s", [{"lora.rank": "8"}, {"lora.rank": "8"}], ["lora.rank"])


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
    out = subprocess.run([*swiftpipe_cmd(), "render", "recipes/address-qwen3-0.6b.yaml"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--use_cpu" not in out.stdout
    assert "CUDA_VISIBLE_DEVICES=" not in out.stdout  # the scheduler's UUID list is inherited untouched
    picked = subprocess.run([*swiftpipe_cmd(), "render", "recipes/address-qwen3-0.6b.yaml", "hardware.gpus=[0]"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert picked.returncode == 0, picked.stderr
    assert "--use_cpu" not in picked.stdout
    assert f"CUDA_VISIBLE_DEVICES={visible} " in picked.stdout  # index 0 of the visible devices


def test_unknown_cuda_device_entries_count_as_no_gpu(fake_gpu_machine, monkeypatch):
    from swiftpipe.core import envinfo

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-nope")
    assert envinfo.gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUID},GPU-nope,0")
    assert envinfo.gpus() == ["NVIDIA H100 80GB HBM3, 81559 MiB"]  # CUDA stops at the first unknown entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUID)
    with pytest.raises(RecipeError, match="index 1 is out of range"):
        derived.visible_devices([1])


def _run_dir(root: Path, name: str, output_root: str) -> Path:
    run = root / "demo" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "demo", "run_id": name, "status": "done"}))
    (run / "resolved.yaml").write_text(yaml.safe_dump({"name": "demo", "output": {"root": output_root},
                                                      "lora": {"rank": 8}}))
    return run


def test_where_a_run_lives_is_not_a_parameter(tmp_path):
    """reproduce passes an absolute output.root: compare and leaderboard must not list it."""
    a, b = _run_dir(tmp_path, "a", "runs"), _run_dir(tmp_path, "b", str(tmp_path))
    assert compare.param_diff(a, b) == []
    assert "output.root" not in runs.leaderboard(tmp_path).columns


def test_progress_view_never_raises_on_a_malformed_log(tmp_path):
    log = tmp_path / "logging.jsonl"
    out = io.StringIO()
    progress = SftProgress(log, out=out)
    log.write_text('{"loss": "nan?", "global_step/max_steps": "1/4"}\n'
                   '{"loss": null, "global_step/max_steps": "2/4"}\n'
                   '{"loss": 1.5, "global_step/max_steps": 7}\n'
                   '["not", "a", "dict"]\n{"loss": 1.25, "global_step/max_steps": "3/4"}\n{"loss": 1.0, "glo',
                   encoding="utf-8")
    progress()  # must not raise
    assert out.getvalue().splitlines() == ["  sft 7/ (0%)  loss 1.5000  elapsed ?  eta ?",
                                           "  sft 3/4 (75%)  loss 1.2500  elapsed ?  eta ?"]


def test_a_progress_callback_that_raises_does_not_stop_the_stage(tmp_path):
    from swiftpipe.core import procs

    calls = []

    def broken_tick():
        calls.append(1)
        raise ValueError("could not convert string to float: 'abc'")

    procs.run_stage("sft", ["bash", "-c", "sleep 0.5; echo trained"], {}, tmp_path / "l.log", on_tick=broken_tick,
                    tick=0.1)
    assert calls and "trained" in (tmp_path / "l.log").read_text()
