"""Batch extraction: reading and chunking the input, the parts, and the bad-input errors of the real
CLI (they come before any model is loaded). The engines are exercised in
tests/integration/test_extract.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swiftpipe.extract import parts
from swiftpipe.extract.engines import SERVER_ERROR, Answer
from swiftpipe.extract.inputs import Input, InputError, Row, resolve
from swiftpipe.extract.job import Job
from swiftpipe.recipe.task import Task
from tests.helpers import REPO, child_env, swiftpipe_cmd


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def all_rows(inp: Input, chunk_rows: int) -> list:
    return [(r.id, r.text) for c in inp.index(chunk_rows) for r in inp.read_chunk(c)]


def test_chunks_span_files_and_formats_and_read_alone(tmp_path):
    """JSONL (with blank lines), CSV (quoted newline, BOM) and Parquet (several row groups): each
    chunk read on its own gives exactly the rows of a straight read, ids are positions."""
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": f"甲{i}"} for i in range(5)])
    with (d / "a.jsonl").open("a", encoding="utf-8") as f:
        f.write("\n   \n" + json.dumps({"text": "甲5"}) + "\n")
    (d / "b.csv").write_bytes("\ufefftext,other\n\"乙0\nsecond line\",x\n乙1,y\n\n乙2,z\n".encode())
    table = pa.table({"text": [f"丙{i}" for i in range(7)], "n": list(range(7))})
    pq.write_table(table, d / "c.parquet", row_group_size=3)
    (d / "notes.txt").write_text("not an input")
    files = resolve(str(d))
    assert [f.name for f in files] == ["a.jsonl", "b.csv", "c.parquet"]
    expected = [f"甲{i}" for i in range(6)] + ["乙0\nsecond line", "乙1", "乙2"] + [f"丙{i}" for i in range(7)]
    for size in (1, 2, 4, 7, 100):
        inp = Input(files, "text", None)
        chunks = inp.index(size)
        assert [c.rows for c in chunks][:-1] == [size] * (len(chunks) - 1)
        got = all_rows(inp, size)
        assert [t for _, t in got] == expected, size
        assert [i for i, _ in got] == list(range(len(expected)))
    # A glob picks the same files; an id column gives text ids.
    assert resolve(str(d / "*.*")) == files
    ids = Input([d / "c.parquet"], "text", "n")
    assert [r.id for c in ids.index(4) for r in ids.read_chunk(c)] == [str(i) for i in range(7)]


def test_every_problem_at_once_with_file_and_line(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, {"txt": "y"}, {"text": "z"}])
    with a.open("a", encoding="utf-8") as f:
        f.write('{"text": "broken\n[1, 2]\n')
    b = tmp_path / "b.csv"
    b.write_text("body,id\nhello,1\n", encoding="utf-8")
    c = tmp_path / "c.parquet"
    c.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError) as err:
        Input([a, b, c], "text", None).index(10)
    message = str(err.value)
    assert f"{a}:2: no 'text' key (did you mean 'txt'?)" in message
    assert f"{a}:4: not valid JSON" in message and f"{a}:5: expected a JSON object" in message
    assert f"{b}: no column 'text'" in message and "body, id" in message
    assert f"{c}: cannot read it as Parquet" in message
    assert "4 problem(s)" not in message and "5 problem(s)" in message


def test_non_utf8_and_missing_inputs(tmp_path):
    bad = tmp_path / "gbk.csv"
    bad.write_bytes("text\n".encode() + "中文".encode("gbk") + b"\n")
    with pytest.raises(InputError, match=r"gbk.csv:2: not UTF-8 text"):
        Input([bad], "text", None).index(10)
    with pytest.raises(InputError, match="no such file or directory"):
        resolve(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match=r"from the suffix '\.txt'"):
        resolve(str(tmp_path / "x.txt"))
    with pytest.raises(InputError, match="matches nothing"):
        resolve(str(tmp_path / "*.parquet"))


def test_parts_round_trip_and_atomic_names(tmp_path):
    rows = [{"id": 1, "text": "t", "a": "x", "b": parts.cell({"k": [1]}), "valid": True, "flags": [], "error": None,
             "error_kind": None, "raw": None},
            {"id": 2, "text": "u", "a": None, "b": None, "valid": False, "flags": ["invalid_json"],
             "error": "the answer is not JSON", "error_kind": "invalid_json", "raw": "{"}]
    for fmt in ("parquet", "jsonl"):
        path = parts.part_path(tmp_path / fmt, 3, fmt)
        parts.write(path, rows, fmt=fmt, fields=["a", "b"], keep_text=True)
        assert parts.read(path) == rows
        assert parts.finished(tmp_path / fmt, fmt) == {3}
        assert not list((tmp_path / fmt).glob(".part-*"))
    older = tmp_path / "older.parquet"  # a part written before error_kind existed
    pq.write_table(pa.Table.from_pylist([{"id": 1, "error": "x"}]), older)
    assert parts.read(older, ["error", "error_kind"]) == [{"error": "x", "error_kind": None}]
    (tmp_path / "parquet" / ".part-000004.parquet.tmp123").write_bytes(b"half")
    assert parts.clean_partial(tmp_path / "parquet") == 1
    assert rows[0]["b"] == '{"k": [1]}'


def test_error_kinds_come_with_the_error():
    from swiftpipe.task import flags

    problem = flags.input_problem("  ", max_length=10, length=lambda t: (len(t), "characters"), who="w", source="s")
    assert (problem.kind, problem.message) == (flags.EMPTY_TEXT, "text is empty")
    long = flags.input_problem("x" * 11, max_length=10, length=lambda t: (len(t), "tokens"), who="the model", source="s")
    assert long.kind == flags.TOO_LONG and long.message == "text is 11 tokens; the model accepts at most 10 tokens (s)"
    assert flags.input_problem("ok", max_length=10, length=lambda t: (2, "tokens"), who="w", source="s") is None
    task = Task(schema={"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
                        "additionalProperties": False}, max_tokens=8)
    job = Job(out=Path("."), input=None, task=task, fmt="jsonl", keep_text=False, fields=["a"])  # type: ignore[arg-type]
    row = Row(id=1, text="t", where="x:1")
    kinds = {"server": job._row(row, answer=Answer(error="server error: x", error_kind=SERVER_ERROR, timed_out=True)),
             "not json": job._row(row, answer=Answer(raw="nope")),
             "schema": job._row(row, answer=Answer(raw='{"b": 1}')),
             "valid": job._row(row, answer=Answer(raw='{"a": "v"}'))}
    assert {k: r["error_kind"] for k, r in kinds.items()} == {"server": SERVER_ERROR, "not json": flags.INVALID_JSON,
                                                             "schema": flags.SCHEMA_VIOLATION, "valid": None}
    assert kinds["server"]["flags"] == [flags.TIMEOUT] and kinds["valid"]["a"] == "v"



def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*swiftpipe_cmd(), "extract", *args], capture_output=True, text=True, cwd=REPO,
                          env=env or child_env(), timeout=120)


# Input errors are found before anything connects: the server below does not exist.
NO_SERVER = ("--base-url", "http://127.0.0.1:9/v1", "--recipe", "recipes/demo-cpu.yaml")


def test_cli_bad_input_names_file_and_row_and_creates_nothing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"body": "b"}])
    out = tmp_path / "out"
    done = run_cli(str(src), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2, done.stderr
    assert f"{src}:2: no 'text' key" in done.stderr and "--text-field" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("content\nhello\n", encoding="utf-8")
    done = run_cli(str(csv_in), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2 and f"{csv_in}: no column 'text'" in done.stderr
    done = run_cli(str(csv_in), "--out", str(out), "--text-field", "content", "--engine", "offline",
                   "--recipe", "recipes/demo-cpu.yaml")
    assert done.returncode == 1 and "needs --model" in done.stderr
    done = run_cli(str(tmp_path / "missing.jsonl"), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2 and "no such file or directory" in done.stderr and not out.exists()


def test_cli_refuses_an_output_of_another_extraction(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    done = run_cli(str(src), "--out", str(out), *NO_SERVER)
    assert done.returncode == 1 and "is not a `swiftpipe extract` output" in done.stderr
    assert (out / "mine.txt").read_text() == "keep me"


def test_extract_settings_are_not_a_recipe_change_for_a_run(tmp_path):
    """`extract.*` is read by `swiftpipe extract` only: a run reopens with other extract settings."""
    from swiftpipe.recipe.load import load_recipe
    from swiftpipe.train import pipeline

    recipe = REPO / "recipes" / "address-qwen3-0.6b.yaml"
    first = pipeline.plan(load_recipe(recipe, [f"output.root={tmp_path}"]), run_id="r", base=REPO)
    assert pipeline.prepare_run_dir(first) is False
    again = pipeline.plan(load_recipe(recipe, [f"output.root={tmp_path}", "extract.chunk_rows=50",
                                               "extract.engine=ray"]), run_id="r", base=REPO)
    assert pipeline.prepare_run_dir(again) is True


def test_recipe_extract_section_is_strict():
    from swiftpipe.core.errors import RecipeError
    from swiftpipe.recipe.load import load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["extract.chunk_row=5", "extract.engine=spark",
                                                         "extract.replicas=0"])
    message = str(err.value)
    assert "chunk_rows" in message and "spark" in message and "replicas" in message


def test_watcher_stops_what_a_killed_process_started(tmp_path):
    """A process started by a library (here a plain `sleep`, as vLLM's engine core would be) ends
    with swiftpipe even when swiftpipe is SIGKILLed."""
    import os
    import signal
    import sys
    import time

    from swiftpipe.core.childguard import _stat

    script = ("import subprocess, time\nfrom swiftpipe.core import procs\nprocs.watch_descendants(1.0)\n"
              "p = subprocess.Popen(['sleep', '300'])\nprint(p.pid, flush=True)\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)  # the watcher notes descendants every 0.25 s
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _stat(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stat(child) is None, "the library's child outlived its killed parent"
    finally:
        if _stat(child):
            os.kill(child, signal.SIGKILL)


def test_cli_unwritable_out_is_a_message_not_a_traceback(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli(str(src), "--out", str(blocker / "out"), *NO_SERVER)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and f"{blocker / 'out'}: Not a directory" in done.stderr
