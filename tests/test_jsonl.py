"""The one JSONL module: numbered errors, a truncated last line where a file is appended to,
atomic writes, and reading a file another process is still writing."""

import json
import subprocess

import pytest

from swiftpipe.core import jsonl
from tests.helpers import REPO


def test_bad_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(jsonl.JsonlError, match=rf"{path}:3: not valid JSON"):
        jsonl.read_all(path)
    assert jsonl.read_all(path, skip_bad=True) == [{"a": 1}, {"a": 3}]
    assert [n for n, v in jsonl.scan(path) if isinstance(v, jsonl.JsonlError)] == [3]


def test_truncated_last_line_is_dropped_only_where_files_are_appended_to(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b', encoding="utf-8")  # killed mid-write
    assert jsonl.read_all(path, appended=True) == [{"a": 1}]
    with pytest.raises(jsonl.JsonlError, match=":2:"):
        jsonl.read_all(path)
    assert jsonl.last(path) == {"a": 1}
    assert jsonl.last(tmp_path / "missing.jsonl") is None


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert jsonl.write_lines(path, ({"i": i, "text": "王伟"} for i in range(3))) == 3
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"i": 0, "text": "王伟"}'
    jsonl.write_json(tmp_path / "x.json", {"k": "值"})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {"k": "值"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["rows.jsonl", "sub", "x.json"]


def test_follower_returns_only_complete_new_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    follower = jsonl.Follower(path)
    assert follower.new() == []
    path.write_text('{"a": 1}\nnot json\n{"a": 2', encoding="utf-8")
    assert follower.new() == [{"a": 1}]
    with open(path, "a", encoding="utf-8") as f:
        f.write('}\n')
    assert follower.new() == [{"a": 2}] and follower.new() == []


def test_broken_json_file_is_named(tmp_path):
    (tmp_path / "run.json").write_text("{", encoding="utf-8")
    with pytest.raises(jsonl.JsonlError, match="run.json:1: not valid JSON"):
        jsonl.read_json(tmp_path / "run.json")


def test_no_other_module_parses_json_lines():
    found = subprocess.run(["git", "grep", "-n", "json.loads(line", "--", "swiftpipe"], cwd=REPO,
                           capture_output=True, text=True).stdout.splitlines()
    assert found and all(line.startswith("swiftpipe/core/jsonl.py:") for line in found), found
