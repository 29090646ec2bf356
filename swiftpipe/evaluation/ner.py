"""Entity-level NER scores for entity-list answers: {type: [entity text, ...], ...}.

An entity counts once per (type, text) in an answer, as in the span-dict sources (CLUENER lists each
distinct entity once per type). Per type: precision = tp / predicted, recall = tp / gold,
F1 = 2PR / (P + R). Micro sums the counts over types; macro averages the per-type scores over the
types that occur in the gold or the predictions.
"""

from __future__ import annotations

from typing import Any, Iterable


def entity_sets(answer: Any) -> dict[str, set[str]]:
    """{type: set of entity texts}; anything that is not an entity-list object counts as no entities."""
    if not isinstance(answer, dict):
        return {}
    out: dict[str, set[str]] = {}
    for kind, entities in answer.items():
        if isinstance(entities, list):
            out[kind] = {e for e in entities if isinstance(e, str)}
        elif isinstance(entities, str):
            out[kind] = {entities}
    return out


def counts(gold: Any, prediction: Any) -> dict[str, list[int]]:
    """{type: [true positives, predicted, gold]} for one row."""
    g, p = entity_sets(gold), entity_sets(prediction)
    return {kind: [len(g.get(kind, set()) & p.get(kind, set())), len(p.get(kind, ())), len(g.get(kind, ()))]
            for kind in sorted(set(g) | set(p))}


def _prf(tp: int, predicted: int, gold: int) -> dict[str, float]:
    precision = tp / predicted if predicted else (1.0 if not gold else 0.0)
    recall = tp / gold if gold else (1.0 if not predicted else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def scores(pairs: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Per-type, micro and macro precision / recall / F1 over (gold, prediction) pairs."""
    totals: dict[str, list[int]] = {}
    for gold, prediction in pairs:
        for kind, (tp, predicted, gold_n) in counts(gold, prediction).items():
            t = totals.setdefault(kind, [0, 0, 0])
            t[0] += tp
            t[1] += predicted
            t[2] += gold_n
    per_type = {kind: {**_prf(*t), "tp": t[0], "predicted": t[1], "gold": t[2]}
                for kind, t in sorted(totals.items()) if t[1] or t[2]}
    tp, predicted, gold = (sum(t[i] for t in totals.values()) for i in range(3))
    macro = {m: (sum(s[m] for s in per_type.values()) / len(per_type) if per_type else 0.0)
             for m in ("precision", "recall", "f1")}
    return {"per_type": per_type, "micro": {**_prf(tp, predicted, gold), "tp": tp, "predicted": predicted,
                                             "gold": gold}, "macro": macro}
