"""The one JSONL module: numbered errors, a truncated last line where a file is appended to,
atomic writes, and reading a file another process is still writing."""

import ast
import json

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


def _loop_variables(target: ast.expr) -> set[str]:
    return {node.id for node in ast.walk(target) if isinstance(node, ast.Name)}


def _line_variable(arg: ast.expr) -> str | None:
    """The variable `arg` reads a whole line from: `line`, `line.strip()`, `line.rstrip("\\n").strip()`
    (a field of a record, `row["task"]`, is not a line)."""
    while isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute):
        arg = arg.func.value
    return arg.id if isinstance(arg, ast.Name) else None


def adhoc_jsonl_readers(source: str, where: str) -> list[str]:
    """`where:line` of each `json.loads(...)` of a variable of an enclosing `for` loop (or comprehension):
    a JSON-lines reader of its own, where swiftpipe.core.jsonl's readers belong."""
    found = []

    def visit(node: ast.AST, loop_vars: frozenset) -> None:
        if isinstance(node, (ast.For, ast.AsyncFor)):
            visit(node.iter, loop_vars)
            inner = loop_vars | _loop_variables(node.target)
            for child in [*node.body, *node.orelse]:
                visit(child, inner)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = loop_vars | {name for gen in node.generators for name in _loop_variables(gen.target)}
            for child in ast.iter_child_nodes(node):
                visit(child, inner)
            return
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "loads"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json" and node.args
                and _line_variable(node.args[0]) in loop_vars):
            found.append(f"{where}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, loop_vars)

    visit(ast.parse(source), frozenset())
    return found


def test_the_reader_check_catches_an_adhoc_reader():
    assert adhoc_jsonl_readers("import json\nfor line in f:\n    rows.append(json.loads(line))\n", "x.py") == ["x.py:3"]
    assert adhoc_jsonl_readers("rows = [json.loads(s.strip()) for s in open(p)]\n", "y.py") == ["y.py:1"]
    nested = "for n, raw in enumerate(f, 1):\n    if raw:\n        json.loads(raw.strip())\n"
    assert adhoc_jsonl_readers(nested, "w.py") == ["w.py:3"]
    assert adhoc_jsonl_readers("data = json.loads(text)\nfor k in data:\n    print(k)\n", "z.py") == []
    assert adhoc_jsonl_readers("for row in rows:\n    json.loads(row['task'])\n", "v.py") == []  # a column, not a line


def test_no_other_module_parses_json_lines():
    package = REPO / "swiftpipe"
    modules = sorted(package.rglob("*.py"))
    the_reader = package / "core" / "jsonl.py"
    assert adhoc_jsonl_readers(the_reader.read_text(encoding="utf-8"), "jsonl.py")  # the check sees real readers
    found = [hit for path in modules if path != the_reader
             for hit in adhoc_jsonl_readers(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert found == [], f"JSON lines read outside swiftpipe/core/jsonl.py (use its readers): {found}"
