"""The CLI as a user runs it: exit codes, messages without tracebacks, light start-up."""

import subprocess
import sys

from tests.helpers import REPO, run_cli

BAD = """\
model:
  id: Qwen/Qwen3-0.6B
data:
  train: train.jsonl
train:
  lr: fast
lora:
  rnak: 8
"""


def test_invalid_recipe_exits_2_with_both_errors_and_no_traceback(write_recipe):
    path = write_recipe(BAD)
    for command in ("validate", "render", "run"):
        out = run_cli(command, str(path))
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr + out.stdout
        assert "lora.rnak: unknown key" in out.stderr and "did you mean 'rank'?" in out.stderr
        assert "train.lr:" in out.stderr and "'fast'" in out.stderr


def test_render_prints_sft_and_export():
    out = run_cli("render", "recipes/address-qwen3-0.6b.yaml", "train.lr=2e-4")
    assert out.returncode == 0, out.stderr
    assert "swift sft " in out.stdout and "--learning_rate 0.0002" in out.stdout
    assert "swift export " in out.stdout and "--merge_lora true" in out.stdout


def test_dry_run_creates_nothing(tmp_path):
    out = run_cli("run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", "--run-id", "dry", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "swift sft" in out.stdout and str(tmp_path / "demo-cpu" / "dry") in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_and_render_do_not_import_heavy_packages():
    code = (
        "import sys; from swiftpipe.cli import cli\n"
        "for args in (['--help'], ['render', 'recipes/address-qwen3-0.6b.yaml']):\n"
        "    cli.main(args, standalone_mode=False)\n"
        "heavy = [m for m in ('torch', 'swift', 'vllm', 'transformers', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_missing_data_file_fails_before_any_stage(write_recipe, tmp_path):
    path = write_recipe("model:\n  id: ./no-model\ndata:\n  train: nowhere.jsonl\n" f"output:\n  root: {tmp_path}/runs\n")
    out = run_cli("run", str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert "data.train: file not found" in out.stderr
    assert "model.id: no model at" in out.stderr and "swiftpipe tiny-model" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_force_unknown_stage_is_rejected_and_creates_nothing(tmp_path):
    root = tmp_path / "D"
    out = run_cli("run", "recipes/demo-cpu.yaml", "--force", "nosuchstage", f"output.root={root}")
    assert out.returncode == 2 and "'nosuchstage' is not one of 'model', 'sft'" in out.stderr
    assert not root.exists()


def test_force_of_a_stage_this_recipe_skips_is_rejected_before_anything_is_made(tmp_path):
    root = tmp_path / "D"
    out = run_cli("run", "recipes/demo-cpu.yaml", "--force", "eval-base", "eval.compare_base=false",
                  f"output.root={root}")
    assert out.returncode == 2 and "--force eval-base: this recipe's stages are" in out.stderr
    assert not root.exists()
