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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from swiftpipe import evaluate
from swiftpipe.data.convert import messages
from swiftpipe.errors import SwiftpipeError
from swiftpipe.rundir import write_atomic, write_json


class LabelError(SwiftpipeError):
    pass


@dataclass
class LabelConfig:
    base_url: str
    model: str
    api_key: str
    system_prompt: Optional[str]
    schema: Optional[dict] = None
    concurrency: int = 8
    max_tokens: int = 512
    timeout: float = 120
    retries: int = 4
    verbatim: tuple[str, ...] = ()
    extra_body: dict = field(default_factory=dict)


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
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl" and not line.lstrip().startswith("{"):
            texts.append((number, line.strip()))
            continue
        try:
            record = json.loads(line)
            text = record["text"] if "text" in record else next(
                m["content"] for m in record["messages"] if m["role"] == "user")
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            problems.append(f"{path}:{number}: expected a JSON object with \"text\" or ms-swift \"messages\"")
            continue
        texts.append((number, str(text)))
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise LabelError("cannot read the input texts:\n  " + "\n  ".join(problems[:10]) + more)
    return texts


def cache_key(cfg: LabelConfig, text: str) -> str:
    payload = json.dumps([cfg.system_prompt, cfg.schema, cfg.model, text], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            cache[entry["key"]] = entry
    return cache


def problems(answer: Any, text: str, cfg: LabelConfig, validator) -> list[str]:
    """Why an answer cannot be used (empty when it can)."""
    if answer is None:
        return ["the answer is not valid JSON"]
    found = []
    if validator is not None:
        found += [f"schema: {e.message}" + (f" at '{'.'.join(map(str, e.path))}'" if e.path else "")
                  for e in validator.iter_errors(answer)]
    if isinstance(answer, dict):
        for name in cfg.verbatim:
            value = answer.get(name)
            if not isinstance(value, str) or not value:
                found.append(f"{name} is missing or empty (it must be copied verbatim from the text)")
            elif value not in text:
                found.append(f"{name} '{value}' does not occur in the text")
    return found


def check_rows(path: Path, verbatim: tuple[str, ...]) -> list[str]:
    """Report lines of a labelled messages file whose verbatim fields are not in the user text."""
    rows = evaluate.read_test_rows(path)
    report = []
    for row in rows:
        answer = row.gold if isinstance(row.gold, dict) else {}
        for name in verbatim:
            value = answer.get(name)
            if not isinstance(value, str) or value not in row.user:
                report.append(f"{path}:{row.index + 1}: {name} {value!r} does not occur in the text")
    return report


async def _request_all(cfg: LabelConfig, todo: list[tuple[str, str]], cache_path: Path,
                       cache: dict[str, dict], progress: bool) -> dict[str, str]:
    """Send the uncached texts; append each answer to the cache as it arrives. Returns API errors by key."""
    import openai

    eval_cfg = evaluate.EvalConfig(base_url=cfg.base_url, model=cfg.model, api_key=cfg.api_key, schema=cfg.schema,
                                   max_tokens=cfg.max_tokens, retries=cfg.retries, extra_body=cfg.extra_body)
    client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0, timeout=cfg.timeout,
                                http_client=evaluate._http_client())
    errors: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="label", unit="req", dynamic_ncols=True)
    with cache_path.open("a", encoding="utf-8") as sink:

        async def ask(item: tuple[str, str]) -> None:
            key, text = item
            row = evaluate.TestRow(0, cfg.system_prompt, text, None, "")
            done = await evaluate.chat(client, evaluate.request_kwargs(eval_cfg, row), retries=cfg.retries,
                                       base_url=cfg.base_url, model=cfg.model)
            if done.error is not None:
                errors[key] = done.error
            else:
                entry = {"key": key, "model": cfg.model, "text": text, "raw": done.text,
                         "finish_reason": done.finish_reason, "prompt_tokens": done.prompt_tokens,
                         "completion_tokens": done.completion_tokens, "time": time.time()}
                sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                sink.flush()
                cache[key] = entry
            if bar:
                bar.update(1)

        try:
            await evaluate.for_each_concurrently(todo, ask, cfg.concurrency)
        finally:
            await client.close()
            if bar:
                bar.close()
    return errors


def label(cfg: LabelConfig, inputs: Path, out: Path, *, progress: bool = False) -> dict:
    """Label (or finish labelling) `inputs` into `out`; returns the summary (also written next to out)."""
    texts = read_texts(inputs)
    paths = Paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = load_cache(paths.cache)
    keyed = [(number, text, cache_key(cfg, text)) for number, text in texts]
    todo = list({key: text for _, text, key in keyed if key not in cache}.items())  # duplicates: asked once
    cached_before = len(keyed) - sum(1 for _, _, key in keyed if key not in cache)
    errors = asyncio.run(_request_all(cfg, todo, paths.cache, cache, progress)) if todo else {}

    validator = None
    if cfg.schema:
        import jsonschema

        validator = jsonschema.Draft202012Validator(cfg.schema)
    labelled, rejects = [], []
    for number, text, key in keyed:
        if key in errors:
            rejects.append({"line": number, "text": text, "raw": None,
                            "reasons": [f"API error (not cached; a rerun retries it): {errors[key]}"]})
            continue
        entry = cache[key]
        answer, _ = evaluate.parse_answer(entry["raw"])
        reasons = problems(answer, text, cfg, validator)
        if entry.get("finish_reason") == "length":
            reasons.append("the answer was cut off at max_tokens")
        if reasons:
            rejects.append({"line": number, "text": text, "raw": entry["raw"], "reasons": reasons})
            continue
        labelled.append(json.dumps(messages(cfg.system_prompt, text, answer), ensure_ascii=False) + "\n")
    write_atomic(out, "".join(labelled))
    write_atomic(paths.rejects, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
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
        "model": cfg.model,
        "output": str(out),
        "rejects": str(paths.rejects),
        "cache": str(paths.cache),
    }
    write_json(paths.summary, summary)
    return summary
