"""data stats / split."""

import json

from swiftpipe.data import stats
from tests.helpers import REPO, run_cli

ADDRESS = REPO / "datasets" / "address" / "test.jsonl"


def test_suggest_max_length_covers_the_longest_row():
    assert stats.suggest_max_length([100, 300, 250]) == 384  # 330 -> next multiple of 64
    assert stats.suggest_max_length([10]) == 64


def test_stats_with_the_tiny_tokenizer(tmp_path, tiny_model_dir):
    bad = tmp_path / "mixed.jsonl"
    lines = ADDRESS.read_text(encoding="utf-8").splitlines()[:20]
    bad.write_text("\n".join(lines + ['{"messages": [{"role": "user", "content": "no answer"}]}', "{oops"]) + "\n",
                   encoding="utf-8")
    png = tmp_path / "h.png"
    done = run_cli("data", "stats", str(bad), "--model", str(tiny_model_dir), "--png", str(png), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rows"] == 20 and result["bad_rows"] == 2
    assert result["problems"][0].endswith(":21: the last message must be the assistant's answer")
    assert ":22: not valid JSON" in result["problems"][1]
    assert result["answers_parse_as_json"] == 20
    total = result["total_tokens"]
    assert total["max"] > result["prompt_tokens"]["max"] > 60  # the system prompt alone is dozens of tokens
    assert result["suggested_max_length"] >= total["max"] and result["suggested_max_length"] % 64 == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # The text report exits 1 when rows are bad, naming them.
    text = run_cli("data", "stats", str(bad))
    assert text.returncode == 1 and f"{bad}:22" in text.stdout


def test_split_is_seeded_and_complete(tmp_path):
    for out in ("a", "b"):
        done = run_cli("data", "split", str(ADDRESS), "--out-dir", str(tmp_path / out), "--val", "0.1", "--test", "0.2",
                       "--seed", "3")
        assert done.returncode == 0, done.stderr
    parts = {name: (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines() for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 280, "val": 40, "test": 80}
    assert sorted(sum(parts.values(), [])) == sorted(ADDRESS.read_text().splitlines())
    assert (tmp_path / "a" / "val.jsonl").read_text() == (tmp_path / "b" / "val.jsonl").read_text()


def test_stats_with_the_real_qwen_tokenizer_and_a_recipe(tmp_path, qwen_tokenizers):
    from transformers import AutoTokenizer

    qwen3 = qwen_tokenizers["qwen3-0.6b"]
    recipe = REPO / "recipes" / "address-qwen3-0.6b.yaml"
    # Rows without their system turn: the recipe's system prompt is counted, as ms-swift trains them.
    bare = tmp_path / "bare.jsonl"
    rows = [json.loads(line) for line in ADDRESS.read_text(encoding="utf-8").splitlines()]
    bare.write_text("".join(json.dumps({"messages": r["messages"][1:]}, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    done = run_cli("data", "stats", str(bare), "--model", str(qwen3), "--recipe", str(recipe), "--json",
                   "--png", str(tmp_path / "h.png"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    with_system = json.loads(run_cli("data", "stats", str(ADDRESS), "--model", str(qwen3), "--json",
                                     "--png", str(tmp_path / "h2.png")).stdout)
    assert result["prompt_tokens"] == with_system["prompt_tokens"]

    tok = AutoTokenizer.from_pretrained(qwen3)
    first = rows[0]["messages"]
    served = tok.apply_chat_template(first[:2], add_generation_prompt=True, enable_thinking=False, return_dict=False)
    trained = tok.apply_chat_template(first, enable_thinking=False, return_dict=False)
    answer = len(tok(first[2]["content"], add_special_tokens=False)["input_ids"]) + 1
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    single = json.loads(run_cli("data", "stats", str(one), "--model", str(qwen3), "--json",
                                "--png", str(tmp_path / "h3.png")).stdout)
    # The prompt as vLLM serves it (thinking off: the empty think block included), the answer as
    # generated (with <|im_end|>), the whole row as ms-swift trains on it (+ the "\n" after <|im_end|>).
    assert single["prompt_tokens"]["max"] == len(served) and served[-4:] == tok.encode("<think>\n\n</think>\n\n")
    assert single["answer_tokens"]["max"] == answer
    assert single["total_tokens"]["max"] == len(trained) == len(served) + answer + 1

    coverage = result["coverage"]
    assert coverage["train.max_length"]["ok"] and coverage["train.max_length"]["limit"] == 2048
    assert coverage["eval.max_tokens"]["ok"] and coverage["eval.max_tokens"]["limit"] == 512
    short = tmp_path / "short.yaml"
    short.write_text(recipe.read_text(encoding="utf-8").replace("max_length: 2048", "max_length: 128"),
                     encoding="utf-8")
    text = run_cli("data", "stats", str(ADDRESS), "--model", str(qwen3), "--recipe", str(short),
                   "--png", str(tmp_path / "h4.png"))
    assert text.returncode == 1 and "train.max_length 128 TOO SHORT for the longest training row" in text.stdout
