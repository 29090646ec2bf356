"""A 2×2 sweep of the demo recipe on CPU: four run directories, a leaderboard, resume after a kill."""

import json
import os
import signal
import subprocess

import pytest

from tests.helpers import REPO, assert_gone, child_env, swiftpipe_cmd, wait_for

pytestmark = pytest.mark.integration

FAST = ["train.max_steps=6", "train.save_steps=6", "train.logging_steps=2", "eval.enabled=false",
        "export.merge_lora=false"]


def test_sweep_grid_leaderboard_and_resume(tmp_path, tiny_model_dir):
    args = [*swiftpipe_cmd(), "sweep", "recipes/demo-cpu.yaml", "lora.rank=8,16", "train.lr=1e-3,2e-3",
            f"output.root={tmp_path}", f"model.id={tiny_model_dir}", *FAST, "--sweep-id", "s"]
    state = tmp_path / "demo-cpu" / "sweeps" / "s.json"
    proc = subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def two_points_done() -> list:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            points = json.loads(state.read_text())["points"] if state.exists() else {}
        except json.JSONDecodeError:  # being rewritten
            points = {}
        done = [r for r, p in points.items() if p["status"] == "done"]
        return done if len(done) >= 2 else []

    done = wait_for(two_points_done, 600, "two finished sweep points", every=0.2)
    assert len(done) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the sweep only: its child run must die with it
    proc.wait()
    assert_gone(str(tmp_path), 10)  # the sweep's child run did not outlive it
    finished = {r: (tmp_path / "demo-cpu" / r / "stages" / "sft.done").read_text() for r in done}

    rerun = subprocess.run(args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stdout.count("done earlier, skipped") == 2
    assert rerun.stdout.count(": running") == 2
    for r, marker in finished.items():  # the finished points were not trained again
        assert (tmp_path / "demo-cpu" / r / "stages" / "sft.done").read_text() == marker
    runs = sorted(p.name for p in (tmp_path / "demo-cpu").iterdir() if (p / "run.json").exists())
    assert runs == ["s-rank16-lr1e-3", "s-rank16-lr2e-3", "s-rank8-lr1e-3", "s-rank8-lr2e-3"]
    for r in runs:
        assert json.loads((tmp_path / "demo-cpu" / r / "run.json").read_text())["status"] == "done"
    assert "4 of 4 points done" in rerun.stdout

    board = subprocess.run([*swiftpipe_cmd(), "leaderboard", str(tmp_path), "--format", "csv", "--sort", "-lora.rank"],
                           cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert board.returncode == 0, board.stderr
    lines = board.stdout.splitlines()
    header = lines[0].split(",")
    assert {"run", "lora.rank", "train.lr", "final_loss", "sft_s", "ms-swift"} <= set(header)
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert len(rows) == 4 and [r["lora.rank"] for r in rows] == ["8", "8", "16", "16"]
    assert all(float(r["final_loss"]) > 0 and float(r["sft_s"]) > 0 for r in rows)
    md = subprocess.run([*swiftpipe_cmd(), "leaderboard", str(tmp_path), "--format", "markdown", "--where",
                         "`lora.rank` == 16"], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert md.returncode == 0 and md.stdout.count("| demo-cpu/s-rank16") == 2 and "rank8" not in md.stdout
