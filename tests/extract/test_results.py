"""Each distinct text once: repeats share one model call within a run (across chunks, and while the
first is still queued in the engine), and `--cache DIR` keeps answers across runs, keyed by the
model, the task and the text. Counted at the scripted upstream (`GET /stats`: what was really
sent), or at a fake engine's submit for the pipelined path."""

import json
from pathlib import Path

import httpx

from swiftpipe.core import jsonl
from swiftpipe.extract.commands import extract_command
from swiftpipe.extract.engines import Answer
from swiftpipe.extract.inputs import Input
from swiftpipe.extract.job import Job, Totals
from swiftpipe.extract.results import model_fingerprint, open_store
from swiftpipe.recipe.task import Task
from tests.helpers import DEMO_RECIPE

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"
FIELDS = ["province", "city", "district", "specific_location", "name", "phone"]


def _extract(tmp_path: Path, scripted: str, name: str, texts: list[str], **options) -> tuple[dict, dict]:
    src = tmp_path / f"{name}.jsonl"
    jsonl.write_lines(src, [{"key": f"r{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / name
    settings = dict(model=None, engine=None, base_urls=[scripted], recipe=DEMO_RECIPE, text_field="text",
                    id_field="key", fmt="jsonl", no_text=False, retry_errors=False, served_name="scripted",
                    ray_address=None, replicas=None, chunk_rows=3, batch_size=None, concurrency=4)
    extract_command(str(src), out=str(out), **{**settings, **options})
    rows = {r["id"]: r for part in sorted(out.glob("part-*.jsonl")) for r in jsonl.read_all(part)}
    return rows, json.loads((out / "summary.json").read_text())


def asked(scripted: str) -> dict[str, int]:
    return httpx.get(scripted.removesuffix("/v1") + "/stats", timeout=10).json()["texts"]


def test_each_distinct_text_once_and_every_id_gets_its_row(tmp_path, scripted):
    distinct = [WAYBILL, f"{WAYBILL} 订单2", f"{WAYBILL} #doubt", "寄给李四 #nologprobs"]
    texts = [distinct[i % 4] for i in (0, 1, 0, 2, 2, 3, 0, 1, 3, 2, 0, 0)]  # repeats in and across chunks of 3
    rows, summary = _extract(tmp_path, scripted, "out", texts, accept_threshold=0.9)
    assert asked(scripted) == {t: 1 for t in distinct}
    assert sorted(rows) == sorted(f"r{i}" for i in range(12))
    for i, text in enumerate(texts):
        row = rows[f"r{i}"]
        assert row["text"] == text and row["province"] == "浙江省" and row["valid"]
        assert row["needs_review"] is ("#doubt" in text or "#nologprobs" in text)  # low / unknown confidence
        assert (row["confidence"] is None) is ("#nologprobs" in text)
        assert ("low_confidence:name" in row["flags"]) is ("#doubt" in text)
    assert summary["rows"] == 12 and summary["distinct_texts"] == 4 and summary["model_calls"] == 4
    assert summary["repeated_rows"] == 8 and summary["cache_hits"] == 0 and summary["needs_review"] == 5
    assert summary["prompt_tokens"] == 4 * 50  # tokens of the calls made, not of the rows
    assert summary["cached_prompt_tokens"] == 4 * 32 and summary["cached_prompt_share"] == 0.64  # the server's usage


class CountingEngine:
    """The offline engine's submit/collect shape: answers only when collected, so a repeat planned
    while its text is queued must wait for that answer."""

    def __init__(self):
        self.submitted: list[str] = []

    def length(self, text: str) -> tuple[int, str]:
        return len(text), "characters"

    def submit(self, texts: list[str]) -> list:
        self.submitted += texts
        return [Answer(raw=json.dumps({"a": t[:3]}, ensure_ascii=False), prompt_tokens=10, cached_tokens=4)
                for t in texts]

    def collect(self, ticket: list, progress=None) -> list[Answer]:
        return ticket


def test_pipelined_chunks_wait_for_a_queued_text_instead_of_asking_again(tmp_path):
    src = tmp_path / "in.jsonl"
    texts = ["aaa1", "bbb2", "aaa1", "ccc3", "bbb2", "aaa1", "ddd4", "ccc3"]
    jsonl.write_lines(src, [{"text": t} for t in texts])
    inp = Input([src], "text", None)
    task = Task(schema={"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    store = open_store(tmp_path / "out", None, model_dir=None, model_id="m", engine_extra="", task_fp=task.fingerprint())
    job = Job(out=tmp_path / "out", input=inp, task=task, fmt="jsonl", keep_text=True, fields=["a"], store=store)
    engine, totals = CountingEngine(), Totals()
    job.run_pipelined(inp.index(2), engine, totals.add)
    assert sorted(engine.submitted) == ["aaa1", "bbb2", "ccc3", "ddd4"]
    rows = [r for p in sorted((tmp_path / "out").glob("part-*.jsonl")) for r in jsonl.read_all(p)]
    assert [(r["id"], r["text"], r["a"]) for r in rows] == [(i, t, t[:3]) for i, t in enumerate(texts)]
    assert totals.record() == {"distinct_texts": 4, "model_calls": 4, "cache_hits": 0, "repeated_rows": 4,
                               "cached_prompt_tokens": 16, "cached_prompt_share": 0.4}


def test_a_rerun_with_the_cache_sends_only_the_new_texts_with_the_same_rows(tmp_path, scripted):
    cache = tmp_path / "cache"
    old = [f"{WAYBILL} 订单{i}" for i in range(20)] + [f"{WAYBILL} #doubt"]
    first, _ = _extract(tmp_path, scripted, "first", old + old[:5], cache=str(cache))
    assert sum(asked(scripted).values()) == 21
    new = [f"收件人王五 订单{i} 浙江省杭州市西湖区文三路100号" for i in range(100)]
    again, summary = _extract(tmp_path, scripted, "again", old + new, cache=str(cache))
    counts = asked(scripted)
    assert sum(counts.values()) == 121 and all(counts[t] == 1 for t in new)
    assert summary["cache_hits"] == 21 and summary["model_calls"] == 100 and summary["distinct_texts"] == 121
    for i in range(21):  # the cached rows are the fresh rows: fields, flags, confidence, needs_review
        assert again[f"r{i}"] == first[f"r{i}"]
    assert again["r20"]["needs_review"] is False and first["r20"]["confidence"] is not None
    # Another accept threshold judges the kept answers again without asking for them.
    judged, summary = _extract(tmp_path, scripted, "judged", old, cache=str(cache), accept_threshold=0.9)
    assert sum(asked(scripted).values()) == 121 and summary["cache_hits"] == 21
    assert judged["r20"]["needs_review"] is True and judged["r20"]["flags"] == ["low_confidence:name"]
    assert judged["r20"]["confidence"] == first["r20"]["confidence"]


def test_a_changed_model_or_task_reuses_nothing(tmp_path, scripted):
    cache = str(tmp_path / "cache")
    texts = [f"{WAYBILL} 订单{i}" for i in range(10)]
    _extract(tmp_path, scripted, "first", texts, cache=cache)
    _, summary = _extract(tmp_path, scripted, "model", texts, cache=cache, served_name="scripted-v2")
    assert summary["cache_hits"] == 0 and summary["model_calls"] == 10
    recipe = tmp_path / "recipe.yaml"
    text = Path(DEMO_RECIPE).read_text(encoding="utf-8")
    assert "system_prompt:" in text
    recipe.write_text(text.replace("system_prompt: ", "system_prompt: Be brief. ", 1), encoding="utf-8")
    _, summary = _extract(tmp_path, scripted, "task", texts, cache=cache, recipe=str(recipe))
    assert summary["cache_hits"] == 0 and summary["model_calls"] == 10
    _, summary = _extract(tmp_path, scripted, "no-confidence", texts, cache=cache, confidence=False)
    assert summary["cache_hits"] == 0 and summary["model_calls"] == 10
    assert all(n == 4 for n in asked(scripted).values())


def test_model_fingerprint_follows_the_weights_and_hashes_each_file_once(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights one")
    known: dict = {}
    first = model_fingerprint(str(model), known=known)
    assert len(known) == 2 and model_fingerprint(str(model), known=known) == first
    assert model_fingerprint(str(model), extra="dtype=float32") != first
    (model / "model.safetensors").write_bytes(b"weights two")
    assert model_fingerprint(str(model), known=known) != first
