"""The one place that reads and writes JSON lines (and writes any file atomically).

- Reading is numbered: every error names `file:line`.
- Files that are appended to while a process may die (predictions, label caches, swift's
  logging.jsonl) can end in a half-written line; `appended=True` drops such a last line (one that
  is not newline-terminated) instead of failing, because the next run rewrites it.
- Whole-file writes are atomic (write a temporary file beside the target, then rename), so a
  reader never sees half a file and an interrupted write leaves the old file in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TextIO, Union

from swiftpipe.core.errors import SwiftpipeError

PathLike = Union[str, Path]


class JsonlError(SwiftpipeError):
    """A line that is not valid JSON (or not the expected shape); the message names file:line."""


def dumps(value: Any) -> str:
    """One JSONL line (with its newline), Chinese kept readable."""
    return json.dumps(value, ensure_ascii=False) + "\n"


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, ends with a newline) for each line of the file."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise JsonlError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JsonlError(f"{path}: is a directory, expected a JSONL file") from None
    with f:
        for number, line in enumerate(f, 1):
            yield number, line, line.endswith("\n")


def scan(path: PathLike, *, appended: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or JsonlError) for each non-blank line; never raises for a bad line.

    For callers that collect every bad line and report them together (converters, validators).
    """
    path = Path(path)
    for number, line, complete in _lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            if appended and not complete:
                return  # a last line cut short by a kill: the writer redoes it
            yield number, JsonlError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})")


def scan_offsets(path: PathLike, *, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, Any]]:
    """(line number, byte offset of the line, parsed value or JsonlError) for each non-blank line,
    starting at byte `offset` (which is line number `line`).

    For inputs too big to hold: an index of offsets lets a later reader (another process, another
    machine) start in the middle of the file. Bytes that are not UTF-8 are an error of that line.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise JsonlError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JsonlError(f"{path}: is a directory, expected a JSONL file") from None
    with f:
        f.seek(offset)
        number = line - 1
        for raw in f:
            number += 1
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                yield number, start, json.loads(raw.decode("utf-8-sig" if start == 0 else "utf-8"))
            except UnicodeDecodeError as exc:
                yield number, start, JsonlError(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line)")
            except json.JSONDecodeError as exc:
                yield number, start, JsonlError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})")


def read(path: PathLike, *, appended: bool = False, skip_bad: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line.

    A bad line raises JsonlError naming file:line, unless `skip_bad` (for logs written by other
    tools, where a stray line must not stop us).
    """
    for number, value in scan(path, appended=appended):
        if isinstance(value, JsonlError):
            if skip_bad:
                continue
            raise value
        yield number, value


def read_all(path: PathLike, *, appended: bool = False, skip_bad: bool = False) -> list[Any]:
    return [value for _, value in read(path, appended=appended, skip_bad=skip_bad)]


def raw_lines(path: PathLike) -> list[str]:
    """The non-blank lines as written (for moving rows between files byte for byte), each checked
    to be valid JSON."""
    path = Path(path)
    out = []
    for number, line, _ in _lines(path):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        out.append(line.rstrip("\n"))
    return out


def write_raw_lines(path: PathLike, lines: Iterable[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines))


def last(path: PathLike) -> Optional[Any]:
    """The last parseable line's value (swift's summary line), or None."""
    found = None
    try:
        for _, value in read(path, appended=True, skip_bad=True):
            found = value
    except JsonlError:  # no such file
        return None
    return found


def append(sink: TextIO, value: Any) -> None:
    """Append one line and flush it, so a kill loses at most the line being written."""
    sink.write(dumps(value))
    sink.flush()


class Follower:
    """Reads a JSONL file that another process is still writing: each call returns the values of
    the complete lines added since the last call. Half-written and malformed lines are skipped —
    a progress view must never fail on someone else's log."""

    def __init__(self, path: PathLike, *, from_end: bool = False):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if from_end and self.path.exists() else 0

    def new(self) -> list[Any]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written line waits for the next call
        self.offset += len(complete)
        values = []
        for raw in complete.splitlines():
            try:
                values.append(json.loads(raw.decode("utf-8", errors="replace")))
            except json.JSONDecodeError:
                continue
        return values


# ---------------------------------------------------------------- atomic writes


def write_atomic(path: PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_lines(path: PathLike, values: Iterable[Any]) -> int:
    """Write a whole JSONL file atomically; returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for value in values:
            f.write(dumps(value))
            count += 1
    os.replace(tmp, path)
    return count


def write_json(path: PathLike, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: PathLike) -> Optional[Any]:
    """A JSON file's content, None when it does not exist; a broken file is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise JsonlError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix or delete the file") from None
