"""Scoring answers against gold: exact match, per-field hits and how a field is wrong, NER F1, and
the metrics of a run (with bootstrap intervals and, when the server gave logprobs, calibration).

Exact match is the reference evaluator's rule: the parsed prediction equals the parsed gold answer
(Python `==` on the JSON values: key order does not matter, types do, so "1" != 1).

How a field is wrong (`field_outcomes`), as ExtractBench separates it:
- `correct`: the answer's value equals the gold one;
- `omitted`: gold has a value, the answer's is empty or missing (or there is no parsed answer);
- `invented`: gold is empty and the answer is not, or a verbatim field's value (data.verbatim_fields)
  does not occur in the text (a name or phone made up);
- `wrong`: any other difference (a value of the text, but not the right one).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from swiftpipe.core.stats import percentile
from swiftpipe.evaluation import calibration, ner
from swiftpipe.task.flags import is_empty
from swiftpipe.task.messages import Example

OUTCOMES = ("correct", "wrong", "omitted", "invented")
BOOTSTRAP_RESAMPLES = 1000


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return "string"


def schema_from_gold(rows: Sequence[Example]) -> Optional[dict]:
    """Without a recipe schema: the gold answers' keys (all required) and their value types."""
    if not all(isinstance(r.answer, dict) for r in rows):
        return None
    types: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.answer.items():
            types.setdefault(key, set()).add(_json_type(value))
    properties = {
        key: {"type": sorted(kinds)[0] if len(kinds) == 1 else sorted(kinds)} for key, kinds in types.items()
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def score(gold: Any, prediction: Any) -> tuple[bool, dict[str, bool]]:
    """Exact match (parsed objects equal, as the reference evaluator does) and per-field hits."""
    fields = {}
    if isinstance(gold, dict):
        pred = prediction if isinstance(prediction, dict) else {}
        fields = {k: k in pred and pred[k] == v for k, v in gold.items()}
    return gold == prediction, fields


def field_outcomes(gold: Any, prediction: Any, text: str, verbatim_fields: Sequence[str] = ()) -> dict[str, str]:
    """Per gold field: correct | wrong | omitted | invented (module docstring)."""
    if not isinstance(gold, dict):
        return {}
    pred = prediction if isinstance(prediction, dict) else {}
    out = {}
    for name, want in gold.items():
        got = pred.get(name)
        if name in pred and got == want:
            out[name] = "correct"
        elif is_empty(got):
            out[name] = "omitted" if not is_empty(want) else "wrong"
        elif is_empty(want) or (name in verbatim_fields and isinstance(got, str) and got not in text):
            out[name] = "invented"
        else:
            out[name] = "wrong"
    return out


def _interval(values: Sequence[float]) -> Optional[list[float]]:
    ci = calibration.bootstrap_ci(values, n_boot=BOOTSTRAP_RESAMPLES)
    return None if ci.lo is None or ci.hi is None else [round(ci.lo, 4), round(ci.hi, 4)]


def compute_metrics(records: list[dict], *, wall_seconds: Optional[float] = None, sent: int = 0,
                    metric: str = "exact_match", accept_target: float = 0.99) -> dict:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    field_hits: dict[str, list[bool]] = {}
    for r in records:
        for name, hit in r.get("fields", {}).items():
            field_hits.setdefault(name, []).append(hit)
    latencies = [r["latency_s"] for r in records if r.get("latency_s") is not None]
    outcomes: dict[str, dict[str, int]] = {}
    for r in records:
        for name, outcome in (r.get("outcomes") or {}).items():
            counts = outcomes.setdefault(name, dict.fromkeys(OUTCOMES, 0))
            counts[outcome] += 1
    return {
        "n": n,
        "correct": correct,
        "exact_match": correct / n if n else 0.0,
        "exact_match_ci": _interval([float(r["correct"]) for r in records]),
        "invalid_json": sum(1 for r in records if r["error"] is None and r["prediction"] is None),
        "api_errors": sum(1 for r in records if r["error"] is not None),
        "think_blocks": sum(1 for r in records if r.get("think_block")),
        "per_field": {name: sum(h) / len(h) for name, h in field_hits.items()},
        "per_field_ci": {name: _interval([float(x) for x in h]) for name, h in field_hits.items()},
        "field_outcomes": outcomes,
        "confidence": calibration.confidence_metrics(records, accept_target),
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "requests_per_s": (sent / wall_seconds) if wall_seconds and sent else None,
        "requests_sent_this_session": sent,
        "metric": metric,
        **({"ner": ner.scores((r["gold"], r["prediction"]) for r in records)} if metric == "ner_f1" else {}),
    }
