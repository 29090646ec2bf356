"""The output of batch extraction: one part file per input chunk, written atomically.

`OUT/part-000042.parquet` (or `.jsonl`) holds chunk 42's rows: `id`, `text` (unless --no-text),
one column per answer field (strings; a non-string value as JSON text), `valid`, `flags` (a list),
`error` (why the row has no valid answer, else null), `error_kind` (that reason as a name: empty_text,
too_long, not_text, server_error, engine_error, invalid_json, schema_violation) and `raw` (the model's
answer when it was not valid), `confidence` (JSON text {field: p}, the probability the model gave
each field's exact value; null when the engine returned no logprobs) and `needs_review` (the answer
is not valid, has a value not in the text, or its row confidence is below the accept threshold or
unknown). A part exists only when its chunk is finished: it is written beside its final name and
renamed, so a kill leaves either the whole part or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from swiftpipe.core import jsonl

FIXED = ("id", "text", "valid", "flags", "error", "error_kind", "raw", "confidence", "needs_review")
EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def part_path(out: Path, index: int, fmt: str) -> Path:
    return out / f"part-{index:06d}{EXTENSIONS[fmt]}"


def finished(out: Path, fmt: str) -> set[int]:
    """Indexes of the chunks whose part exists."""
    done = set()
    for p in out.glob(f"part-*{EXTENSIONS[fmt]}"):
        stem = p.name[len("part-"):-len(EXTENSIONS[fmt])]
        if stem.isdigit():
            done.add(int(stem))
    return done


def clean_partial(out: Path) -> int:
    """Remove parts a killed run was writing (hidden temporary files); returns how many."""
    removed = 0
    for p in out.glob(".part-*.tmp*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


def cell(value: Any) -> Optional[str]:
    """An answer field as stored: strings as they are, anything else as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def confidence_cell(values: Optional[dict]) -> Optional[str]:
    """{field: p} as stored: JSON text (the same in JSONL and Parquet; Parquet readers parse it with
    json.loads or DuckDB's json functions), None without confidence."""
    return None if values is None else json.dumps(values, ensure_ascii=False)


def _arrow_schema(fields: list[str], keep_text: bool, int_ids: bool):
    import pyarrow as pa

    columns = [("id", pa.int64() if int_ids else pa.string())]
    if keep_text:
        columns.append(("text", pa.string()))
    columns += [(name, pa.string()) for name in fields]
    columns += [("valid", pa.bool_()), ("flags", pa.list_(pa.string())), ("error", pa.string()),
                ("error_kind", pa.string()), ("raw", pa.string()), ("confidence", pa.string()),
                ("needs_review", pa.bool_())]
    return pa.schema(columns)


def write(path: Path, rows: list[dict], *, fmt: str, fields: list[str], keep_text: bool) -> None:
    """Write one part atomically (temporary file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if fmt == "jsonl":
        jsonl.write_lines(path, rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    int_ids = all(isinstance(r["id"], int) for r in rows)
    table = pa.Table.from_pylist(rows, schema=_arrow_schema(fields, keep_text, int_ids))
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read(path: Path, columns: Optional[list[str]] = None) -> list[dict]:
    """A part's rows (only `columns`, when given; a column a part of an older swiftpipe lacks reads as None)."""
    if path.suffix == ".jsonl":
        rows = jsonl.read_all(path)
        return rows if columns is None else [{c: r.get(c) for c in columns} for r in rows]
    import pyarrow.parquet as pq

    if columns is None:
        return pq.read_table(path).to_pylist()
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in columns if c in present])
    return [{c: r.get(c) for c in columns} for r in table.to_pylist()]


def iter_rows(out: Path, fmt: str, columns: Optional[list[str]] = None) -> Iterator[tuple[int, list[dict]]]:
    """(chunk index, its rows) for every finished part, in chunk order; one part in memory at a time."""
    for index in sorted(finished(out, fmt)):
        yield index, read(part_path(out, index, fmt), columns)
