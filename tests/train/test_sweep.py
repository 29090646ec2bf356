"""Sweeps: one run per point of the grid, each with its own readable run id."""

import pytest

from swiftpipe.core.errors import RecipeError
from swiftpipe.train import sweep
from tests.helpers import run_cli


def test_sweep_point_ids_are_unique_for_distinct_points():
    axis = ("lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj],"
            "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]")
    out = run_cli("sweep", "recipes/demo-cpu.yaml", axis, "--sweep-id", "s", "--dry-run")
    assert out.returncode == 0, out.stderr
    ids = [line.rsplit("--run-id ", 1)[1] for line in out.stdout.splitlines() if "--run-id" in line]
    assert len(ids) == 2 and ids[0] != ids[1], out.stdout
    assert sweep.slug("8") == "8" and sweep.slug("1e-4") == "1e-4"  # short values stay readable
    with pytest.raises(RecipeError, match="map to the same run id"):
        sweep.point_ids("s", [{"lora.rank": "8"}, {"lora.rank": "8"}], ["lora.rank"])
