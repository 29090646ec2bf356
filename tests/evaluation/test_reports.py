"""The reports of an evaluation: the fine-tuned model against the base, row by row."""

from swiftpipe.evaluation import reports


def test_comparison_lists_changed_rows():
    base = {"n": 2, "correct": 1, "exact_match": 0.5, "invalid_json": 1, "api_errors": 0, "per_field": {"a": 0.5}}
    tuned = {"n": 2, "correct": 1, "exact_match": 0.5, "invalid_json": 0, "api_errors": 0, "per_field": {"a": 0.5}}
    b = [{"key": "k1", "correct": False, "prediction": None, "raw": "junk"},
         {"key": "k2", "correct": True, "prediction": {"a": 2}, "raw": "{}"}]
    t = [{"key": "k1", "correct": True, "prediction": {"a": 1}, "input": "in1", "gold": {"a": 1}},
         {"key": "k2", "correct": False, "prediction": {"a": 3}, "input": "in2", "gold": {"a": 2}}]
    text = reports.comparison_markdown(base, tuned, b, t)
    assert "| exact match | 50.0% (1/2) | 50.0% (1/2) |" in text
    assert "1 fixed by fine-tuning, 1 broken by it" in text
    assert "- input: in1" in text and "base: 'junk'" in text and "- input: in2" in text
