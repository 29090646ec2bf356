"""Planning a run and (re)opening its directory: the same recipe reopens it, another is refused."""

import pytest

from swiftpipe.core.errors import RecipeError, SwiftpipeError
from swiftpipe.recipe.load import load_recipe
from swiftpipe.train import pipeline
from tests.helpers import REPO, training_row

ADDRESS = REPO / "recipes" / "address-qwen3-0.6b.yaml"


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


def test_a_run_with_several_training_files_resumes_and_refuses_a_changed_list(tmp_path, demo_plan):
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(training_row(), encoding="utf-8")
    files = f"data.train=[datasets/demo/address.jsonl,{corrections}]"
    first = demo_plan(files)
    assert pipeline.prepare_run_dir(first) is False
    resolved = (first.run.path / "resolved.yaml").read_text(encoding="utf-8")
    assert f"  train:\n  - datasets/demo/address.jsonl\n  - {corrections}\n" in resolved
    script = (first.run.path / "commands.sh").read_text(encoding="utf-8")
    assert f"--dataset {REPO / 'datasets/demo/address.jsonl'} {corrections} " in script
    assert pipeline.prepare_run_dir(demo_plan(files)) is True
    with pytest.raises(SwiftpipeError, match=r"different recipe:\n.*corrections"):
        pipeline.prepare_run_dir(demo_plan("data.train=[datasets/demo/address.jsonl]"))


def test_extract_settings_are_not_a_recipe_change_for_a_run(tmp_path):
    """`extract.*` is read by `swiftpipe extract` only: a run reopens with other extract settings."""
    first = pipeline.plan(load_recipe(ADDRESS, [f"output.root={tmp_path}"]), run_id="r", base=REPO)
    assert pipeline.prepare_run_dir(first) is False
    again = pipeline.plan(load_recipe(ADDRESS, [f"output.root={tmp_path}", "extract.chunk_rows=50",
                                                "extract.engine=ray"]), run_id="r", base=REPO)
    assert pipeline.prepare_run_dir(again) is True


def test_a_run_made_before_serve_dtype_existed_reopens(tmp_path, demo_plan):
    """serve.dtype is new: a resolved.yaml without it is the same recipe while it is auto."""
    first = demo_plan()
    assert pipeline.prepare_run_dir(first) is False
    stored = first.run.resolved.read_text(encoding="utf-8")
    assert "  dtype: auto\n" in stored
    first.run.resolved.write_text(stored.replace("  dtype: auto\n", ""), encoding="utf-8")
    assert pipeline.prepare_run_dir(demo_plan()) is True
    with pytest.raises(RecipeError, match=r"different recipe:\n.*dtype: float32"):
        pipeline.prepare_run_dir(demo_plan("serve.dtype=float32"))
    env = (first.run.path / "env.json").read_text(encoding="utf-8")
    assert '"native_bf16"' in env  # what the CPU offers vLLM, beside the versions
