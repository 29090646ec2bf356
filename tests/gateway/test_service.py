"""`swiftpipe serve` planning its versions: every mistake refused before anything starts."""

import pytest

from tests.helpers import DEMO_RECIPE


def test_version_planning_errors(tmp_path):
    from swiftpipe.gateway.service import GatewayError, plan_versions, split_name

    assert split_name("v1=runs/a") == ("v1", "runs/a")
    assert split_name("runs/a") == (None, "runs/a")
    recipe = DEMO_RECIPE
    with pytest.raises(GatewayError, match="nothing to serve"):
        plan_versions([], [], recipe=None, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(GatewayError, match="does not exist"):
        plan_versions([str(tmp_path / "nope")], [], recipe=None, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(GatewayError, match="NAME=URL"):
        plan_versions([], ["v1:http://x"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    with pytest.raises(GatewayError, match="both named 'v1'"):
        plan_versions([], ["v1=http://a/v1", "v1=http://b/v1"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    planned = plan_versions([], ["v1=http://127.0.0.1:9/"], recipe=recipe, names=[], base=False, log_dir=tmp_path)
    assert planned[0].url == "http://127.0.0.1:9/v1" and planned[0].recipe.name == "demo-cpu"
