"""Judging a confidence score against exact match: AUROC, a reliability table, the auto-accept
threshold with bootstrap intervals, an exact McNemar test, and a bootstrap interval for exact match.

Pure Python (``random`` and ``math`` only). ``scores`` are row confidences in [0, 1] (None: no
confidence — never auto-accepted; for AUROC and the reliability table it counts as ``none_as``,
0.0 by default), ``labels`` are exact-match booleans of the same rows.

Percentile intervals use linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional, Sequence

from swiftpipe.core.stats import percentile
from swiftpipe.task.confidence import METRIC, METRICS


def _check(scores: Sequence[Optional[float]], labels: Sequence[bool]) -> None:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")


def _filled(scores: Sequence[Optional[float]], none_as: float) -> list[float]:
    return [none_as if s is None else float(s) for s in scores]


# ---------------------------------------------------------------- AUROC


def auroc(scores: Sequence[Optional[float]], labels: Sequence[bool], *, none_as: float = 0.0) -> Optional[float]:
    """Probability that a random correct row scores above a random wrong one (ties count half):
    Mann-Whitney U / (n_correct * n_wrong), from mid-ranks. None if either class is empty."""
    _check(scores, labels)
    values = _filled(scores, none_as)
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1  # ranks are 1-based
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


# ---------------------------------------------------------------- reliability


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float  # [lo, hi); the last bin includes 1.0
    count: int
    mean_confidence: Optional[float]
    accuracy: Optional[float]  # exact-match rate of the bin's rows


def reliability_table(scores: Sequence[Optional[float]], labels: Sequence[bool], bins: int = 10, *,
                      none_as: float = 0.0) -> list[Bin]:
    """Equal-width bins over [0, 1]: rows, mean confidence and accuracy per bin."""
    _check(scores, labels)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    values = _filled(scores, none_as)
    rows: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for v, y in zip(values, labels):
        if not 0.0 <= v <= 1.0 or math.isnan(v):
            raise ValueError(f"confidence {v} outside [0, 1]")
        rows[min(int(v * bins), bins - 1)].append((v, bool(y)))
    table = []
    for b, members in enumerate(rows):
        n = len(members)
        table.append(Bin(lo=b / bins, hi=(b + 1) / bins, count=n,
                         mean_confidence=sum(v for v, _ in members) / n if n else None,
                         accuracy=sum(y for _, y in members) / n if n else None))
    return table


def expected_calibration_error(table: Sequence[Bin]) -> Optional[float]:
    """Sum over bins of (rows / all rows) * |accuracy - mean confidence|."""
    total = sum(b.count for b in table)
    if total == 0:
        return None
    return sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in table
               if b.count and b.accuracy is not None and b.mean_confidence is not None)


# ---------------------------------------------------------------- auto-accept threshold


@dataclass(frozen=True)
class Threshold:
    threshold: float  # accept rows with confidence >= threshold
    accepted: int
    correct: int  # accepted rows that are exact matches
    n: int  # all rows (None confidences included: they are never accepted)

    @property
    def coverage(self) -> float:
        return self.accepted / self.n

    @property
    def accuracy(self) -> float:
        return self.correct / self.accepted


def accept_threshold(scores: Sequence[Optional[float]], labels: Sequence[bool], target: float) -> Optional[Threshold]:
    """The lowest threshold t (among the scores seen) such that the rows with confidence >= t have
    exact match >= target: the largest coverage that reaches the target. None if no t does (or
    no row has a confidence). Exact-match rate need not fall monotonically with t; the lowest
    qualifying t is taken, as asked, even if some higher t would not qualify."""
    _check(scores, labels)
    if not labels:
        return None
    pairs = sorted(((float(s), bool(y)) for s, y in zip(scores, labels) if s is not None), key=lambda p: -p[0])
    best: Optional[Threshold] = None
    accepted = correct = 0
    i = 0
    while i < len(pairs):
        t = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == t:  # a threshold accepts all tied rows
            accepted += 1
            correct += pairs[i][1]
            i += 1
        if correct >= target * accepted:  # correct / accepted >= target, without rounding trouble
            best = Threshold(threshold=t, accepted=accepted, correct=correct, n=len(labels))
    return best


@dataclass(frozen=True)
class Interval:
    estimate: Optional[float]
    lo: Optional[float]
    hi: Optional[float]


@dataclass(frozen=True)
class ThresholdCI:
    threshold: Optional[Threshold]  # on all rows
    coverage: Interval
    accuracy: Interval  # of the accepted rows
    resamples: int
    no_threshold: int  # refit: resamples where no threshold reached the target (coverage 0 there)
    nothing_accepted: int  # resamples with no accepted row (accuracy undefined: left out of its interval)


def bootstrap_threshold(scores: Sequence[Optional[float]], labels: Sequence[bool], target: float, *,
                        n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, refit: bool = False) -> ThresholdCI:
    """Percentile bootstrap (rows resampled with replacement) of coverage and accepted accuracy.

    refit=False (default): the threshold found on all rows is kept fixed and applied to every
    resample — the uncertainty of what that threshold delivers. refit=True: the search is rerun
    on every resample — selection included (its accuracy is >= target by construction whenever a
    threshold is found; coverage is 0 where none is)."""
    _check(scores, labels)
    found = accept_threshold(scores, labels, target)
    n = len(labels)
    rng = random.Random(seed)
    coverages: list[float] = []
    accuracies: list[float] = []
    no_threshold = nothing = 0
    if n and (found is not None or refit):
        for _ in range(n_boot):
            idx = [rng.randrange(n) for _ in range(n)]
            s = [scores[i] for i in idx]
            y = [labels[i] for i in idx]
            if refit:
                th = accept_threshold(s, y, target)
                if th is None:
                    no_threshold += 1
                    coverages.append(0.0)
                    nothing += 1
                    continue
                accepted, correct = th.accepted, th.correct
            else:
                t = found.threshold  # type: ignore[union-attr]
                accepted = sum(1 for v in s if v is not None and v >= t)
                correct = sum(1 for v, ok in zip(s, y) if v is not None and v >= t and ok)
            coverages.append(accepted / n)
            if accepted:
                accuracies.append(correct / accepted)
            else:
                nothing += 1
    coverages.sort()
    accuracies.sort()

    def interval(estimate: Optional[float], values: list[float]) -> Interval:
        if not values:
            return Interval(estimate, None, None)
        return Interval(estimate, percentile(values, alpha / 2), percentile(values, 1 - alpha / 2))

    return ThresholdCI(threshold=found,
                       coverage=interval(found.coverage if found else None, coverages),
                       accuracy=interval(found.accuracy if found else None, accuracies),
                       resamples=n_boot if coverages else 0, no_threshold=no_threshold, nothing_accepted=nothing)


# ---------------------------------------------------------------- comparing two models, exact match


@dataclass(frozen=True)
class McNemar:
    only_a: int  # rows A gets right and B wrong
    only_b: int  # rows B gets right and A wrong
    p_value: float  # two-sided exact


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """Exact McNemar test on paired exact-match results: under H0 the discordant pairs split
    Binomial(n, 1/2); two-sided p = min(1, 2 * P(X <= min(only_a, only_b))) (exact rationals)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"{len(a_correct)} rows for A but {len(b_correct)} for B")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(Fraction(1), Fraction(2 * tail, 2**n))
    return McNemar(only_a, only_b, float(p))


def bootstrap_ci(values: Sequence[float], stat: Optional[Callable[[Sequence[float]], float]] = None, *,
                 n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``stat`` (the mean: exact match from 0/1 values)."""
    stat = stat or (lambda xs: sum(xs) / len(xs))
    if not values:
        return Interval(None, None, None)
    values = [float(v) for v in values]
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    return Interval(stat(values), percentile(stats, alpha / 2), percentile(stats, 1 - alpha / 2))


# ---------------------------------------------------------------- an evaluation's calibration

# P(exact value), least likely token, geometric mean (swiftpipe.task.confidence.METRICS); METRIC: the one kept
AGGREGATES = METRICS


def _rounded(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 4)


def confidence_metrics(records: Sequence[dict], accept_target: float) -> Optional[dict]:
    """metrics.json's `confidence`, from eval records carrying `confidence` ({field: p} by the kept
    aggregate), `row_confidence` and `confidence_aggregates` ({aggregate: {field: p}}); None when
    no record has a confidence (the server returned no logprobs)."""
    if not any(r.get("row_confidence") is not None for r in records):
        return None
    rows = [r.get("row_confidence") for r in records]
    exact = [bool(r["correct"]) for r in records]

    def row_by(aggregate: str) -> list[Optional[float]]:
        out: list[Optional[float]] = []
        for r in records:
            values = ((r.get("confidence_aggregates") or {}).get(aggregate) or {}).values()
            out.append(min(values) if values and None not in values else None)
        return out

    fields: dict[str, dict] = {}
    names = sorted({name for r in records for name in (r.get("fields") or {})})
    pooled: dict[str, tuple[list[Optional[float]], list[bool]]] = {a: ([], []) for a in AGGREGATES}
    for name in names:
        hits = [bool((r.get("fields") or {}).get(name)) for r in records]
        entry: dict[str, Any] = {}
        for aggregate in AGGREGATES:
            scores = [((r.get("confidence_aggregates") or {}).get(aggregate) or {}).get(name) for r in records]
            entry[aggregate] = _rounded(auroc(scores, hits))
            pooled[aggregate][0].extend(scores)
            pooled[aggregate][1].extend(hits)
        fields[name] = {"auroc": entry[METRIC], "auroc_by_aggregate": entry}
    table = reliability_table(rows, exact)
    found = bootstrap_threshold(rows, exact, accept_target)
    th = found.threshold
    return {
        "aggregate": METRIC,
        "rows_scored": sum(1 for v in rows if v is not None),
        "auroc": _rounded(auroc(rows, exact)),
        "auroc_by_aggregate": {a: _rounded(auroc(row_by(a), exact)) for a in AGGREGATES},
        "field_auroc_by_aggregate": {a: _rounded(auroc(*pooled[a])) for a in AGGREGATES},
        "fields": fields,
        "reliability": [{"lo": b.lo, "hi": b.hi, "count": b.count, "mean_confidence": _rounded(b.mean_confidence),
                         "accuracy": _rounded(b.accuracy)} for b in table],
        "ece": _rounded(expected_calibration_error(table)),
        "accept_target": accept_target,
        "accept_threshold": float(f"{th.threshold:.4g}") if th else None,  # significant digits: can be 1e-9
        "coverage": _rounded(th.coverage) if th else None,
        "accepted": th.accepted if th else 0,
        "accepted_exact_match": _rounded(th.accuracy) if th else None,
        "coverage_ci": [_rounded(found.coverage.lo), _rounded(found.coverage.hi)] if found.coverage.lo is not None else None,
        "accepted_exact_match_ci": [_rounded(found.accuracy.lo), _rounded(found.accuracy.hi)]
        if found.accuracy.lo is not None else None,
        "resamples": found.resamples,
    }
