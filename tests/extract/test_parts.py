"""The parts of an extraction's output: one file per chunk, written atomically, read back as written."""

import pyarrow as pa
import pyarrow.parquet as pq

from swiftpipe.extract import parts


def test_parts_round_trip_and_atomic_names(tmp_path):
    rows = [{"id": 1, "text": "t", "a": "x", "b": parts.cell({"k": [1]}), "valid": True, "flags": [], "error": None,
             "error_kind": None, "raw": None, "confidence": parts.confidence_cell({"a": 0.9731, "b": 0.5}),
             "needs_review": False},
            {"id": 2, "text": "u", "a": None, "b": None, "valid": False, "flags": ["invalid_json"],
             "error": "the answer is not JSON", "error_kind": "invalid_json", "raw": "{", "confidence": None,
             "needs_review": True}]
    for fmt in ("parquet", "jsonl"):
        path = parts.part_path(tmp_path / fmt, 3, fmt)
        parts.write(path, rows, fmt=fmt, fields=["a", "b"], keep_text=True)
        assert parts.read(path) == rows
        assert parts.read(path, ["b"])[0] == {"b": '{"k": [1]}'}  # a non-string field reads back as JSON text
        assert parts.finished(tmp_path / fmt, fmt) == {3}
        assert not list((tmp_path / fmt).glob(".part-*"))
    older = tmp_path / "older.parquet"  # a part written before error_kind existed
    pq.write_table(pa.Table.from_pylist([{"id": 1, "error": "x"}]), older)
    assert parts.read(older, ["error", "error_kind"]) == [{"error": "x", "error_kind": None}]
    (tmp_path / "parquet" / ".part-000004.parquet.tmp123").write_bytes(b"half")
    assert parts.clean_partial(tmp_path / "parquet") == 1
    assert parts.cell({"k": [1]}) == '{"k": [1]}' and parts.cell("x") == "x" and parts.cell(None) is None
