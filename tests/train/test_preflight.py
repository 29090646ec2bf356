"""Checks before any stage runs: the model (offline), the data files and their rows, a GPU-sized recipe
on a CPU machine. A dry run names what is wrong and still prints the commands."""

import json

import pytest

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.train import preflight
from swiftpipe.train.preflight import input_problems
from tests.helpers import REPO, child_env, run_cli, training_row


def test_offline_refuses_missing_local_model_and_hub_ids_before_any_stage(tmp_path):
    missing = tmp_path / "no-such-model"
    out = run_cli("run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", f"model.id={missing}", "model.tiny=false",
                  "--offline", "--run-id", "x")
    assert out.returncode == 2 and str(missing) in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo-cpu").exists()  # nothing started
    hub = run_cli("run", "recipes/demo-cpu.yaml", f"output.root={tmp_path}", "model.id=Qwen/Qwen3-0.6B",
                  "model.tiny=false", "offline=true", "--run-id", "x")
    assert hub.returncode == 2 and "'Qwen/Qwen3-0.6B' is a hub id, but offline is set" in hub.stderr
    assert not (tmp_path / "demo-cpu").exists()


def test_gpu_sized_recipe_on_a_cpu_machine_stops_before_it_starts(tmp_path):
    env = child_env(CUDA_VISIBLE_DEVICES="")
    out = run_cli("run", "recipes/address-qwen3-0.6b.yaml", f"output.root={tmp_path}", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "found no GPU" in out.stderr and "many hours" in out.stderr
    assert "recipes/demo-cpu.yaml" in out.stderr and "--allow-cpu" in out.stderr
    assert list(tmp_path.iterdir()) == []
    dry = run_cli("run", "recipes/address-qwen3-0.6b.yaml", f"output.root={tmp_path}", "--allow-cpu", "--dry-run",
                  env=env)
    assert dry.returncode == 0 and "found no GPU" not in dry.stderr and "--use_cpu true" in dry.stdout


def test_dry_run_names_a_missing_data_file_and_still_prints_the_commands(tmp_path):
    out = run_cli("run", "recipes/demo-cpu.yaml", "data.train=no/such/train.jsonl", f"output.root={tmp_path}",
                  "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "data.train: file not found" in out.stderr and "no/such/train.jsonl" in out.stderr
    assert "swift sft" in out.stdout and list(tmp_path.iterdir()) == []


def test_retraining_with_a_missing_corrections_file_names_it_before_anything_runs(tmp_path):
    """`data.train=[train,corrections]`: the dry run shows both files in `swift sft --dataset` and warns
    about the missing one; the real run stops on it, naming it, before any stage."""
    files = "data.train=[datasets/demo/address.jsonl,no/such/corrections.jsonl]"
    dry = run_cli("run", "recipes/demo-cpu.yaml", files, f"output.root={tmp_path}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"data.train: file not found: {REPO / 'no/such/corrections.jsonl'}" in dry.stderr
    assert f"--dataset {REPO / 'datasets/demo/address.jsonl'} {REPO / 'no/such/corrections.jsonl'} " in dry.stdout
    real = run_cli("run", "recipes/demo-cpu.yaml", files, f"output.root={tmp_path}")
    assert real.returncode == 2 and "Traceback" not in real.stderr, real.stderr
    assert "cannot start" in real.stderr and "no/such/corrections.jsonl" in real.stderr
    assert "address.jsonl" not in real.stderr  # the good file is not reported
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- data.train as a list of files


def test_each_training_file_is_checked_and_a_missing_one_is_named(tmp_path, demo_plan):
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(training_row() * 3, encoding="utf-8")
    good = demo_plan(f"data.train=[datasets/demo/address.jsonl,{corrections}]")
    assert preflight.data_inputs(good.loaded.recipe)[:2] == [("data.train", "datasets/demo/address.jsonl"),
                                                            ("data.train", str(corrections))]
    assert input_problems(good) == []
    missing = demo_plan("data.train=[datasets/demo/address.jsonl,no/such/corrections.jsonl]")
    assert input_problems(missing) == [f"data.train: file not found: {REPO / 'no/such/corrections.jsonl'}"]
    with pytest.raises(SwiftpipeError, match="cannot start:\n  - data.train: file not found: .*no/such/corrections"):
        preflight.check_inputs(missing)
    assert not (tmp_path / "runs").exists()


def test_bad_rows_of_a_second_training_file_are_named_file_and_line(tmp_path, demo_plan):
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(training_row() + "{not json\n\n" + training_row("not json either") + training_row() * 7
                           + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n", encoding="utf-8")
    p = demo_plan(f"data.train=[datasets/demo/address.jsonl,{corrections}]")
    [problem] = input_problems(p)
    assert problem.startswith(f"data.train: 3 bad row(s) in {corrections} (expected ")
    assert f"\n      - {corrections}:2: not valid JSON" in problem
    assert f"\n      - {corrections}:4: the assistant's answer is not valid JSON" in problem
    assert f"\n      - {corrections}:12: the last message must be the assistant's answer" in problem
    # without an output_schema the answers of training rows may be plain text
    lenient = demo_plan(f"data.train=[datasets/demo/address.jsonl,{corrections}]", "data.output_schema={}",
                        "data.verbatim_fields=[]")
    [problem] = input_problems(lenient)
    assert problem.startswith("data.train: 2 bad row(s)") and ":4:" not in problem


def test_bad_row_listing_is_capped_and_an_empty_file_is_refused(tmp_path, demo_plan):
    bad, empty = tmp_path / "bad.jsonl", tmp_path / "empty.jsonl"
    bad.write_text("[]\n" * 12, encoding="utf-8")
    empty.write_text("\n", encoding="utf-8")
    [many, none] = input_problems(demo_plan(f"data.train=[{bad},{empty}]"))
    assert many.count(f"\n      - {bad}:") == preflight.SHOWN_BAD_ROWS and many.endswith("... and 7 more")
    assert none.startswith(f"data.train: {empty} has no rows")


def test_single_training_file_is_checked_as_before(demo_plan):
    assert input_problems(demo_plan()) == []
    assert input_problems(demo_plan("data.train=nowhere.jsonl")) == [
        f"data.train: file not found: {REPO / 'nowhere.jsonl'}"]
