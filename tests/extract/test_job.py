"""An extraction job: each answer becomes a row of its part, with its error kind and flags."""

from pathlib import Path

from swiftpipe.extract.engines import SERVER_ERROR, Answer
from swiftpipe.extract.inputs import Row
from swiftpipe.extract.job import Job
from swiftpipe.recipe.task import Task
from swiftpipe.task import flags


def test_error_kinds_come_with_the_error():
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
