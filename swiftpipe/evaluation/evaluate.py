"""Evaluate a served model on a messages JSONL test set (`swiftpipe eval`, and the run's eval stages).

Requests are the task's (`Task.sdk_kwargs`: the same extraction request as everywhere: temperature
0, thinking off, the answer schema as `response_format`), sent through swiftpipe.task.client concurrently. Every finished row is
appended to predictions.jsonl at once, so an interrupted evaluation resumes where it stopped,
losing and repeating nothing. Scoring is swiftpipe.evaluation.scoring, the Markdown swiftpipe.evaluation.reports.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.evaluation import reports, scoring
from swiftpipe.recipe.schema import EvalSection
from swiftpipe.recipe.task import Task
from swiftpipe.task import client, messages
from swiftpipe.task.answers import parse_answer
from swiftpipe.task.confidence import METRICS
from swiftpipe.task.messages import Example


class EvalError(SwiftpipeError):
    pass


def read_test_rows(path: Path, default_system: Optional[str] = None) -> list[Example]:
    """The test set: messages rows whose assistant turn is the gold JSON; all bad rows at once."""
    return messages.read(path, default_system=default_system)


async def _ask(api, endpoint: client.Endpoint, row: Example, task: Task) -> dict:
    done = await client.chat(api, task.sdk_kwargs(endpoint.model, row.user, system=row.system), endpoint)
    prediction, think = parse_answer(done.text)
    correct, fields = scoring.score(row.answer, prediction)
    scored = task.score(done.text, done.pieces) if prediction is not None else None
    return {
        "index": row.index,
        "key": row.key,
        "input": row.user,
        "gold": row.answer,
        "prediction": prediction,
        "raw": done.text,
        "correct": correct,
        "fields": fields,
        "outcomes": scoring.field_outcomes(row.answer, prediction, row.user, task.verbatim_fields),
        # per field, the probability of its exact value (task.confidence); None: no logprobs from the server
        "confidence": scored.values() if scored else None,
        "row_confidence": scored.row_value() if scored else None,
        "confidence_aggregates": {m: scored.values(m) for m in METRICS} if scored else None,
        "think_block": think,
        "error": done.error,
        "latency_s": done.latency_s,
        "prompt_tokens": done.prompt_tokens,
        "cached_tokens": done.cached_tokens,  # of prompt_tokens, from the server's prefix cache
        "server": endpoint.base_url,
    }


def load_done(path: Path, rows: Sequence[Example]) -> dict[int, dict]:
    """Finished rows from an earlier, interrupted evaluation of the same test set.

    A row counts as finished when it got an answer (API errors are retried). A half-written last
    line (killed mid-write) and rows whose content changed are dropped.
    """
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    keys = {r.index: r.key for r in rows}
    for _, record in jsonl.read(path, appended=True, skip_bad=True):
        index = record.get("index")
        if keys.get(index) == record.get("key") and record.get("error") is None:
            done[index] = record
    return done


async def _evaluate(endpoints: list[client.Endpoint], rows: Sequence[Example], out: Path, *, task: Task,
                    settings: EvalSection, progress: bool) -> tuple[list[dict], float, int]:
    predictions = out / "predictions.jsonl"
    done = load_done(predictions, rows)
    # Rewrite the file with the clean finished records before appending to it.
    jsonl.write_lines(predictions, (done[i] for i in sorted(done)))
    todo = [r for r in rows if r.index not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), initial=len(done), desc="eval", unit="req", dynamic_ncols=True)
    apis = [client.async_client(e) for e in endpoints]
    started = time.perf_counter()

    with open(predictions, "a", encoding="utf-8") as sink:

        async def ask(row: Example) -> None:
            which = row.index % len(endpoints)  # spread over the replicas
            record = await _ask(apis[which], endpoints[which], row, task)
            jsonl.append(sink, record)
            done[row.index] = record
            if bar:
                bar.update(1)

        try:
            await client.for_each_concurrently(todo, ask, settings.concurrency)
        finally:
            for api in apis:
                await api.close()
            if bar:
                bar.close()
    return [done[i] for i in sorted(done)], time.perf_counter() - started, len(todo)


def evaluate(endpoints: list[client.Endpoint], rows: Sequence[Example], out: Path, *, schema: Optional[dict],
             settings: EvalSection, progress: bool = True, title: str = "", extra: Optional[dict] = None,
             verbatim_fields: Sequence[str] = ()) -> dict:
    """Run (or resume) the evaluation into `out`; returns metrics.json's content.

    `endpoints`: one or more servers of the same model; rows alternate between them. `extra`: more
    keys for metrics.json (what the caller knows of the server, e.g. the dtype it served in).
    `verbatim_fields`: fields whose value must occur in the text (a value that does not is "invented").
    """
    out.mkdir(parents=True, exist_ok=True)
    # Each row carries its system prompt (its own, else the recipe's): the task brings the rest.
    task = Task(schema=schema, max_tokens=settings.max_tokens, metric=settings.metric,
                verbatim_fields=tuple(verbatim_fields), confidence=settings.confidence)
    records, wall, sent = asyncio.run(_evaluate(endpoints, rows, out, task=task, settings=settings,
                                                progress=progress))
    # Final form: one line per row, in test-file order.
    jsonl.write_lines(out / "predictions.jsonl", records)
    metrics = scoring.compute_metrics(records, wall_seconds=wall, sent=sent, metric=settings.metric,
                                      accept_target=settings.accept_target)
    metrics.update(model=endpoints[0].model, base_url=endpoints[0].base_url,
                   replicas=[e.base_url for e in endpoints[1:]], schema_constrained=schema is not None,
                   **prefix_cache(records))
    metrics.update(extra or {})
    jsonl.write_json(out / "metrics.json", metrics)
    figure = reports.reliability_png(metrics, out / reports.RELIABILITY_PNG)
    jsonl.write_atomic(out / "report.md", reports.report_markdown(metrics, records, title=title or endpoints[0].model,
                                                                  figure=figure))
    return metrics


def prefix_cache(records: Sequence[dict]) -> dict:
    """The prompt tokens the server took from its prefix cache (vLLM's usage, with
    --enable-prompt-tokens-details; rows of an older swiftpipe count as none)."""
    prompt = sum(r.get("prompt_tokens") or 0 for r in records)
    cached = sum(r.get("cached_tokens") or 0 for r in records)
    return {"prompt_tokens": prompt, "cached_prompt_tokens": cached,
            "cached_prompt_share": round(cached / prompt, 4) if prompt else None}


def read_records(out: Path) -> list[dict]:
    """The records of a finished evaluation directory (predictions.jsonl)."""
    return jsonl.read_all(out / "predictions.jsonl")


# ---------------------------------------------------------------- `swiftpipe eval`


def eval_command(test_file: str, *, base_urls: list[str], model: str, out_dir: str, concurrency: Optional[int],
                 schema_file: Optional[str], recipe: Optional[str], max_tokens: Optional[int],
                 timeout: Optional[float], no_schema: bool, metric: Optional[str] = None) -> None:
    from swiftpipe.recipe.load import load_recipe

    loaded = load_recipe(recipe).recipe if recipe else None
    console.resume_hint(f"rerun the same `swiftpipe eval` command: the rows already answered are kept in "
                        f"{Path(out_dir) / 'predictions.jsonl'} and not asked again")
    rows = read_test_rows(Path(test_file), loaded.data.system_prompt if loaded else None)
    schema: Optional[dict]
    if no_schema:
        schema = None
    elif schema_file:
        schema = jsonl.read_json(schema_file)
    else:
        schema = (loaded.data.json_schema() if loaded else None) or scoring.schema_from_gold(rows)
    base = loaded.eval if loaded else EvalSection()
    settings = base.model_copy(update={k: v for k, v in (("concurrency", concurrency), ("max_tokens", max_tokens),
                                                         ("timeout", timeout), ("metric", metric)) if v is not None})
    key = os.environ.get("OPENAI_API_KEY", "EMPTY")
    endpoints = [client.Endpoint(url, model, key, timeout=settings.timeout) for url in base_urls]
    metrics = evaluate(endpoints, rows, Path(out_dir), schema=schema, settings=settings,
                       progress=sys.stderr.isatty(), verbatim_fields=loaded.data.verbatim_fields if loaded else ())
    console.say(f"{reports.headline(metrics)}, {(metrics['requests_per_s'] or 0):.1f} requests/s")
    console.say(reports.accept_sentence(metrics.get("confidence")))
    console.say(f"written: {Path(out_dir) / 'predictions.jsonl'}, metrics.json, report.md")

