"""Reading and chunking the input of `swiftpipe extract`: JSONL, CSV and Parquet, every problem named
by file and line."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swiftpipe.extract.inputs import Input, InputError, resolve
from tests.helpers import write_jsonl


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
