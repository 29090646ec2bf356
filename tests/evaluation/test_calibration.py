import random
from itertools import product

import pytest

from swiftpipe.evaluation.calibration import (
    accept_threshold,
    auroc,
    bootstrap_ci,
    bootstrap_threshold,
    expected_calibration_error,
    mcnemar_exact,
    reliability_table,
)


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_known_values():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5] * 4, [True, False, True, False]) == 0.5  # all tied
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert auroc([0.3, 0.4], [True, True]) is None and auroc([], []) is None
    assert auroc([None, 0.5], [False, True]) == 1.0  # None counts as 0.0
    with pytest.raises(ValueError):
        auroc([0.1], [True, False])


def test_auroc_matches_brute_force_and_scipy():
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.1, 0.2, 0.5, 0.9, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.6 for _ in range(n)]
        if all(labels) or not any(labels):
            continue
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    stats = pytest.importorskip("scipy.stats")
    scores = [rng.random() for _ in range(300)] + [0.5] * 50
    labels = [rng.random() < s for s in scores]
    u = stats.mannwhitneyu([s for s, y in zip(scores, labels) if y], [s for s, y in zip(scores, labels) if not y]).statistic
    assert auroc(scores, labels) == pytest.approx(u / (sum(labels) * (len(labels) - sum(labels))))


def test_reliability_table():
    scores = [0.05, 0.15, 0.15, 0.95, 1.0, 0.999, None]
    labels = [False, True, False, True, True, False, False]
    table = reliability_table(scores, labels, bins=10)
    assert len(table) == 10 and sum(b.count for b in table) == 7
    assert table[0].count == 2 and table[0].accuracy == 0.0  # 0.05 and None (-> 0.0)
    assert table[1].count == 2 and table[1].accuracy == 0.5 and table[1].mean_confidence == pytest.approx(0.15)
    assert table[9].count == 3 and table[9].accuracy == pytest.approx(2 / 3)  # 1.0 falls in the last bin
    assert table[5].count == 0 and table[5].accuracy is None
    assert table[0].lo == 0.0 and table[9].hi == 1.0
    ece = expected_calibration_error(table)
    expected = (2 / 7) * abs(0 - 0.025) + (2 / 7) * abs(0.5 - 0.15) + (3 / 7) * abs(2 / 3 - (0.95 + 1 + 0.999) / 3)
    assert ece == pytest.approx(expected)
    assert expected_calibration_error(reliability_table([], [], bins=3)) is None
    with pytest.raises(ValueError):
        reliability_table([1.5], [True])
    with pytest.raises(ValueError):
        reliability_table([0.5], [True], bins=0)


def brute_threshold(scores, labels, target):
    best = None
    for t in sorted({s for s in scores if s is not None}):
        acc = [y for s, y in zip(scores, labels) if s is not None and s >= t]
        if acc and sum(acc) / len(acc) >= target - 1e-12:
            return t, len(acc), sum(acc)
    return best


def test_accept_threshold_examples():
    scores = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, None]
    labels = [True, True, True, False, True, False, True]
    th = accept_threshold(scores, labels, 0.8)
    # >=0.7: 4/5 = 0.8 qualifies; >=0.6: 4/6 does not
    assert (th.threshold, th.accepted, th.correct, th.n) == (0.7, 5, 4, 7)
    assert th.coverage == pytest.approx(5 / 7) and th.accuracy == pytest.approx(0.8)
    th = accept_threshold(scores, labels, 1.0)
    assert th.threshold == 0.9 and th.accepted == 3
    assert accept_threshold([0.5, 0.4], [False, False], 0.9) is None
    assert accept_threshold([None], [True], 0.5) is None and accept_threshold([], [], 0.5) is None
    # ties: a threshold accepts every row at that score
    th = accept_threshold([0.9, 0.9, 0.9], [True, False, True], 0.6)
    assert th.accepted == 3 and th.threshold == 0.9
    assert accept_threshold([0.9, 0.9, 0.9], [True, False, True], 0.7) is None
    # non-monotone: the lowest qualifying threshold wins although a higher one fails
    th = accept_threshold([0.9, 0.8, 0.7, 0.6], [False, True, True, True], 0.75)
    assert th.threshold == 0.6 and th.accuracy == 0.75


def test_accept_threshold_matches_brute_force():
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 30)
        scores = [None if rng.random() < 0.1 else round(rng.random(), 1) for _ in range(n)]
        labels = [rng.random() < 0.7 for _ in range(n)]
        target = rng.choice([0.5, 0.7, 0.9, 1.0])
        th = accept_threshold(scores, labels, target)
        expect = brute_threshold(scores, labels, target)
        if expect is None:
            assert th is None
        else:
            assert (th.threshold, th.accepted, th.correct) == expect


def test_bootstrap_threshold():
    rng = random.Random(11)
    scores = [rng.random() for _ in range(400)]
    labels = [rng.random() < 0.3 + 0.7 * s for s in scores]
    ci = bootstrap_threshold(scores, labels, 0.9, n_boot=300, seed=1)
    assert ci.threshold is not None and ci.resamples == 300
    assert ci.coverage.lo <= ci.coverage.estimate <= ci.coverage.hi
    assert ci.accuracy.lo <= ci.accuracy.estimate <= ci.accuracy.hi
    assert ci.accuracy.lo < 0.9  # a fixed threshold can miss the target on new rows
    again = bootstrap_threshold(scores, labels, 0.9, n_boot=300, seed=1)
    assert again == ci  # seeded
    refit = bootstrap_threshold(scores, labels, 0.9, n_boot=300, seed=1, refit=True)
    assert refit.accuracy.lo >= 0.9 - 1e-12  # selection: >= target whenever found
    assert refit.coverage.lo <= refit.coverage.estimate <= refit.coverage.hi
    none = bootstrap_threshold([0.5, 0.4], [False, False], 0.9, n_boot=50)
    assert none.threshold is None and none.coverage.lo is None and none.resamples == 0
    none_refit = bootstrap_threshold([0.5, 0.4], [False, False], 0.9, n_boot=50, refit=True)
    assert none_refit.no_threshold == 50 and none_refit.coverage.hi == 0.0 and none_refit.accuracy.lo is None


def test_mcnemar_exact_values():
    # b=1, c=6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    a = [True] * 1 + [False] * 6 + [True] * 10 + [False] * 3
    b = [False] * 1 + [True] * 6 + [True] * 10 + [False] * 3
    r = mcnemar_exact(a, b)
    assert (r.only_a, r.only_b) == (1, 6) and r.p_value == pytest.approx(0.125)
    assert mcnemar_exact([False] * 5, [True] * 5).p_value == pytest.approx(2 / 32)
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0  # b == c
    assert mcnemar_exact([True, True], [True, True]) == (mcnemar_exact([], []))  # no discordant pairs
    assert mcnemar_exact([], []).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [])


def test_mcnemar_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for only_a, only_b in product([0, 1, 3, 10, 40], [0, 2, 5, 17, 60]):
        if only_a + only_b == 0:
            continue
        a = [True] * only_a + [False] * only_b
        b = [False] * only_a + [True] * only_b
        expect = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
        assert mcnemar_exact(a, b).p_value == pytest.approx(expect, rel=1e-9)
    big = mcnemar_exact([True] * 3000 + [False] * 3100, [False] * 3000 + [True] * 3100)
    assert 0 < big.p_value < 1


def test_bootstrap_ci_exact_match():
    values = [1] * 80 + [0] * 20
    ci = bootstrap_ci(values, n_boot=2000, seed=0)
    assert ci.estimate == 0.8
    assert 0.70 < ci.lo < 0.75 and 0.85 < ci.hi < 0.89  # normal approx: 0.8 +- 1.96*0.04
    assert bootstrap_ci([1, 1, 1], n_boot=100) == bootstrap_ci([True, True, True], n_boot=100)
    assert bootstrap_ci([1, 1, 1], n_boot=100).lo == 1.0
    assert bootstrap_ci([]).estimate is None
    med = bootstrap_ci([1, 2, 3, 4, 100], stat=lambda xs: sorted(xs)[len(xs) // 2], n_boot=200)
    assert med.estimate == 3
