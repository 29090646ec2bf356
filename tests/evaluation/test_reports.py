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


def test_comparison_gives_the_exact_mcnemar_p_value_of_its_flips():
    # 12 fixed, 3 broken: two-sided exact binomial p = 2 * P(X <= 3 | n=15, 1/2) = 0.0352
    assert "p = 0.0352" in reports.mcnemar_line(3, 12)
    assert "can be chance" in reports.mcnemar_line(2, 4)  # p = 0.6875
    base = {"n": 2, "correct": 0, "exact_match": 0.0, "invalid_json": 0, "api_errors": 0, "per_field": {}}
    tuned = {**base, "correct": 2, "exact_match": 1.0}
    rows = [{"key": f"k{i}", "correct": False, "prediction": {}, "raw": "{}", "input": "x", "gold": {}} for i in range(2)]
    text = reports.comparison_markdown(base, tuned, rows, [{**r, "correct": True} for r in rows])
    assert "2 fixed by fine-tuning, 0 broken by it (exact McNemar test on the flips: p = 0.5" in text
