"""The gateway state's pooled OS randomness (request ids, the audit sample's draws)."""

from swiftpipe.gateway.state import Entropy


def test_entropy_pool_gives_fresh_bytes_across_refills_and_draws_at_the_share():
    pool = Entropy(size=64)  # refilled every few takes
    ids = [pool.take(12).hex() for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(len(i) == 24 for i in ids)
    assert not any(pool.below(0.0) for _ in range(1000)) and all(pool.below(1.0) for _ in range(1000))
    share = sum(pool.below(0.25) for _ in range(20000)) / 20000
    assert 0.23 < share < 0.27
