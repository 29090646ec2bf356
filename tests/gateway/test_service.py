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


def test_the_gateways_own_key_is_admin_long_and_never_printed(tmp_path, monkeypatch):
    import stat

    from swiftpipe.gateway import keys, store
    from swiftpipe.gateway.service import GatewayError, ensure_key, key_file

    db = tmp_path / "gw.sqlite"
    conn = store.connect(db)
    monkeypatch.setenv("SWIFTPIPE_API_KEY", "short")
    with pytest.raises(GatewayError, match="SWIFTPIPE_API_KEY has 5 characters; use at least 32"):
        ensure_key(conn, db)
    monkeypatch.setenv("SWIFTPIPE_API_KEY", "sk-" + "a" * 40)
    assert ensure_key(conn, db) is None and keys.find(conn, "sk-" + "a" * 40).role == "admin"
    monkeypatch.delenv("SWIFTPIPE_API_KEY")
    other = tmp_path / "other.sqlite"
    fresh = store.connect(other)
    made = ensure_key(fresh, other)
    assert made == key_file(other) and stat.S_IMODE(made.stat().st_mode) == 0o600
    secret = made.read_text().strip()
    assert keys.find(fresh, secret).role == "admin"
    assert ensure_key(fresh, other) is None  # a database with keys gets no new one
    conn.close()
    fresh.close()


@pytest.mark.anyio
async def test_a_key_limited_to_versions_sees_and_calls_only_those(tmp_path):
    from swiftpipe.gateway import keys, store
    from tests.gateway.conftest import in_process

    async with in_process(tmp_path, up=("v1", "v2")) as gw:
        conn = store.connect(gw.db)
        _, only_v2 = keys.create(conn, "v2-only", versions=["v2"])
        conn.close()
        assert [m["id"] for m in (await gw.get("/v1/models", key=only_v2)).json()["data"]] == ["v2", "auto"]
        pinned = await gw.post("/v1/extract", {"text": "张三", "model": "v1"}, key=only_v2)
        assert pinned.status_code == 404 and pinned.json()["error"]["versions"] == ["v2"]  # as for an unknown version
        routed = await gw.post("/v1/extract", {"text": "张三"}, key=only_v2)  # the rollout gives v1 all traffic
        assert routed.status_code == 200 and routed.json()["version"] == "v2"


@pytest.fixture
def anyio_backend():
    return "asyncio"
