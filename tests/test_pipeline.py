import io
import json

import pytest

from swiftpipe.errors import SwiftpipeError
from swiftpipe.pipeline import SftProgress, last_checkpoint_from_log
from swiftpipe.rundir import RunDir


def test_progress_reads_only_complete_new_lines(tmp_path):
    log = tmp_path / "logging.jsonl"
    out = io.StringIO()
    progress = SftProgress(log, out=out)
    progress()  # no file yet: nothing
    entry = {"loss": 2.5, "global_step/max_steps": "10/40", "elapsed_time": "3s", "remaining_time": "9s"}
    log.write_text(json.dumps(entry) + "\n" + '{"loss": 1.0, "global_step/max', encoding="utf-8")
    progress()
    assert out.getvalue() == "  sft 10/40 (25%)  loss 2.5000  elapsed 3s  eta 9s\n"
    with open(log, "a", encoding="utf-8") as f:
        f.write('_steps": "20/40"}\n{"train_runtime": 1}\n')
    progress()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("  sft 20/40 (50%)  loss 1.0000")


def test_last_checkpoint_from_summary_line(tmp_path):
    (tmp_path / "logging.jsonl").write_text(
        '{"loss": 1}\n{"last_model_checkpoint": "/r/train/checkpoint-8", "best_model_checkpoint": null}\n')
    assert last_checkpoint_from_log(tmp_path) == "/r/train/checkpoint-8"


def test_last_checkpoint_missing_summary_is_clear(tmp_path):
    (tmp_path / "logging.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(SwiftpipeError, match="no summary line"):
        last_checkpoint_from_log(tmp_path)


def test_latest_complete_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    for step, complete in ((5, True), (20, True), (30, False), (100, False)):
        ckpt = run.train_dir / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    (run.train_dir / "checkpoint-x").mkdir()
    assert run.latest_checkpoint() == run.train_dir / "checkpoint-20"


def test_markers(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_done("sft")
    run.mark_done("sft", checkpoint="/c")
    assert run.is_done("sft") and run.stage_outputs("sft")["checkpoint"] == "/c"
    run.clear("sft")
    assert not run.is_done("sft") and run.stage_outputs("sft") == {}


def test_offline_refuses_missing_local_model_and_hub_ids_before_any_stage(tmp_path):
    import subprocess

    from tests.conftest import REPO, child_env, swiftpipe_cmd

    missing = tmp_path / "no-such-model"
    out = subprocess.run([*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}",
                          f"model.id={missing}", "model.tiny=false", "--offline", "--run-id", "x"],
                         capture_output=True, text=True, cwd=REPO, env=child_env())
    assert out.returncode == 2 and str(missing) in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo-cpu").exists()  # nothing started
    hub = subprocess.run([*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}",
                          "model.id=Qwen/Qwen3-0.6B", "model.tiny=false", "offline=true", "--run-id", "x"],
                         capture_output=True, text=True, cwd=REPO, env=child_env())
    assert hub.returncode == 2 and "'Qwen/Qwen3-0.6B' is a hub id, but offline is set" in hub.stderr
    assert not (tmp_path / "demo-cpu").exists()


def test_other_nodes_only_train():
    from pathlib import Path

    from swiftpipe import pipeline
    from swiftpipe.recipe.load import load_recipe
    from tests.conftest import REPO

    recipe = REPO / "recipes" / "address-qwen3-0.6b.yaml"
    master = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2"]), run_id="r", base=Path(REPO))
    worker = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2", "hardware.node_rank=1"]), run_id="r",
                           base=Path(REPO))
    assert pipeline.active_stages(master) == ["sft", "export", "eval", "eval-base", "report"]
    assert pipeline.active_stages(worker) == ["sft"]


def test_sft_sh_dry_run_prints_the_plan_and_changes_nothing():
    import subprocess

    from tests.conftest import REPO

    before = sorted(p.name for p in REPO.iterdir())
    out = subprocess.run(["bash", "sft.sh", "--dry-run", "--download"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plan:" in out.stdout and "scripts/install.sh" in out.stdout and "swiftpipe download" in out.stdout
    assert "swiftpipe run recipes/" in out.stdout
    assert sorted(p.name for p in REPO.iterdir()) == before
