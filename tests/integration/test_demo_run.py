"""`swiftpipe run recipes/demo-cpu.yaml`: real `swift sft` (LoRA) and `swift export` on the tiny model."""

import json
import os
import signal
import subprocess

import pytest

from tests.helpers import REPO, child_env, swiftpipe_cmd, wait_for

pytestmark = pytest.mark.integration

# Fewer steps than the shipped demo: this checks the mechanics, not memorisation.
QUICK = ["train.max_steps=20", "train.save_steps=10", "train.logging_steps=5", "eval.enabled=false"]


def run_demo(tmp_path, tiny_model_dir, run_id, *extra, timeout=900):
    args = ["run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", f"model.id={tiny_model_dir}",
            *QUICK, *extra, "--run-id", run_id]
    return subprocess.run([*swiftpipe_cmd(), *args], capture_output=True, text=True, cwd=REPO,
                          env=child_env(), timeout=timeout)


def test_demo_run_leaves_run_dir_and_merged_model(tmp_path, tiny_model_dir):
    out = run_demo(tmp_path, tiny_model_dir, "e2e")
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "demo-cpu" / "e2e"
    for rel in ("recipe.yaml", "resolved.yaml", "commands.sh", "env.json", "run.json",
                "logs/sft.log", "logs/export.log", "train/logging.jsonl",
                "stages/sft.done", "stages/export.done", "merged/config.json"):
        assert (run / rel).exists(), rel
    assert "sft 20/20 (100%)" in out.stdout  # the live view
    assert (run / "recipe.yaml").read_text() == (REPO / "recipes/demo-cpu.yaml").read_text()
    assert "max_steps: 20" in (run / "resolved.yaml").read_text()
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["ms-swift"] and env["packages"]["torch"] and env["seed"] == 42
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["final_model"] == str(run / "merged")
    assert info["checkpoint"] == str(run / "train" / "checkpoint-20")
    assert "swift sft" in (run / "commands.sh").read_text()

    # the merged model loads, and LoRA changed its weights
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", torch_dtype=torch.float32)
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert base_sd.keys() == merged_sd.keys()
    changed = [k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)

    # rerunning the same run id re-runs no stage
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "stages").iterdir()}
    sft_log = (run / "logs" / "sft.log").stat().st_size
    again = run_demo(tmp_path, tiny_model_dir, "e2e")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done earlier, skipped") == 3
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").iterdir()} == markers
    assert (run / "logs" / "sft.log").stat().st_size == sft_log

    # --force export redoes only the merge
    forced = run_demo(tmp_path, tiny_model_dir, "e2e", "--force", "export")
    assert forced.returncode == 0, forced.stderr
    assert "[sft] done earlier, skipped" in forced.stdout and "[export] done in" in forced.stdout


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_interrupted_training_resumes_from_last_checkpoint(tmp_path, tiny_model_dir):
    run = tmp_path / "demo-cpu" / "resume"
    args = ["run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", f"model.id={tiny_model_dir}",
            "train.max_steps=40", "train.save_steps=10", "train.save_total_limit=null", "eval.enabled=false",
            "--run-id", "resume"]
    proc = subprocess.Popen([*swiftpipe_cmd(), *args], cwd=REPO, env=child_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def checkpoint_10() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            return (run / "train" / "checkpoint-10" / "trainer_state.json").exists()

        wait_for(checkpoint_10, 600, "the first checkpoint", every=0.2)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C to swiftpipe only: it must stop its children
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output
    assert "interrupted (Ctrl-C)" in output
    assert f"resume with `swiftpipe run recipes/demo-cpu.yaml output.root={tmp_path}" in output and "--run-id resume`" in output
    wait_for(lambda: _group_gone(proc.pid), 10, "swift's processes to stop after Ctrl-C")
    assert not (run / "stages" / "sft.done").exists()
    last = sorted(int(p.name.split("-")[1]) for p in (run / "train").glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())[-1]
    assert last < 40

    resumed = subprocess.run([*swiftpipe_cmd(), *args], capture_output=True, text=True, cwd=REPO,
                             env=child_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {run / 'train' / f'checkpoint-{last}'}" in resumed.stdout
    log = (run / "logs" / "sft.log").read_text()
    assert "--resume_from_checkpoint" in json.loads((run / "stages" / "sft.done").read_text())["command"]
    state = json.loads((run / "train" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    # steps before the resume point were not trained again
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == sorted(set(steps)), log[-2000:]


def test_failing_stage_reports_stage_log_and_tail(tmp_path, tiny_model_dir):
    out = run_demo(tmp_path, tiny_model_dir, "bad", "train.extra_args={no_such_flag: 1}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr.split("--- last lines of the log ---")[0]
    assert "stage 'sft' failed" in out.stderr
    assert str(tmp_path / "demo-cpu" / "bad" / "logs" / "sft.log") in out.stderr
    assert "no_such_flag" in out.stderr  # swift's own complaint, from the log tail
    assert out.stderr.rstrip().endswith("--run-id bad")  # the exact command that resumes this run
    assert f"swiftpipe run recipes/demo-cpu.yaml output.root={tmp_path}" in out.stderr
    assert json.loads((tmp_path / "demo-cpu" / "bad" / "run.json").read_text())["status"] == "failed in sft"
