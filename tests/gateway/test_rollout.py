"""Traffic weights, sticky routing and the versions kept across restarts."""

import pytest

from swiftpipe.gateway import rollout, store


def test_weights_parse_and_apply():
    assert rollout.parse_weights(["a=90,b=10"]) == {"a": 90.0, "b": 10.0}
    assert rollout.parse_weights(["a=90", "b=10"]) == {"a": 90.0, "b": 10.0}
    for bad in (["a"], ["a=x"], ["a=101"], ["=5"]):
        with pytest.raises(rollout.RolloutError, match="NAME=PERCENT"):
            rollout.parse_weights(bad)
    current = {"v1": 90.0, "v2": 10.0}
    assert rollout.apply(current, {"v2": 50}) == {"v1": 50.0, "v2": 50.0}
    assert rollout.apply(current, {"v2": 100}) == {"v1": 0.0, "v2": 100.0}
    assert rollout.apply(current, {"v2": 0}) == {"v1": 100.0, "v2": 0.0}
    assert rollout.apply({"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 40}) == {"a": 40, "b": 30.0, "c": 30.0}
    with pytest.raises(rollout.RolloutError, match="unknown version.*v3.*versions: v1, v2"):
        rollout.apply(current, {"v3": 10})
    with pytest.raises(rollout.RolloutError, match="add up to 110"):
        rollout.apply(current, {"v1": 60, "v2": 50})
    with pytest.raises(rollout.RolloutError, match="add up to 60"):
        rollout.apply(current, {"v1": 30, "v2": 30})


def test_sticky_split_follows_weights():
    ids = [f"key_{i:04x}" for i in range(2000)]
    weights = [("v1", 80.0), ("v2", 20.0)]
    chosen = [rollout.choose(weights, k) for k in ids]
    share = chosen.count("v1") / len(ids)
    assert 0.77 < share < 0.83, share
    assert chosen == [rollout.choose(weights, k) for k in ids]  # sticky
    # Raising the canary keeps every key it had.
    wider = [rollout.choose([("v1", 50.0), ("v2", 50.0)], k) for k in ids]
    assert all(w == "v2" for c, w in zip(chosen, wider) if c == "v2")
    assert {rollout.choose([("v1", 0.0), ("v2", 100.0)], k) for k in ids} == {"v2"}


def test_register_keeps_a_rollout_across_restarts(tmp_path, gateway_db):
    conn = store.connect(gateway_db)
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], None) == {"v1": 100.0, "v2": 0.0}
    rollout.set_weights(conn, {"v2": 30})
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], None) == {"v1": 70.0, "v2": 30.0}
    assert rollout.register(conn, [("v1", "a"), ("v2", "b")], {"v1": 10, "v2": 90}) == {"v1": 10.0, "v2": 90.0}
    assert rollout.register(conn, [("v3", "c")], None) == {"v3": 100.0}
    events = [r["kind"] for r in conn.execute("SELECT kind FROM events ORDER BY ts")]
    assert events.count("rollout") == 1 and events.count("serve") == 4
