"""The run directory (its files, checkpoints and stage markers) and the one resolver of `serve` /
`extract --model` targets."""

import json

import pytest

from swiftpipe.recipe.rundir import NotARun, RunDir, resolve_target
from tests.helpers import REPO


def _run(path, **info):
    path.mkdir(parents=True)
    (path / "resolved.yaml").write_text((REPO / "recipes" / "demo-cpu.yaml").read_text(encoding="utf-8"))
    (path / "run.json").write_text(json.dumps({"name": "demo", "run_id": path.name, "cwd": str(REPO), **info}))
    return path


def test_run_dir_reads_and_updates_its_files(tmp_path):
    run = RunDir.open(_run(tmp_path / "demo" / "r1", status="running sft"))
    assert (run.name, run.run_id, run.base, run.final_model) == ("demo", "r1", REPO, None)
    run.update(status="done", final_model="/m")
    assert run.info()["status"] == "done" and RunDir(run.path).final_model == "/m" and run.status() == "done"
    assert run.recipe().name == "demo-cpu" and run.params()["train"]["tuner"] == "lora"
    assert [r.path for r in RunDir.find(tmp_path)] == [run.path]
    with pytest.raises(NotARun, match="is not a run directory"):
        RunDir.open(tmp_path)


def test_targets_are_resolved_once_for_serve_and_extract(tmp_path, capsys):
    unfinished = _run(tmp_path / "demo" / "r1", status="failed in sft")
    with pytest.raises(NotARun, match=r"has no final model yet \(status: failed in sft\).*--run-id r1"):
        resolve_target(str(unfinished), recipe=None)
    assert resolve_target(str(unfinished), recipe=None, final_model=False).model_dir is None
    done = _run(tmp_path / "demo" / "r2", final_model=str(tmp_path / "m"))
    given = RunDir(done).recipe()
    found = resolve_target(str(done), recipe=given, recipe_from="x.yaml", option="--model ")
    assert found.run is not None and found.model_dir == str(tmp_path / "m") and found.base == REPO
    assert "--recipe x.yaml is ignored" in capsys.readouterr().err
    with pytest.raises(NotARun, match=r"--model .*nope: no such run or model directory \(it does not exist\)"):
        resolve_target(str(tmp_path / "nope"), recipe=None, option="--model ")
    (tmp_path / "model").mkdir()
    with pytest.raises(NotARun, match="nor a model directory \\(no config.json\\)"):
        resolve_target(str(tmp_path / "model"), recipe=None)
    (tmp_path / "model" / "config.json").write_text("{}")
    bare = resolve_target(str(tmp_path / "model"), recipe=given)
    assert bare.run is None and bare.recipe is given and bare.model_dir == str(tmp_path / "model")


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
