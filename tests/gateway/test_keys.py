"""API keys (hashes only, revocation) and the per-key rate limit."""

import pytest

from swiftpipe.gateway import keys, store


def test_keys_are_stored_as_hashes_and_revoked(tmp_path):
    db = tmp_path / "g.sqlite"
    conn = store.connect(db)
    key, secret = keys.create(conn, "team-a", rpm=5)
    assert secret.startswith("sk-sp-") and keys.find(conn, secret).id == key.id
    assert keys.key_hash(secret) in keys.active(conn)
    revoked = keys.revoke(conn, "team-a")
    assert revoked == [key.id] and keys.find(conn, secret).revoked is not None and keys.active(conn) == {}
    with pytest.raises(store.StoreError, match="no active key with id or name 'team-a'"):
        keys.revoke(conn, "team-a")
    for path in tmp_path.iterdir():  # the file and its WAL/SHM
        assert secret.encode() not in path.read_bytes(), path
    conn.close()
    assert secret.encode() not in db.read_bytes()


def test_rate_limiter_sliding_window():
    limiter = keys.RateLimiter()
    key = keys.Key("key_1", "k", 3, None)
    assert [limiter.retry_after(key, now=t) for t in (0, 1, 2)] == [None, None, None]
    assert limiter.retry_after(key, now=10) == 50  # the first of the three leaves the window at t=60
    assert limiter.retry_after(key, now=60.5) is None
    assert limiter.retry_after(keys.Key("key_2", "free", None, None), now=0) is None
