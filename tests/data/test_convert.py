"""Converters: own fixtures in the public formats always; the real sets when ../shared/data exists."""

import collections
import json

import pytest

from swiftpipe.data import convert
from swiftpipe.data.synth import ADDRESS_FIELDS
from tests.helpers import REPO, SHARED_DATA, run_cli


def answers(result):
    return [json.loads(r["messages"][-1]["content"]) for r in result.rows]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_cluener_spans_to_entity_lists_and_bad_rows(tmp_path):
    path = write(tmp_path, "c.json", "\n".join([
        json.dumps({"text": "浙商银行企业信贷部叶老桂博士", "label": {
            "name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}, "position": {"博士": [[12, 13]]}}},
            ensure_ascii=False),
        json.dumps({"text": "没有实体", "label": {}}, ensure_ascii=False),
        json.dumps({"text": "错位", "label": {"name": {"张三": [[0, 1]]}}}, ensure_ascii=False),
        "{broken",
        json.dumps({"text": "无标签"}, ensure_ascii=False),
    ]) + "\n")
    result = convert.convert("cluener", path)
    first, second = answers(result)
    assert list(first) == list(convert.CLUENER_TYPES)
    assert first["name"] == ["叶老桂"] and first["company"] == ["浙商银行"] and first["position"] == ["博士"]
    assert first["book"] == [] and not any(second.values())
    assert [(b.line, b.reason.split(" ")[0]) for b in result.bad] == [(3, "span"), (4, "not"), (5, "no")]
    assert result.rows[0]["messages"][-1]["content"] == json.dumps(first, ensure_ascii=False, separators=(",", ":"))


def test_raner_offsets_are_end_exclusive(tmp_path):
    path = write(tmp_path, "r.jsonl", "\n".join([
        json.dumps({"text": "李明在北京工作", "entities": [{"category": "PER", "start": 0, "end": 2},
                                                       {"category": "LOC", "start": 3, "end": 5, "entity": "北京"}]},
                   ensure_ascii=False),
        json.dumps({"text": "短", "entities": [{"category": "PER", "start": 0, "end": 9}]}, ensure_ascii=False),
        json.dumps({"text": "无实体", "entities": []}, ensure_ascii=False),
    ]) + "\n")
    result = convert.convert("raner", path)
    assert answers(result) == [{"LOC": ["北京"], "PER": ["李明"]}, {"LOC": [], "PER": []}]
    assert [b.line for b in result.bad] == [2] and "outside the text" in result.bad[0].reason
    assert answers(convert.convert("raner", path, types=("PER", "LOC", "ORG")))[0] == {
        "PER": ["李明"], "LOC": ["北京"], "ORG": []}


def test_paddle_waybill_bio_to_six_fields(tmp_path):
    chars = list("广东省深圳市南山区科技园1号张三13800000000")
    tags = (["A1-B"] + ["A1-I"] * 2 + ["A2-B"] + ["A2-I"] * 2 + ["A3-B"] + ["A3-I"] * 2 + ["A4-B"] + ["A4-I"] * 4
            + ["P-B", "P-I"] + ["T-B"] + ["T-I"] * 10)
    good = "\x02".join(chars) + "\t" + "\x02".join(tags)
    no_city = "\x02".join(list("张三13800000000")) + "\t" + "\x02".join(["P-B", "P-I", "T-B"] + ["T-I"] * 10)
    path = write(tmp_path, "w.txt", "text_a\tlabel\n" + good + "\n" + "a\x02b\tO\n" + no_city + "\n")
    result = convert.convert("paddle-waybill", path)
    first, second = answers(result)
    assert first == {"province": "广东省", "city": "深圳市", "district": "南山区", "specific_location": "科技园1号",
                     "name": "张三", "phone": "13800000000"}
    assert list(second) == list(ADDRESS_FIELDS) and second["city"] == "" and second["name"] == "张三"
    assert [b.line for b in result.bad] == [3] and "2 characters but 1 tags" in result.bad[0].reason


def test_alpaca_fenced_json_with_line_numbers(tmp_path):
    records = [
        {"system": "抽取", "instruction": "张三投诉噪音", "input": "", "output": "```json\n{\"name\": \"张三\"}\n```"},
        {"system": "抽取", "instruction": "坏的", "input": "", "output": "不是JSON"},
        {"instruction": "指令", "input": "正文", "output": "{\"name\": \"李四\"}"},
    ]
    path = write(tmp_path, "a.json", json.dumps(records, ensure_ascii=False, indent=2))
    result = convert.convert("alpaca", path)
    assert answers(result) == [{"name": "张三"}, {"name": "李四"}]
    assert result.rows[1]["messages"][0] == {"role": "user", "content": "指令\n正文"}
    assert result.rows[0]["messages"][0] == {"role": "system", "content": "抽取"}
    line = json.dumps(records, ensure_ascii=False, indent=2).splitlines().index("  {", 2) + 1
    assert [b.line for b in result.bad] == [line] and "not JSON" in result.bad[0].reason


def test_cli_reports_bad_rows_with_file_and_line(tmp_path):
    path = write(tmp_path, "c.json", '{"text": "x", "label": {}}\n{oops\n')
    out = tmp_path / "out.jsonl"
    done = run_cli("data", "convert", "--from", "cluener", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"{path}:2: skipped: not valid JSON" in done.stderr
    assert "converted 1 rows" in done.stdout and len(out.read_text().splitlines()) == 1
    missing = run_cli("data", "convert", "--from", "alpaca", str(tmp_path / "none.json"), "--out", str(out))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------ the real public sets


def shared(path: str):
    full = SHARED_DATA / path
    if not full.exists():
        pytest.skip(f"{full} is absent (reference data lives beside the project, never in it)")
    return full


def test_cluener_dev_counts_per_type_match_the_source():
    path = shared("cluener/dev.json")
    result = convert.convert("cluener", path)
    assert len(result.rows) == 1343 and not result.bad
    source = collections.Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        for kind, entities in json.loads(line)["label"].items():
            source[kind] += len(entities)
    converted = collections.Counter()
    for answer in answers(result):
        for kind, entities in answer.items():
            converted[kind] += len(entities)
    assert +converted == source


def test_waybill_test_gives_200_rows_with_six_fields():
    result = convert.convert("paddle-waybill", shared("waybill_paddle/test.txt"))
    assert len(result.rows) == 200 and not result.bad
    for answer, row in zip(answers(result), result.rows):
        assert list(answer) == list(ADDRESS_FIELDS)
        text = row["messages"][-2]["content"]
        assert answer["phone"] in text and answer["name"] in text


def test_complaint_alpaca_gives_300_parsed_answers():
    result = convert.convert("alpaca", shared("complaint/fake_sft.json"))
    assert len(result.rows) == 300 and not result.bad
    for answer in answers(result):
        assert set(answer) == {"name", "address", "email", "question"}


def test_converters_write_the_system_prompt_their_recipes_train_and_evaluate_with(tmp_path):
    """No drift between converted data and the recipe: same prompt, same answer keys."""
    from swiftpipe.recipe.load import load_recipe

    cluener = load_recipe(REPO / "recipes" / "cluener-qwen2.5-0.5b.yaml").recipe.data
    assert cluener.system_prompt == convert.CLUENER_SYSTEM_PROMPT
    assert tuple(cluener.output_schema) == convert.CLUENER_TYPES
    offset = load_recipe(REPO / "recipes" / "ner-offset-qwen3-0.6b.yaml").recipe.data
    path = write(tmp_path, "r.jsonl", json.dumps({"text": "李明", "entities": [
        {"category": "PER", "start": 0, "end": 2}]}, ensure_ascii=False) + "\n")
    row = convert.convert("raner", path, types=tuple(offset.output_schema)).rows[0]["messages"]
    assert row[0]["content"] == offset.system_prompt
    assert list(json.loads(row[-1]["content"])) == list(offset.output_schema)
