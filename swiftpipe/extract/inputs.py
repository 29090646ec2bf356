"""The input of batch extraction: JSONL, CSV or Parquet files (one, a directory or a glob), cut into
chunks with stable ids.

A first pass (`index`) reads every row once, checks it and notes where each chunk starts (a byte
offset in JSONL and CSV, a row number in Parquet): bad files are reported, all at once, before a
model is loaded, and any process (a Ray actor on another machine) can later read one chunk alone
(`read_chunk`) without going through the rows before it. Row `k` of the whole input (files in
sorted order, blank JSONL lines skipped) is in chunk `k // chunk_rows`; a row's id is its `id_field`
value (as text) or `k`. Only the index (one small record per chunk) is held, never the rows.
"""

from __future__ import annotations

import csv
import difflib
import glob
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from swiftpipe.core import jsonl
from swiftpipe.core.errors import SwiftpipeError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_LISTED = 10

csv.field_size_limit(sys.maxsize)


class InputError(SwiftpipeError):
    """The input cannot be read as asked: the message names the file (and line) and the fix."""

    exit_code = 2


@dataclass
class Segment:
    """Consecutive rows of one file that belong to one chunk."""

    file: int  # index into the input's files
    start: int  # byte offset (JSONL, CSV) or row number from 0 (Parquet) of the first row
    line: int  # line number of the first row (JSONL, CSV), row number from 1 (Parquet): for messages
    rows: int


@dataclass
class Chunk:
    index: int
    first: int  # position of its first row in the whole input
    rows: int = 0
    segments: list[Segment] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Chunk":
        return cls(index=data["index"], first=data["first"], rows=data["rows"],
                   segments=[Segment(**s) for s in data["segments"]])


@dataclass
class Row:
    id: Union[int, str]
    text: Any  # normally a str; anything else becomes that row's error
    where: str  # file:line, for messages


def resolve(spec: str) -> list[Path]:
    """The input files named by `spec`: a file, a directory (its .jsonl/.csv/.parquet files) or a glob."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS
                       and not p.name.startswith("."))
        if not files:
            raise InputError(f"{spec}: the directory has no .jsonl, .csv or .parquet files")
        return files
    if path.is_file():
        fmt_of(path)
        return [path]
    if glob.has_magic(spec):
        matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        files = [p for p in matched if p.suffix.lower() in FORMATS]
        if not files:
            what = f"{len(matched)} file(s), none .jsonl, .csv or .parquet" if matched else "nothing"
            raise InputError(f"{spec}: the pattern matches {what}")
        return files
    raise InputError(f"{spec}: no such file or directory")


def fmt_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the suffix '{path.suffix}'; name the file "
                         f".jsonl, .csv or .parquet")
    return fmt


def fingerprint(files: list[Path]) -> list[dict]:
    """What identifies the input: a rerun on changed files must not mix two inputs in one output."""
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _missing_column(path: Path, name: str, columns: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    return (f"{path}: no column '{name}'{hint}; its columns are: {shown}. Name the {what} column with "
            f"--{'text' if what == 'text' else 'id'}-field")


# ---------------------------------------------------------------- reading rows, format by format
# Each yields (start, line, record) from `start` on; record is a dict of the columns, or an
# InputError for a row that cannot be read.


def _jsonl_rows(path: Path, start: int, line: int) -> Iterator[tuple[int, int, Any]]:
    for number, offset, value in jsonl.scan_offsets(path, offset=start, line=line):
        if isinstance(value, jsonl.JsonlError):
            yield offset, number, InputError(str(value))
        elif not isinstance(value, dict):
            yield offset, number, InputError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        else:
            yield offset, number, value


class _Lines:
    """Physical lines of a file as text for the csv module, keeping the byte offset of the next one."""

    def __init__(self, f, start: int, line: int, path: Path):
        self.f, self.offset, self.line, self.path = f, start, line - 1, path

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        try:
            return raw.decode("utf-8-sig" if self.offset == len(raw) else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}:{self.line}: not UTF-8 text (byte {exc.start + 1} of the line); "
                             f"save the file as UTF-8") from None


def _csv_header(path: Path) -> tuple[list[str], int, int]:
    """The column names, and the byte offset and line number just after the header."""
    with path.open("rb") as f:
        lines = _Lines(f, 0, 1, path)
        try:
            header = next(csv.reader(lines))
        except StopIteration:
            raise InputError(f"{path}: the file is empty; a CSV input needs a header row naming its columns") from None
        except csv.Error as exc:
            raise InputError(f"{path}:1: cannot read the header ({exc})") from None
        return header, lines.offset, lines.line + 1


def _csv_rows(path: Path, start: int, line: int, header: list[str]) -> Iterator[tuple[int, int, Any]]:
    with path.open("rb") as f:
        f.seek(start)
        lines = _Lines(f, start, line, path)
        reader = csv.reader(lines)
        while True:
            begin, first = lines.offset, lines.line + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield begin, first, InputError(f"{path}:{first}: not valid CSV ({exc})")
                return
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                yield begin, first, InputError(f"{path}:{first}: {len(record)} fields, the header has {len(header)}")
                continue
            yield begin, first, dict(zip(header, record))


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
        raise InputError(f"{path}: cannot read it as Parquet ({type(exc).__name__}: {exc})") from None


def _parquet_rows(path: Path, start: int, count: Optional[int], columns: list[str]) -> Iterator[tuple[int, int, Any]]:
    pf = _parquet(path)
    meta = pf.metadata
    groups, first, seen = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if seen + n > start:
            groups.append(g)
            if first is None:
                first = seen
        seen += n
    if not groups:
        return
    position = first or 0
    left = count
    for batch in pf.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
        for record in batch.to_pylist():
            if position >= start:
                yield position, position + 1, record
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            position += 1


# ---------------------------------------------------------------- the index


@dataclass
class Input:
    files: list[Path]
    text_field: str
    id_field: Optional[str]

    def _check_columns(self, path: Path, columns: list[str]) -> None:
        if self.text_field not in columns:
            raise InputError(_missing_column(path, self.text_field, columns, "text"))
        if self.id_field and self.id_field not in columns:
            raise InputError(_missing_column(path, self.id_field, columns, "id"))

    def _records(self, i: int, start: int, line: int, count: Optional[int]) -> Iterator[tuple[int, int, Any]]:
        path = self.files[i]
        fmt = fmt_of(path)
        if fmt == "jsonl":
            rows = _jsonl_rows(path, start, line)
        elif fmt == "csv":
            header, body, body_line = _csv_header(path)
            self._check_columns(path, header)
            rows = _csv_rows(path, max(start, body), max(line, body_line), header)
        else:
            columns = _parquet(path).schema_arrow.names
            self._check_columns(path, columns)
            rows = _parquet_rows(path, start, count, [c for c in (self.text_field, self.id_field) if c])
        try:
            yield from rows
        except OSError as exc:
            raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None

    def _row_problem(self, path: Path, line: int, record: dict) -> Optional[str]:
        if self.text_field not in record:
            keys = sorted(record)
            close = difflib.get_close_matches(self.text_field, keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (f"{path}:{line}: no '{self.text_field}' key{hint}; the row has: {', '.join(keys[:10])}. "
                    f"Name the text column with --text-field")
        if self.id_field:
            value = record.get(self.id_field)
            if value is None or isinstance(value, (dict, list)) or value == "":
                return f"{path}:{line}: '{self.id_field}' is missing or not a plain value ({value!r}); every row needs an id"
        return None

    def index(self, chunk_rows: int) -> list[Chunk]:
        """Read every row once; the chunks, or an InputError listing every problem found."""
        chunks: list[Chunk] = []
        problems: list[str] = []
        position = 0
        for i, path in enumerate(self.files):
            try:
                if not path.is_file():
                    raise InputError(f"{path}: no such file")
                for start, line, record in self._records(i, 0, 1, None):
                    if isinstance(record, InputError):
                        problems.append(str(record))
                        continue
                    problem = self._row_problem(path, line, record)
                    if problem:
                        problems.append(problem)
                        continue
                    if position % chunk_rows == 0:
                        chunks.append(Chunk(index=len(chunks), first=position))
                    chunk = chunks[-1]
                    if not chunk.segments or chunk.segments[-1].file != i:
                        chunk.segments.append(Segment(file=i, start=start, line=line, rows=0))
                    chunk.segments[-1].rows += 1
                    chunk.rows += 1
                    position += 1
            except InputError as exc:  # the whole file: unreadable, not Parquet, a missing column
                problems.append(str(exc))
            except PermissionError:
                problems.append(f"{path}: permission denied; make it readable")
        if problems:
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise InputError(f"cannot read the input ({len(problems)} problem(s)); nothing was extracted:\n  "
                             + "\n  ".join(problems[:MAX_LISTED]) + more)
        if not chunks:
            raise InputError(f"{', '.join(map(str, self.files[:3]))}: no rows to extract from")
        return chunks

    def read_chunk(self, chunk: Chunk) -> list[Row]:
        """The rows of one chunk, read from where the index says they start."""
        rows: list[Row] = []
        position = chunk.first
        for seg in chunk.segments:
            path = self.files[seg.file]
            taken = 0
            for _, line, record in self._records(seg.file, seg.start, seg.line, seg.rows):
                if isinstance(record, InputError) or self._row_problem(path, line, record):
                    continue  # indexed rows are readable; a bad row was reported (and refused) by index()
                rid: Union[int, str] = str(record[self.id_field]) if self.id_field else position
                text = record.get(self.text_field)
                rows.append(Row(rid, "" if text is None else text, f"{path}:{line}"))
                taken += 1
                position += 1
                if taken == seg.rows:
                    break
            if taken != seg.rows:
                raise InputError(f"{path}: changed while being read (expected {seg.rows} rows from line {seg.line}, "
                                 f"found {taken}); extract into a new --out")
        return rows
