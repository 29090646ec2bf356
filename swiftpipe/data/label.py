"""Teacher labelling (distillation): raw texts → any OpenAI-compatible teacher → training rows.

Every answer is appended to a persistent cache (JSONL, flushed per answer) keyed by
sha256(system prompt, schema, teacher model, text): a rerun reuses it and never pays for the same
request twice, and an interrupt loses at most the requests in flight. Answers are checked against
the JSON schema and, optionally, verbatim fields (a phone or name the teacher made up is not in
the text); failures go to a rejects file with their reasons, the rest to the output as ms-swift
messages rows with a compact JSON assistant turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftpipe.core import jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.task import Task
from swiftpipe.task import client, messages
from swiftpipe.task.answers import parse_answer


class LabelError(SwiftpipeError):
    pass


@dataclass
class Paths:
    out: Path

    @property
    def cache(self) -> Path:
        return self.out.with_name(self.out.name + ".cache.jsonl")

    @property
    def rejects(self) -> Path:
        return self.out.with_name(self.out.name + ".rejects.jsonl")

    @property
    def summary(self) -> Path:
        return self.out.with_name(self.out.name + ".summary.json")


def read_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) from a .txt file (one text a line) or JSONL with "text" or messages rows (the user turn)."""
    if not path.is_file():
        raise LabelError(f"{path}: no such file")
    texts, problems = [], []
    if path.suffix != ".jsonl" and not path.read_text(encoding="utf-8").lstrip().startswith("{"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                texts.append((number, line.strip()))
        return texts
    for number, record in jsonl.scan(path):
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            texts.append((number, record["text"]))
            continue
        try:
            texts.append((number, messages.parse(record, line=number, require_answer=False).user))
        except ValueError:
            problems.append(f"{path}:{number}: expected a JSON object with \"text\" or ms-swift \"messages\"")
    if problems:
        raise LabelError("cannot read the input texts:\n" + messages.listing(problems, 10))
    return texts


def cache_key(task: Task, model: str, text: str) -> str:
    payload = json.dumps([task.system_prompt, task.schema, model, text], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_cache(path: Path) -> dict[str, dict]:
    """The answers of earlier runs (a line cut short by a kill is dropped: it is asked again)."""
    if not path.exists():
        return {}
    return {entry["key"]: entry for _, entry in jsonl.read(path, appended=True, skip_bad=True)
            if isinstance(entry, dict) and "key" in entry}


def problems(answer: Any, text: str, verbatim: tuple[str, ...], validator) -> list[str]:
    """Why an answer cannot be used (empty when it can)."""
    if answer is None:
        return ["the answer is not valid JSON"]
    found = []
    if validator is not None:
        found += [f"schema: {e.message}" + (f" at '{'.'.join(map(str, e.path))}'" if e.path else "")
                  for e in validator.iter_errors(answer)]
    if isinstance(answer, dict):
        for name in verbatim:
            value = answer.get(name)
            if not isinstance(value, str) or not value:
                found.append(f"{name} is missing or empty (it must be copied verbatim from the text)")
            elif value not in text:
                found.append(f"{name} '{value}' does not occur in the text")
    return found


def check_rows(path: Path, verbatim: tuple[str, ...]) -> list[str]:
    """Report lines of a labelled messages file whose verbatim fields are not in the user text."""
    rows = messages.read(path)
    report = []
    for row in rows:
        answer = row.answer if isinstance(row.answer, dict) else {}
        for name in verbatim:
            value = answer.get(name)
            if not isinstance(value, str) or value not in row.user:
                report.append(f"{path}:{row.line}: {name} {value!r} does not occur in the text")
    return report


async def _request_all(endpoint: client.Endpoint, task: Task, todo: list[tuple[str, str]], cache_path: Path,
                       cache: dict[str, dict], concurrency: int, progress: bool) -> dict[str, str]:
    """Send the uncached texts; append each answer to the cache as it arrives. Returns API errors by key."""
    api = client.async_client(endpoint)
    errors: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="label", unit="req", dynamic_ncols=True)
    with cache_path.open("a", encoding="utf-8") as sink:

        async def ask(item: tuple[str, str]) -> None:
            key, text = item
            done = await client.chat(api, task.sdk_kwargs(endpoint.model, text), endpoint)
            if done.error is not None:
                errors[key] = done.error
            else:
                entry = {"key": key, "model": endpoint.model, "text": text, "raw": done.text,
                         "finish_reason": done.finish_reason, "prompt_tokens": done.prompt_tokens,
                         "completion_tokens": done.completion_tokens, "time": time.time()}
                jsonl.append(sink, entry)
                cache[key] = entry
            if bar:
                bar.update(1)

        try:
            await client.for_each_concurrently(todo, ask, concurrency)
        finally:
            await api.close()
            if bar:
                bar.close()
    return errors


def label(endpoint: client.Endpoint, task: Task, inputs: Path, out: Path, *, concurrency: int = 8,
          progress: bool = False) -> dict:
    """Label (or finish labelling) `inputs` into `out`; returns the summary (also written next to out)."""
    texts = read_texts(inputs)
    paths = Paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = load_cache(paths.cache)
    keyed = [(number, text, cache_key(task, endpoint.model, text)) for number, text in texts]
    todo = list({key: text for _, text, key in keyed if key not in cache}.items())  # duplicates: asked once
    cached_before = len(keyed) - sum(1 for _, _, key in keyed if key not in cache)
    errors = asyncio.run(_request_all(endpoint, task, todo, paths.cache, cache, concurrency, progress)) if todo else {}

    validator = None
    if task.schema:
        import jsonschema

        validator = jsonschema.Draft202012Validator(task.schema)
    labelled, rejects = [], []
    for number, text, key in keyed:
        if key in errors:
            rejects.append({"line": number, "text": text, "raw": None,
                            "reasons": [f"API error (not cached; a rerun retries it): {errors[key]}"]})
            continue
        entry = cache[key]
        answer, _ = parse_answer(entry["raw"])
        reasons = problems(answer, text, task.verbatim_fields, validator)
        if entry.get("finish_reason") == "length":
            reasons.append("the answer was cut off at max_tokens")
        if reasons:
            rejects.append({"line": number, "text": text, "raw": entry["raw"], "reasons": reasons})
            continue
        labelled.append(messages.build(task.system_prompt, text, answer))
    jsonl.write_lines(out, labelled)
    jsonl.write_lines(paths.rejects, rejects)
    sent_now = len(todo)
    summary = {
        "inputs": len(keyed),
        "labelled": len(labelled),
        "rejected": len(rejects),
        "api_errors": len(errors),
        "from_cache": cached_before,
        "requests_sent": sent_now,
        "tokens_this_run": sum(cache[k]["prompt_tokens"] + cache[k]["completion_tokens"]
                               for k, _ in todo if k in cache),
        "tokens_all_runs": sum(e["prompt_tokens"] + e["completion_tokens"] for e in cache.values()),
        "model": endpoint.model,
        "output": str(out),
        "rejects": str(paths.rejects),
        "cache": str(paths.cache),
    }
    jsonl.write_json(paths.summary, summary)
    return summary
