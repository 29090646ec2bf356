"""What the tests of `swiftpipe run`'s parts share: the plan of a demo run."""

import pytest

from swiftpipe.recipe.load import load_recipe
from swiftpipe.train import pipeline
from tests.helpers import REPO


@pytest.fixture
def demo_plan(tmp_path):
    """`demo_plan(*overrides)`: the plan of recipes/demo-cpu.yaml, run id r, its runs under tmp_path/runs."""

    def plan(*overrides: str) -> pipeline.RunPlan:
        loaded = load_recipe(REPO / "recipes" / "demo-cpu.yaml", [f"output.root={tmp_path / 'runs'}", *overrides])
        return pipeline.plan(loaded, run_id="r", base=REPO)

    return plan
