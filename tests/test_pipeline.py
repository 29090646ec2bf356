import io
import json

import pytest

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.rundir import RunDir
from swiftpipe.train import preflight
from swiftpipe.train.preflight import input_problems
from swiftpipe.train.progress import SftProgress
from swiftpipe.train.stages import active, last_checkpoint_from_log


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

    from tests.helpers import REPO, child_env, swiftpipe_cmd

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

    from swiftpipe.recipe.load import load_recipe
    from swiftpipe.train import pipeline
    from tests.helpers import REPO

    recipe = REPO / "recipes" / "address-qwen3-0.6b.yaml"
    master = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2"]), run_id="r", base=Path(REPO))
    worker = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2", "hardware.node_rank=1"]), run_id="r",
                           base=Path(REPO))
    assert [s.name for s in active(master)] == ["sft", "export", "eval", "eval-base", "report"]
    assert [s.name for s in active(worker)] == ["sft"]


def test_sft_sh_dry_run_prints_the_plan_and_changes_nothing():
    import subprocess

    from tests.helpers import REPO

    before = sorted(p.name for p in REPO.iterdir())
    out = subprocess.run(["bash", "sft.sh", "--dry-run", "--download"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plan:" in out.stdout and "scripts/install.sh" in out.stdout and "swiftpipe download" in out.stdout
    assert "swiftpipe run recipes/" in out.stdout
    assert sorted(p.name for p in REPO.iterdir()) == before


# ---------------------------------------------------------------- data.train as a list of files


def _demo_plan(tmp_path, *overrides):
    from swiftpipe.recipe.load import load_recipe
    from swiftpipe.train import pipeline
    from tests.helpers import REPO

    loaded = load_recipe(REPO / "recipes" / "demo-cpu.yaml", [f"output.root={tmp_path / 'runs'}", *overrides])
    return pipeline.plan(loaded, run_id="r", base=REPO)


def _row(answer: str = '{"name": "a"}') -> str:
    return json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": answer}]}) + "\n"


def test_each_training_file_is_checked_and_a_missing_one_is_named(tmp_path):
    from tests.helpers import REPO

    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(_row() * 3, encoding="utf-8")
    good = _demo_plan(tmp_path, f"data.train=[datasets/demo/address.jsonl,{corrections}]")
    assert preflight.data_inputs(good.loaded.recipe)[:2] == [("data.train", "datasets/demo/address.jsonl"),
                                                            ("data.train", str(corrections))]
    assert input_problems(good) == []
    missing = _demo_plan(tmp_path, "data.train=[datasets/demo/address.jsonl,no/such/corrections.jsonl]")
    assert input_problems(missing) == [f"data.train: file not found: {REPO / 'no/such/corrections.jsonl'}"]
    with pytest.raises(SwiftpipeError, match="cannot start:\n  - data.train: file not found: .*no/such/corrections"):
        preflight.check_inputs(missing)
    assert not (tmp_path / "runs").exists()


def test_bad_rows_of_a_second_training_file_are_named_file_and_line(tmp_path):

    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(_row() + "{not json\n\n" + _row("not json either") + _row() * 7
                           + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n", encoding="utf-8")
    p = _demo_plan(tmp_path, f"data.train=[datasets/demo/address.jsonl,{corrections}]")
    [problem] = input_problems(p)
    assert problem.startswith(f"data.train: 3 bad row(s) in {corrections} (expected ")
    assert f"\n      - {corrections}:2: not valid JSON" in problem
    assert f"\n      - {corrections}:4: the assistant's answer is not valid JSON" in problem
    assert f"\n      - {corrections}:12: the last message must be the assistant's answer" in problem
    # without an output_schema the answers of training rows may be plain text
    lenient = _demo_plan(tmp_path, f"data.train=[datasets/demo/address.jsonl,{corrections}]", "data.output_schema={}",
                         "data.verbatim_fields=[]")
    [problem] = input_problems(lenient)
    assert problem.startswith("data.train: 2 bad row(s)") and ":4:" not in problem


def test_bad_row_listing_is_capped_and_an_empty_file_is_refused(tmp_path):

    bad, empty = tmp_path / "bad.jsonl", tmp_path / "empty.jsonl"
    bad.write_text("[]\n" * 12, encoding="utf-8")
    empty.write_text("\n", encoding="utf-8")
    [many, none] = input_problems(_demo_plan(tmp_path, f"data.train=[{bad},{empty}]"))
    assert many.count(f"\n      - {bad}:") == preflight.SHOWN_BAD_ROWS and many.endswith("... and 7 more")
    assert none.startswith(f"data.train: {empty} has no rows")


def test_single_training_file_is_checked_as_before(tmp_path):
    from tests.helpers import REPO

    assert input_problems(_demo_plan(tmp_path)) == []
    assert input_problems(_demo_plan(tmp_path, "data.train=nowhere.jsonl")) == [
        f"data.train: file not found: {REPO / 'nowhere.jsonl'}"]


def test_a_run_with_several_training_files_resumes_and_refuses_a_changed_list(tmp_path):
    from swiftpipe.train import pipeline
    from tests.helpers import REPO

    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(_row(), encoding="utf-8")
    files = f"data.train=[datasets/demo/address.jsonl,{corrections}]"
    first = _demo_plan(tmp_path, files)
    assert pipeline.prepare_run_dir(first) is False
    resolved = (first.run.path / "resolved.yaml").read_text(encoding="utf-8")
    assert f"  train:\n  - datasets/demo/address.jsonl\n  - {corrections}\n" in resolved
    script = (first.run.path / "commands.sh").read_text(encoding="utf-8")
    assert f"--dataset {REPO / 'datasets/demo/address.jsonl'} {corrections} " in script
    assert pipeline.prepare_run_dir(_demo_plan(tmp_path, files)) is True
    with pytest.raises(SwiftpipeError, match=r"different recipe:\n.*corrections"):
        pipeline.prepare_run_dir(_demo_plan(tmp_path, "data.train=[datasets/demo/address.jsonl]"))


def test_leaderboard_and_compare_show_a_list_of_training_files(tmp_path):
    import yaml

    from swiftpipe.evaluation import compare
    from swiftpipe.evaluation import leaderboard as runs
    from tests.test_compare import make_run

    a = make_run(tmp_path, "a", rank=8, outcomes=[True, False], losses=[1.0])
    b = make_run(tmp_path, "b", rank=8, outcomes=[True, True], losses=[0.5])
    for run, train in ((a, "d/train.jsonl"), (b, ["d/train.jsonl", "corrections.jsonl"])):
        data = yaml.safe_load((run / "resolved.yaml").read_text())
        (run / "resolved.yaml").write_text(yaml.safe_dump({**data, "data": {"train": train}}))
    frame = runs.leaderboard(tmp_path, sort="data.train")  # mixed str / list cells sort as text
    assert list(frame["data.train"]) == ["d/train.jsonl", "[d/train.jsonl, corrections.jsonl]"]
    assert "| [d/train.jsonl, corrections.jsonl] |" in runs.render(frame, "markdown")
    picked = runs.leaderboard(tmp_path, where="`data.train` == '[d/train.jsonl, corrections.jsonl]'")
    assert list(picked["run"]) == ["demo/b"]
    assert compare.param_diff(a, b) == [("data.train", "d/train.jsonl", ["d/train.jsonl", "corrections.jsonl"])]
    assert "| data.train | d/train.jsonl | [d/train.jsonl, corrections.jsonl] |" in compare.comparison(a, b)
