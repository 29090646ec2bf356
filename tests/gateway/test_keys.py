"""API keys (hashes only, revocation) and the per-key rate limit."""

import pytest

from swiftpipe.gateway import keys, store


def test_keys_are_stored_as_hashes_and_revoked(tmp_path, gateway_db):
    db = gateway_db
    conn = store.connect(db)
    key, secret = keys.create(conn, "team-a", rpm=5)
    assert secret.startswith("sk-sp-") and keys.find(conn, secret).id == key.id
    assert keys.key_hash(secret) in keys.active(conn)
    revoked = keys.revoke(conn, "team-a")
    assert revoked == [key.id] and keys.find(conn, secret).revoked is not None and keys.active(conn) == {}
    with pytest.raises(store.StoreError, match="no active key with id or name 'team-a'"):
        keys.revoke(conn, "team-a")
    for table in ("keys", "events"):  # every stored value, whatever the store
        assert not [r for r in conn.execute(f"SELECT * FROM {table}") if any(secret in str(v) for v in r)], table
    for path in tmp_path.iterdir():  # a file, and its WAL/SHM
        assert secret.encode() not in path.read_bytes(), path
    conn.close()
    if not isinstance(db, str):
        assert secret.encode() not in db.read_bytes()


def test_rate_limiter_sliding_window():
    limiter = keys.RateLimiter()
    key = keys.Key("key_1", "k", 3, None)
    assert [limiter.retry_after(key, now=t) for t in (0, 1, 2)] == [None, None, None]
    assert limiter.retry_after(key, now=10) == 50  # the first of the three leaves the window at t=60
    assert limiter.retry_after(key, now=60.5) is None
    assert limiter.retry_after(keys.Key("key_2", "free", None, None), now=0) is None


def test_roles_expiry_versions_and_rotation(tmp_path, gateway_db):
    import time

    conn = store.connect(gateway_db)
    client, _ = keys.create(conn, "app")
    assert client.role == "client" and not client.may("reviewer") and client.may_call("v9")
    reviewer, _ = keys.create(conn, "ann", role="reviewer", versions=["v1", "v2"])
    assert reviewer.may("client") and reviewer.may("reviewer") and not reviewer.may("admin")
    assert reviewer.may_call("v2") and not reviewer.may_call("v3")
    with pytest.raises(store.StoreError, match="--role 'root': choose one of client, reviewer, admin"):
        keys.create(conn, "x", role="root")
    soon, secret = keys.create(conn, "temp", expires=time.time() + 3600)
    assert keys.key_hash(secret) in keys.active(conn)
    assert keys.key_hash(secret) not in keys.active(conn, now=time.time() + 7200)  # expired keys are not active
    assert keys.parse_duration("90d", "--expires") == 90 * 86400 and keys.parse_duration("24h", "x") == 86400
    with pytest.raises(store.StoreError, match="--grace 'soon': give a duration like 90d"):
        keys.parse_duration("soon", "--grace")

    successor, new_secret, old = keys.rotate(conn, "ann", grace_s=60)
    assert old == [reviewer.id] and successor.name == "ann" and successor.role == "reviewer"
    assert successor.versions == ("v1", "v2") and keys.find(conn, new_secret).id == successor.id
    listed = {k["id"]: k for k in keys.listing(conn)}
    assert listed[reviewer.id]["expires"] == pytest.approx(time.time() + 60, abs=5)  # the grace period
    assert listed[successor.id]["expires"] is None
    with pytest.raises(store.StoreError, match="no active key with id or name 'nobody' to rotate"):
        keys.rotate(conn, "nobody", grace_s=60)

    keys.touch(conn, {client.id: 1000.0})
    keys.touch(conn, {client.id: 900.0})  # an older use does not go back in time
    assert {k["id"]: k for k in keys.listing(conn)}[client.id]["last_used"] == 1000.0
    conn.close()
