import random

import pytest

from swiftpipe.core.stats import percentile, wilson_interval


def test_percentile_interpolates_like_numpy():
    np = pytest.importorskip("numpy")
    xs = [random.Random(2).random() for _ in range(37)]
    for q in (0, 0.025, 0.5, 0.975, 1):
        assert percentile(xs, q) == pytest.approx(float(np.quantile(xs, q)))
    assert percentile([], 0.5) is None


def test_wilson_interval_stays_in_bounds_and_matches_the_textbook():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # the 0/10 case a normal interval gets wrong
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
