"""`swiftpipe data ...`: one function per subcommand (the CLI only parses and calls)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click

from swiftpipe.core import console
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.schema import DataSection


def _recipe_data(recipe: Optional[str]) -> Optional[DataSection]:
    """The `data` section of a recipe (system prompt, schema, verbatim fields), or None."""
    if not recipe:
        return None
    from swiftpipe.recipe.load import load_recipe

    return load_recipe(recipe, []).recipe.data


def synth_address(n: int, seed: int, out: str, recipe: Optional[str]) -> None:
    from swiftpipe.data import synth

    data = _recipe_data(recipe)
    prompt = data.system_prompt if data else synth.ADDRESS_SYSTEM_PROMPT
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        count = synth.write_samples(f, n, seed, prompt)
    tmp.replace(path)
    seconds = time.perf_counter() - started
    console.say(f"wrote {count} rows to {path} (seed {seed}, {count / max(seconds, 1e-9):,.0f} rows/s)")


def convert(fmt: str, input_path: str, out: str, system_prompt: Optional[str], types: Optional[str]) -> None:
    from swiftpipe.data import convert as conv

    result = conv.convert(fmt, Path(input_path), system_prompt=system_prompt,
                          types=tuple(t.strip() for t in types.split(",")) if types else None)
    for bad in result.bad[:20]:
        console.warn(f"{input_path}:{bad.line}: skipped: {bad.reason}")
    if len(result.bad) > 20:
        console.warn(f"... and {len(result.bad) - 20} more bad rows")
    if not result.rows:
        raise SwiftpipeError(f"{input_path}: no row could be converted from format '{fmt}' "
                             f"({len(result.bad)} bad rows); check --from")
    conv.write_rows(result.rows, Path(out))
    console.say(f"converted {len(result.rows)} rows to {out}" + (f"; {len(result.bad)} bad rows skipped" if result.bad else ""))


def label(inputs: Optional[str], out: Optional[str], base_url: Optional[str], model: Optional[str],
          recipe: Optional[str], system_prompt: Optional[str], schema_file: Optional[str], concurrency: int,
          max_tokens: int, verbatim: Optional[str], check: Optional[str]) -> None:
    from swiftpipe.core import jsonl
    from swiftpipe.data import label as lab
    from swiftpipe.recipe.task import Task
    from swiftpipe.task import client

    data = _recipe_data(recipe)
    fields = tuple(v.strip() for v in verbatim.split(",")) if verbatim else tuple(data.verbatim_fields if data else ())
    if check:
        report = lab.check_rows(Path(check), fields or ("name", "phone"))
        for line in report:
            console.say(line)
        console.say(f"{check}: {len(report)} verbatim problems")
        if report:
            sys.exit(1)
        return
    if not (inputs and out and base_url and model):
        raise click.UsageError("labelling needs INPUT, --out, --base-url and --model (or use --check FILE)")
    schema = jsonl.read_json(schema_file) if schema_file else (data.json_schema() if data else None)
    task = Task(system_prompt=system_prompt or (data.system_prompt if data else None), schema=schema,
                max_tokens=max_tokens, verbatim_fields=fields,
                confidence=False)  # a teacher's labels are reviewed by their checks, not its logprobs (and
    # hosted teachers do not all accept logprobs beside a json_schema response_format)
    endpoint = client.Endpoint(base_url, model, os.environ.get("OPENAI_API_KEY", "EMPTY"))
    console.resume_hint(f"rerun the same `swiftpipe data label` command: the answers received so far are cached in "
                        f"{lab.Paths(Path(out)).cache} and not asked again")
    summary = lab.label(endpoint, task, Path(inputs), Path(out), concurrency=concurrency,
                        progress=sys.stderr.isatty())
    console.say(f"labelled {summary['labelled']}, rejected {summary['rejected']} (reasons in {summary['rejects']}), "
               f"API errors {summary['api_errors']}; {summary['requests_sent']} requests sent, "
               f"{summary['from_cache']} answers from the cache; tokens this run {summary['tokens_this_run']}")


def stats(path: str, model: Optional[str], png: Optional[str], as_json: bool, recipe: Optional[str] = None) -> None:
    from swiftpipe.data import stats as st

    file = Path(path)
    from swiftpipe.recipe.load import load_recipe

    loaded = load_recipe(recipe, []).recipe if recipe else None
    model = model or (loaded.model.id if loaded else None)
    result = st.stats(file, model, Path(png) if png else (file.with_suffix(".lengths.png") if model else None),
                      recipe=loaded)
    if as_json:
        console.say(json.dumps(result, ensure_ascii=False, indent=2))
        return
    console.say(f"{path}: {result['rows']} valid rows, {result['bad_rows']} bad rows")
    for problem in result["problems"]:
        console.say(f"  {problem}")
    if "answers_parse_as_json" in result:
        console.say(f"answers that parse as JSON: {result['answers_parse_as_json']}/{result['rows']}")
    for key in ("prompt_tokens", "answer_tokens", "total_tokens"):
        if key in result:
            d = result[key]
            console.say(f"{key.replace('_', ' '):14} min {d['min']}  p50 {d['p50']}  p95 {d['p95']}  p99 {d['p99']}  "
                       f"max {d['max']}  mean {d['mean']}")
    if "suggested_max_length" in result:
        console.say(f"suggested train.max_length: {result['suggested_max_length']} (longest row + 10%, multiple of 64)")
        console.say(f"histogram: {result['histogram']}")
    for key, check in result.get("coverage", {}).items():
        console.say(f"recipe {result['recipe']}: {key} {check['limit']} {check['note']}")
    if result["bad_rows"] or not all(c["ok"] for c in result.get("coverage", {}).values()):
        sys.exit(1)


def split(path: str, out_dir: str, val: float, test: float, seed: int) -> None:
    from swiftpipe.data import stats as st

    sizes = st.split(Path(path), Path(out_dir), val=val, test=test, seed=seed)
    console.say(", ".join(f"{name} {n}" for name, n in sizes.items()) + f" rows written to {out_dir}/ (seed {seed})")
