"""Each distinct text once: the answers of an extraction, kept by (model, task, text).

A `ResultStore` is one SQLite file (`OUT/.results.sqlite` by default; `--cache DIR` puts it at
`DIR/results.sqlite`, shared by every extraction that names DIR). Its key is the SHA-256 of the
model's fingerprint (`model_fingerprint`: a hash of the weights and tokenizer files, or what a
server says it serves), the task's (`Task.fingerprint`: system prompt, schema, sampling, confidence
on/off) and the text exactly as it is sent (the request carries it unchanged; nothing is
normalised, nothing fuzzy). A changed model or task has other keys: nothing is reused across them.

What is kept is the model's answer, not the output row: the raw text, the per-field confidence and
the row confidence computed from the token logprobs (the logprobs themselves are not kept), or the
error. A row built from it is checked again with the task of the run (flags, validity, the accept
threshold of this run: `needs_review` is recomputed, so the same answer gets the same row fresh or
cached). Answers with an error (server error, timeout, engine error, invalid JSON, schema
violation) are reused only within the run that got them: a rerun (or --retry-errors) asks again.

Why SQLite, not a dict: memory stays flat in the number of rows (the store is on disk, SQLite's
page cache is bounded); duplicates are found across every chunk of the input, across Ray actors
of one machine (WAL: many readers and writers) and across runs. What is in memory is bounded by
the chunks in flight: the texts queued in the engine (`Job.run_pipelined` queues two chunks), so
that a repeat of a text not answered yet waits for that answer instead of a second call.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Iterable, Optional

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.extract.engines import Answer

STORE_NAME = "results.sqlite"  # in --cache DIR
DEFAULT_NAME = ".results.sqlite"  # in OUT, without --cache
# Files of a model directory that decide its answers (weights, config, tokenizer, chat template).
_MODEL_FILES = (".safetensors", ".bin", ".pt", ".json", ".model", ".tiktoken", ".jinja", ".txt")


class CacheError(SwiftpipeError):
    pass


def text_key(model_fp: str, task_fp: str, text: str) -> bytes:
    return hashlib.sha256(f"{model_fp}\0{task_fp}\0{text}".encode("utf-8", "surrogatepass")).digest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_fingerprint(model_dir: str, *, extra: str = "", known: Optional[dict] = None) -> str:
    """A hash of the files of `model_dir` that decide its answers (names and contents), plus
    `extra` (the engine's dtype ...). `known` maps (path, size, mtime_ns) to a digest computed
    before, so a multi-GB model is hashed once per change (the store keeps it)."""
    root = Path(model_dir).resolve()
    if not root.is_dir():
        return f"model {model_dir} {extra}"
    h = hashlib.sha256(extra.encode())
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_MODEL_FILES)
                       and p.name not in ("trainer_state.json", "training_args.bin", "optimizer.pt")):
        st = path.stat()
        memo = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
        digest = (known or {}).get(memo)
        if digest is None:
            digest = _file_sha256(path)
            if known is not None:
                known[memo] = digest
        h.update(f"{path.name}\0{digest}\0".encode())
    return h.hexdigest()


def _record(answer: Answer) -> str:
    """What is kept of an answer (see the module docstring)."""
    values, row = answer.scored or (None, None)
    return json.dumps({"raw": answer.raw, "error": answer.error, "error_kind": answer.error_kind,
                       "timed_out": answer.timed_out, "confidence": values, "row_confidence": row},
                      ensure_ascii=False)


def answer_of(record: str) -> Answer:
    data = json.loads(record)
    scored = (data["confidence"], data["row_confidence"]) if data.get("confidence") is not None else None
    return Answer(raw=data["raw"], error=data["error"], error_kind=data["error_kind"],
                  timed_out=bool(data["timed_out"]), scored=scored, reused=True)


class ResultStore:
    """The store of one extraction run (see the module docstring). Picklable: a Ray actor opens
    its own connection."""

    def __init__(self, path: Path, model_fp: str, task_fp: str, *, shared: bool):
        self.path, self.model_fp, self.task_fp, self.shared = path, model_fp, task_fp, shared
        self.run = uuid.uuid4().hex  # which answers this run got (errors are reused only by it)
        self._db: Optional[sqlite3.Connection] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_db": None}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = connect(self.path)
        return self._db

    def key(self, text: str) -> bytes:
        return text_key(self.model_fp, self.task_fp, text)

    def get(self, keys: list[bytes]) -> dict[bytes, tuple[Answer, bool]]:
        """{key: (answer, got by this run)} for the keys the store has a usable answer for."""
        found: dict[bytes, tuple[Answer, bool]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, record, ok, run in self.db.execute(
                    f"SELECT key, record, ok, run FROM results WHERE key IN ({marks})", part):
                if ok or run == self.run:
                    found[key] = (answer_of(record), run == self.run)
        return found

    def put(self, items: Iterable[tuple[bytes, Answer, bool]]) -> None:
        """Keep these (key, answer, whether its row is valid) in one transaction."""
        rows = [(key, _record(answer), int(answer.error is None and valid), self.run) for key, answer, valid in items]
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO results (key, record, ok, run) VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS results (key BLOB PRIMARY KEY, record TEXT NOT NULL, "
                   "ok INTEGER NOT NULL, run TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS model_files (memo TEXT PRIMARY KEY, digest TEXT NOT NULL)")
    except sqlite3.Error as exc:
        raise CacheError(f"{path}: cannot open the result cache ({exc}); choose another --cache DIR") from None
    db.isolation_level = "DEFERRED"  # `with db:` transactions from here on
    return db


def open_store(out: Path, cache_dir: Optional[str], *, model_dir: Optional[str], model_id: str, engine_extra: str,
               task_fp: str) -> ResultStore:
    """The store of this run: `--cache DIR`'s, else one in OUT. The model's fingerprint is its
    files' hash when the model directory is here, else `model_id` (what the server serves)."""
    path = Path(cache_dir) / STORE_NAME if cache_dir else out / DEFAULT_NAME
    if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise CacheError(f"--cache {cache_dir} is a file; name a directory")
    db = connect(path)
    try:
        known = dict(db.execute("SELECT memo, digest FROM model_files").fetchall())
        before = dict(known)
        fp = (model_fingerprint(model_dir, extra=engine_extra, known=known) if model_dir
              else hashlib.sha256(f"{model_id}\0{engine_extra}".encode()).hexdigest())
        new = [(k, v) for k, v in known.items() if k not in before]
        if new:
            with db:
                db.executemany("INSERT OR REPLACE INTO model_files VALUES (?, ?)", new)
    finally:
        db.close()
    if cache_dir:
        os.chmod(path, 0o600)  # answers hold the texts' values
    return ResultStore(path, fp, task_fp, shared=bool(cache_dir))
