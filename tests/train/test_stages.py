"""The stages of `swiftpipe run`: which run where, and the checkpoint sft leaves for export."""

import pytest

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.load import load_recipe
from swiftpipe.train import pipeline
from swiftpipe.train.stages import active, last_checkpoint_from_log
from tests.helpers import REPO


def test_last_checkpoint_from_summary_line(tmp_path):
    (tmp_path / "logging.jsonl").write_text(
        '{"loss": 1}\n{"last_model_checkpoint": "/r/train/checkpoint-8", "best_model_checkpoint": null}\n')
    assert last_checkpoint_from_log(tmp_path) == "/r/train/checkpoint-8"


def test_last_checkpoint_missing_summary_is_clear(tmp_path):
    (tmp_path / "logging.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(SwiftpipeError, match="no summary line"):
        last_checkpoint_from_log(tmp_path)


def test_other_nodes_only_train():
    recipe = REPO / "recipes" / "address-qwen3-0.6b.yaml"
    master = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2"]), run_id="r", base=REPO)
    worker = pipeline.plan(load_recipe(recipe, ["hardware.nnodes=2", "hardware.node_rank=1"]), run_id="r",
                           base=REPO)
    assert [s.name for s in active(master)] == ["sft", "export", "eval", "eval-base", "report"]
    assert [s.name for s in active(worker)] == ["sft"]
