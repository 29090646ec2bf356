"""`swiftpipe data ...`: one function per subcommand (the CLI only parses and calls)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click

from swiftpipe.errors import SwiftpipeError


def _recipe_prompt_and_schema(recipe: Optional[str]) -> tuple[Optional[str], Optional[dict], Optional[dict]]:
    """(system prompt, JSON schema, recipe output_schema) of a recipe, or Nones."""
    if not recipe:
        return None, None, None
    from swiftpipe.recipe.load import load_recipe

    loaded = load_recipe(recipe, [])
    return loaded.recipe.data.system_prompt, loaded.recipe.data.json_schema(), loaded.recipe.data.output_schema


def synth_address(n: int, seed: int, out: str, recipe: Optional[str]) -> None:
    from swiftpipe.data import synth

    prompt = _recipe_prompt_and_schema(recipe)[0] if recipe else synth.ADDRESS_SYSTEM_PROMPT
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        count = synth.write_samples(f, n, seed, prompt)
    tmp.replace(path)
    seconds = time.perf_counter() - started
    click.echo(f"wrote {count} rows to {path} (seed {seed}, {count / max(seconds, 1e-9):,.0f} rows/s)")


def convert(fmt: str, input_path: str, out: str, system_prompt: Optional[str], types: Optional[str]) -> None:
    from swiftpipe.data import convert as conv

    result = conv.convert(fmt, Path(input_path), system_prompt=system_prompt,
                          types=tuple(t.strip() for t in types.split(",")) if types else None)
    for bad in result.bad[:20]:
        click.echo(f"{input_path}:{bad.line}: skipped: {bad.reason}", err=True)
    if len(result.bad) > 20:
        click.echo(f"... and {len(result.bad) - 20} more bad rows", err=True)
    if not result.rows:
        raise SwiftpipeError(f"{input_path}: no row could be converted from format '{fmt}' "
                             f"({len(result.bad)} bad rows); check --from")
    conv.write_rows(result.rows, Path(out))
    click.echo(f"converted {len(result.rows)} rows to {out}" + (f"; {len(result.bad)} bad rows skipped" if result.bad else ""))


def label(inputs: Optional[str], out: Optional[str], base_url: Optional[str], model: Optional[str],
          recipe: Optional[str], system_prompt: Optional[str], schema_file: Optional[str], concurrency: int,
          max_tokens: int, verbatim: Optional[str], check: Optional[str]) -> None:
    from swiftpipe.data import label as lab

    fields = tuple(v.strip() for v in verbatim.split(",")) if verbatim else ()
    if check:
        report = lab.check_rows(Path(check), fields or ("name", "phone"))
        for line in report:
            click.echo(line)
        click.echo(f"{check}: {len(report)} verbatim problems")
        if report:
            sys.exit(1)
        return
    if not (inputs and out and base_url and model):
        raise click.UsageError("labelling needs INPUT, --out, --base-url and --model (or use --check FILE)")
    prompt, schema, _ = _recipe_prompt_and_schema(recipe)
    if schema_file:
        try:
            schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SwiftpipeError(f"{schema_file}: cannot read the JSON schema ({exc})") from None
    cfg = lab.LabelConfig(base_url=base_url.rstrip("/"), model=model, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                          system_prompt=system_prompt or prompt, schema=schema, concurrency=concurrency,
                          max_tokens=max_tokens, verbatim=fields)
    summary = lab.label(cfg, Path(inputs), Path(out), progress=sys.stderr.isatty())
    click.echo(f"labelled {summary['labelled']}, rejected {summary['rejected']} (reasons in {summary['rejects']}), "
               f"API errors {summary['api_errors']}; {summary['requests_sent']} requests sent, "
               f"{summary['from_cache']} answers from the cache; tokens this run {summary['tokens_this_run']}")


def stats(path: str, model: Optional[str], png: Optional[str], as_json: bool) -> None:
    from swiftpipe.data import stats as st

    file = Path(path)
    result = st.stats(file, model, Path(png) if png else (file.with_suffix(".lengths.png") if model else None))
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    click.echo(f"{path}: {result['rows']} valid rows, {result['bad_rows']} bad rows")
    for problem in result["problems"]:
        click.echo(f"  {problem}")
    if "answers_parse_as_json" in result:
        click.echo(f"answers that parse as JSON: {result['answers_parse_as_json']}/{result['rows']}")
    for key in ("prompt_tokens", "answer_tokens", "total_tokens"):
        if key in result:
            d = result[key]
            click.echo(f"{key.replace('_', ' '):14} min {d['min']}  p50 {d['p50']}  p95 {d['p95']}  p99 {d['p99']}  "
                       f"max {d['max']}  mean {d['mean']}")
    if "suggested_max_length" in result:
        click.echo(f"suggested train.max_length: {result['suggested_max_length']} (longest row + 10%, multiple of 64)")
        click.echo(f"histogram: {result['histogram']}")
    if result["bad_rows"]:
        sys.exit(1)


def split(path: str, out_dir: str, val: float, test: float, seed: int) -> None:
    from swiftpipe.data import stats as st

    sizes = st.split(Path(path), Path(out_dir), val=val, test=test, seed=seed)
    click.echo(", ".join(f"{name} {n}" for name, n in sizes.items()) + f" rows written to {out_dir}/ (seed {seed})")
