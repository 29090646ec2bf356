"""One batch extraction into an output directory: the chunks, what is done, what is left, the
per-row results and the summary. Engine-independent: the offline loop, the server loop and each
Ray actor call `Job.run_chunk` for a chunk.

OUT holds:
- `manifest.json`: the input (paths, sizes, mtimes), the columns, the chunking, the format and the
  model; a rerun with other settings is refused instead of mixing two extractions;
- `chunks.jsonl`: where each chunk starts in the input (see `inputs`);
- `part-NNNNNN.parquet|jsonl`: a finished chunk (see `parts`);
- `summary.json`: rows, valid %, flag and error counts, speed, versions; this run's distinct texts,
  model calls, cache hits and the prefix-cached share of prompt tokens;
- `.results.sqlite`: the answers by (model, task, text), unless `--cache DIR` keeps them there
  (`results`): each distinct text is asked once.
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.extract import parts
from swiftpipe.extract.engines import Answer
from swiftpipe.extract.inputs import Chunk, Input, InputError, Row
from swiftpipe.extract.results import ResultStore, text_key
from swiftpipe.recipe.task import Task
from swiftpipe.task import flags

MANIFEST_VERSION = 1
# Settings that must stay the same for a rerun to continue an output directory.
RESUME_KEYS = ("input", "text_field", "id_field", "chunk_rows", "format", "keep_text", "fields", "model")


class ExtractError(SwiftpipeError):
    pass


@dataclass
class ChunkResult:
    chunk: int
    rows: int = 0  # rows sent through the engine or refused this time
    skipped: bool = False
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, found in the engine's prefix cache
    model_calls: int = 0  # distinct texts sent to the engine
    cache_hits: int = 0  # distinct texts answered from the result store (an earlier run's answers)
    repeats: int = 0  # rows whose text an earlier row of this run already asked


# What a Ray actor returns per chunk (every count of ChunkResult).
RESULT_FIELDS = ("chunk", "rows", "skipped", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
                 "model_calls", "cache_hits", "repeats")


class Slot:
    """The answer to one distinct text, shared by every row with that text; filled when the
    engine answers (or at once, from the store)."""

    __slots__ = ("answer", "row")

    def __init__(self, answer: Optional[Answer] = None):
        self.answer = answer
        self.row: Optional[dict] = None  # the first row built from it (a template for the others)


@dataclass
class Prepared:
    """A chunk read and checked: the rows to answer (`todo`) and those already decided (`out`);
    `slots[j]` answers `todo[j]`, `send` are the distinct texts this chunk asks the engine."""

    chunk: Chunk
    rows: list[Row]
    out: list[Optional[dict]]
    todo: list[int]
    old: Optional[list[dict]]  # the finished part's rows, when only its errors are redone
    slots: list[Slot] = field(default_factory=list)
    send: list[tuple[bytes, Slot, str]] = field(default_factory=list)
    cache_hits: int = 0
    repeats: int = 0

    @property
    def texts(self) -> list[str]:
        return [text for _, _, text in self.send]


@dataclass
class Job:
    out: Path
    input: Input
    task: Task
    fmt: str
    keep_text: bool
    fields: list[str]
    retry_errors: bool = False
    store: Optional[ResultStore] = None  # answers by (model, task, text); None: repeats within a chunk only
    # Texts queued in the engine and not answered yet (at most the chunks in flight): a repeat waits for them.
    inflight: dict[bytes, Slot] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "inflight": {}}

    # ------------------------------------------------------------ one chunk

    def _row(self, row: Row, *, answer: Optional[Answer] = None,
             problem: Optional[flags.InputProblem] = None) -> dict:
        out: dict[str, Any] = {"id": row.id}
        if self.keep_text:
            out["text"] = row.text if isinstance(row.text, str) else None
        values: dict = {}
        valid, row_flags, raw = False, [], None
        confidence, needs_review = None, True  # no answer: a person has to look
        error, kind = (problem.message, problem.kind) if problem else (None, None)
        if answer is not None:
            if answer.error:
                error, kind, row_flags = answer.error, answer.error_kind, [answer.flag]
            else:
                checked = self.task.check(row.text, answer.raw, answer.pieces, scored=answer.scored)
                valid, row_flags = checked.valid, checked.flags
                confidence, needs_review = checked.confidence, checked.needs_review
                values = checked.fields if isinstance(checked.fields, dict) else {}
                if checked.fields is None:
                    error, kind = "the answer is not JSON", flags.INVALID_JSON
                elif not checked.valid:
                    error = "the answer does not fit the schema: " + "; ".join(checked.problems[:3])
                    kind = flags.SCHEMA_VIOLATION
                raw = answer.raw if (not valid or not self.fields) else None
                if answer.scored is None:  # what the store keeps of it (not the logprobs)
                    answer.scored = (checked.confidence, checked.row_confidence) if checked.confidence else None
        for name in self.fields:
            out[name] = parts.cell(values.get(name))
        out.update(valid=valid, flags=row_flags, error=error, error_kind=kind, raw=raw,
                   confidence=parts.confidence_cell(confidence), needs_review=needs_review)
        return out

    def _problems(self, rows: list[Row], engine) -> tuple[list[Optional[dict]], list[int]]:
        """Rows that cannot be sent (empty, not text, too long) become error rows at once; the
        indexes of the others are returned to be answered."""
        out: list[Optional[dict]] = [None] * len(rows)
        todo = []
        for i, row in enumerate(rows):
            if not isinstance(row.text, str):
                problem: Optional[flags.InputProblem] = flags.InputProblem(
                    flags.NOT_TEXT, f"'{self.input.text_field}' is {type(row.text).__name__}, not text ({row.where})")
            else:
                problem = self.task.input_problem(row.text, who="the model", length=engine.length)
            if problem:
                out[i] = self._row(row, problem=problem)
            else:
                todo.append(i)
        return out, todo

    def prepare(self, chunk: Chunk, engine) -> Optional[Prepared]:
        """What a chunk needs answered, or None when its part is finished (and nothing is retried)."""
        path = self.part(chunk)
        old = None
        if path.exists():
            if not self.retry_errors:
                return None
            old = parts.read(path)
            again = {r["id"] for r in old if r["error"]}
            if not again:
                return None
            rows = [r for r in self.input.read_chunk(chunk) if r.id in again]  # joined by id
        else:
            rows = self.input.read_chunk(chunk)
        out, todo = self._problems(rows, engine)
        return self._plan(Prepared(chunk, rows, out, todo, old))

    def _key(self, text: str) -> bytes:
        return self.store.key(text) if self.store is not None else text_key("", "", text)

    def _plan(self, p: Prepared) -> Prepared:
        """Give each row to answer its text's slot: one asked earlier in this run (queued or kept),
        one kept by an earlier run, or a new one whose text this chunk sends."""
        keys = [self._key(p.rows[i].text) for i in p.todo]
        unseen = list(dict.fromkeys(k for k in keys if k not in self.inflight))
        kept = self.store.get(unseen) if self.store is not None and unseen else {}
        local: dict[bytes, Slot] = {}
        for i, key in zip(p.todo, keys):
            slot = local.get(key)
            if slot is None:
                slot = self.inflight.get(key)
                if slot is None and key in kept:
                    answer, ours = kept[key]
                    slot = Slot(answer)
                    p.cache_hits += not ours
                    p.repeats += ours
                elif slot is None:
                    slot = self.inflight[key] = Slot()
                    p.send.append((key, slot, p.rows[i].text))
                else:
                    p.repeats += 1
                local[key] = slot
            else:
                p.repeats += 1
            p.slots.append(slot)
        return p

    def finish(self, p: Prepared, answers: list[Answer]) -> ChunkResult:
        """Turn the answers into rows, keep the new answers in the store and write the chunk's part
        (atomically)."""
        result = ChunkResult(chunk=p.chunk.index, rows=len(p.rows), model_calls=len(p.send),
                             cache_hits=p.cache_hits, repeats=p.repeats)
        assert len(answers) == len(p.send), (len(answers), len(p.send))
        for (key, slot, _), answer in zip(p.send, answers):
            slot.answer = answer
            self.inflight.pop(key, None)
            result.prompt_tokens += answer.prompt_tokens
            result.completion_tokens += answer.completion_tokens
            result.cached_tokens += answer.cached_tokens
        for i, slot in zip(p.todo, p.slots):
            assert slot.answer is not None, "a repeat was planned before the text it repeats was asked"
            row = p.rows[i]
            if slot.row is None:
                slot.row = p.out[i] = self._row(row, answer=slot.answer)
            else:  # the same text: the same answer, checks and confidence; its own id
                p.out[i] = {**slot.row, "id": row.id} | ({"text": row.text} if self.keep_text else {})
        if self.store is not None:
            self.store.put((key, slot.answer, bool(slot.row and slot.row["valid"])) for key, slot, _ in p.send
                           if slot.answer is not None)
        new = [r for r in p.out if r is not None]
        result.errors = sum(1 for r in new if r["error"])
        if p.old is not None:
            by_id = {r["id"]: r for r in new}
            new = [by_id.get(r["id"], r) for r in p.old]
        parts.write(self.part(p.chunk), new, fmt=self.fmt, fields=self.fields, keep_text=self.keep_text)
        return result

    def part(self, chunk: Chunk) -> Path:
        return parts.part_path(self.out, chunk.index, self.fmt)

    def needs_retry(self, chunk: Chunk) -> bool:
        return any(r["error"] for r in parts.read(self.part(chunk), ["error"]))

    def run_chunk(self, chunk: Chunk, engine, progress: Optional[Callable[[int], None]] = None) -> ChunkResult:
        """Extract one chunk into its part; a finished part is kept (with retry_errors: only its rows
        with an error are redone, and joined back by id)."""
        p = self.prepare(chunk, engine)
        if p is None:
            return ChunkResult(chunk=chunk.index, skipped=True)
        if progress and len(p.send) < len(p.rows):
            progress(len(p.rows) - len(p.send))
        answers = engine.run(p.texts, progress) if p.send else []
        return self.finish(p, answers)

    def run_pipelined(self, chunks: list[Chunk], engine, on_result: Callable[[ChunkResult], None],
                      progress: Optional[Callable[[int], None]] = None) -> None:
        """Like run_chunk over `chunks`, with the next chunk queued in the engine while the current
        one finishes: the engine never drains between chunks (for engines with submit/collect)."""
        queue: collections.deque = collections.deque()

        def finish_first() -> None:
            p, ticket = queue.popleft()
            on_result(self.finish(p, engine.collect(ticket, progress)))

        for chunk in chunks:
            p = self.prepare(chunk, engine)
            if p is None:
                on_result(ChunkResult(chunk=chunk.index, skipped=True))
                continue
            if progress and len(p.send) < len(p.rows):
                progress(len(p.rows) - len(p.send))
            queue.append((p, engine.submit(p.texts)))
            if len(queue) > 1:
                finish_first()
        while queue:
            finish_first()

    # ------------------------------------------------------------ the whole output

    def summary(self) -> dict:
        """Counts over every finished part (read one at a time, three columns each)."""
        rows = valid = errors = review = 0
        flag_counts: collections.Counter = collections.Counter()
        error_counts: collections.Counter = collections.Counter()
        chunks = 0
        for _, part_rows in parts.iter_rows(self.out, self.fmt, ["valid", "flags", "error", "error_kind",
                                                                 "needs_review"]):
            chunks += 1
            for r in part_rows:
                rows += 1
                valid += bool(r["valid"])
                review += r["needs_review"] is not False  # a part of an older swiftpipe: unknown, counted
                flag_counts.update(r["flags"] or [])
                if r["error"]:
                    errors += 1
                    error_counts[r["error_kind"] or "other"] += 1
        return {"rows": rows, "valid": valid, "valid_pct": round(100 * valid / rows, 2) if rows else None,
                "errors": errors, "errors_by_kind": dict(error_counts.most_common()),
                "needs_review": review, "needs_review_share": round(review / rows, 4) if rows else None,
                "accept_threshold": self.task.accept_threshold,
                "flags": dict(sorted(flag_counts.items())), "finished_chunks": chunks}


# ---------------------------------------------------------------- manifest and index


def open_output(out: Path, manifest: dict, inp: Input, chunk_rows: int) -> list[Chunk]:
    """Create OUT or check that it continues the same extraction; returns the chunks."""
    stored = jsonl.read_json(out / "manifest.json") if out.is_dir() else None
    index_path = out / "chunks.jsonl"
    if stored is not None:
        changed = [k for k in RESUME_KEYS if stored.get(k) != manifest.get(k)]
        if changed:
            lines = []
            for k in changed:
                was, now = stored.get(k), manifest.get(k)
                if k == "input":
                    was, now = _describe_input(was), _describe_input(now)
                lines.append(f"  {k}: was {was}, now {now}")
            raise ExtractError(f"{out} holds another extraction; these settings differ:\n" + "\n".join(lines)
                               + f"\nRerun with the settings it was started with to continue it, or extract into a "
                                 f"new --out (or delete {out})")
        if index_path.exists():
            try:
                return [Chunk.from_json(c) for c in jsonl.read_all(index_path)]
            except (jsonl.JsonlError, KeyError, TypeError):
                pass  # rebuilt below
    elif out.is_dir() and any(out.iterdir()):
        raise ExtractError(f"{out} is not empty and is not a `swiftpipe extract` output; choose a new or empty --out")
    elif out.exists():
        raise ExtractError(f"--out {out} is a file; name a directory")
    chunks = inp.index(chunk_rows)  # every input problem is reported before OUT is created
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "chunks": len(chunks), "rows": sum(c.rows for c in chunks)}
    jsonl.write_json(out / "manifest.json", manifest)  # first: a kill in between leaves a rebuildable index
    jsonl.write_lines(index_path, (c.to_json() for c in chunks))
    return chunks


def _describe_input(files: Any) -> str:
    if not isinstance(files, list):
        return str(files)
    return "; ".join(f"{f.get('path')} ({f.get('size')} bytes)" for f in files[:3]) + (" ..." if len(files) > 3 else "")


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar (rows/s, ETA) on a terminal; a line every `every` seconds otherwise (logs)."""

    def __init__(self, total: int, initial: int, *, every: float = 10.0):
        self.total, self.count, self.every = total, initial, every
        self.started = self.last = time.monotonic()
        self.start_count = initial
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="extract", unit="row", dynamic_ncols=True)

    def restart(self) -> None:
        """Count speed from now (the engine is loaded)."""
        self.started = self.last = time.monotonic()
        self.start_count = self.count

    def __call__(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            console.say(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.count - self.start_count) / elapsed
        left = self.total - self.count
        eta = f", ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        pct = 100 * self.count / self.total if self.total else 100
        return f"extract: {self.count:,}/{self.total:,} rows ({pct:.0f}%), {rate:.1f} rows/s{eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Totals:
    rows: int = 0
    chunks_run: int = 0
    chunks_skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cached_tokens: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    repeats: int = 0
    work_s: float = 0.0  # from the engine being ready to the last chunk written

    def add(self, r: ChunkResult) -> None:
        if r.skipped:
            self.chunks_skipped += 1
            return
        self.chunks_run += 1
        self.rows += r.rows
        self.errors += r.errors
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens
        self.cached_tokens += r.cached_tokens
        self.model_calls += r.model_calls
        self.cache_hits += r.cache_hits
        self.repeats += r.repeats

    def record(self) -> dict:
        """This run's counts for summary.json: each distinct text once, and the prompt-token cache."""
        return {"distinct_texts": self.model_calls + self.cache_hits, "model_calls": self.model_calls,
                "cache_hits": self.cache_hits, "repeated_rows": self.repeats,
                "cached_prompt_tokens": self.cached_tokens,
                "cached_prompt_share": round(self.cached_tokens / self.prompt_tokens, 4) if self.prompt_tokens
                else None}


def check_fields(fields: list[str]) -> None:
    clash = [f for f in fields if f in parts.FIXED]
    if clash:
        raise InputError(f"the answer schema has field(s) named {', '.join(clash)}, which are output columns of "
                         f"`swiftpipe extract` ({', '.join(parts.FIXED)}); rename them in data.output_schema")
