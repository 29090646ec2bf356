"""Entity-level NER scoring."""

import json

import pytest

from swiftpipe.data import convert
from swiftpipe.evaluation import ner
from tests.helpers import SHARED_DATA


def test_hand_computed_example():
    pairs = [
        ({"name": ["张三", "李四"], "address": ["北京"]}, {"name": ["张三"], "address": ["北京", "上海"]}),
        ({"name": ["王五"], "company": []}, {"name": ["赵六"], "company": ["腾讯"]}),
        ({"name": [], "address": []}, "not an object"),
    ]
    s = ner.scores(pairs)
    # name: gold {张三, 李四, 王五}, predicted {张三, 赵六}: tp 1 -> P 1/2, R 1/3, F1 0.4
    assert s["per_type"]["name"] == {"precision": 0.5, "recall": pytest.approx(1 / 3), "f1": pytest.approx(0.4),
                                     "tp": 1, "predicted": 2, "gold": 3}
    # address: gold {北京}, predicted {北京, 上海}: P 1/2, R 1, F1 2/3
    assert s["per_type"]["address"]["f1"] == pytest.approx(2 / 3)
    # company: nothing gold, one predicted: P 0; R 0 (as seqeval with zero_division=0), F1 0
    assert s["per_type"]["company"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "predicted": 1, "gold": 0}
    # micro: tp 2, predicted 5, gold 4 -> P 0.4, R 0.5, F1 4/9
    assert s["micro"]["precision"] == pytest.approx(0.4) and s["micro"]["recall"] == pytest.approx(0.5)
    assert s["micro"]["f1"] == pytest.approx(4 / 9)
    assert s["macro"]["f1"] == pytest.approx((0.4 + 2 / 3 + 0.0) / 3)


def test_duplicates_count_once_and_empty_is_perfect():
    assert ner.counts({"name": ["张三", "张三"]}, {"name": ["张三"]}) == {"name": [1, 1, 1]}
    assert ner.scores([({"name": []}, {"name": []})])["micro"]["f1"] == 1.0


def test_cluener_dev_gold_as_prediction_is_one():
    path = SHARED_DATA / "cluener" / "dev.json"
    if not path.exists():
        pytest.skip(f"{path} is absent (reference data lives beside the project)")
    golds = [json.loads(r["messages"][-1]["content"]) for r in convert.convert("cluener", path).rows]
    s = ner.scores((g, g) for g in golds)
    assert s["micro"]["f1"] == 1.0 and s["macro"]["f1"] == 1.0 and len(s["per_type"]) == 10
    assert s["micro"]["gold"] == 2982  # distinct entities per row and type in dev.json
