"""Command line: parses arguments and calls one function per command.

Heavy imports (torch, swift, vllm) happen inside the functions that need them, so `--help`,
`validate` and `render` start instantly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from swiftpipe import __version__
from swiftpipe.core import console
from swiftpipe.core.dtype import DTYPES
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.gateway.store import DEFAULT_DB
from swiftpipe.train.stages import NAMES as STAGES
from swiftpipe.train.tiny_model import TRUE_SIZES

OVERRIDES_HELP = "Overrides as dotted KEY=VALUE, e.g. train.lr=2e-4 lora.rank=16 (they win over the YAML)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swiftpipe")
def cli() -> None:
    """Fine-tune small LLMs for JSON extraction with ms-swift, from one YAML recipe.

    \b
    swiftpipe validate recipes/demo-cpu.yaml
    swiftpipe render   recipes/address-qwen3-0.6b.yaml train.lr=2e-4
    swiftpipe run      recipes/demo-cpu.yaml [--run-id ID] [--force STAGE] [--dry-run]
    swiftpipe serve    runs/demo-cpu/<run-id> [v2=RUN_DIR --weights NAME=90,v2=10]
    swiftpipe keys     create|list|revoke   |   rollout v2=50   |   requests --flagged
    swiftpipe extract  texts.jsonl --out OUT --model runs/demo-cpu/<run-id> [--engine offline|server|ray]
    swiftpipe eval     test.jsonl --base-url http://127.0.0.1:8000/v1 --model NAME --out DIR
    swiftpipe data     synth-address | convert | label | stats | split
    swiftpipe sweep    recipes/demo-cpu.yaml lora.rank=8,16 train.lr=1e-4,2e-4
    swiftpipe leaderboard runs [--format markdown]   |   compare RUN_A RUN_B   |   reproduce RUN_DIR
    """


def _load(recipe: str, overrides: tuple[str, ...]):
    from swiftpipe.recipe.load import load_recipe

    return load_recipe(recipe, list(overrides))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--explain", is_flag=True, help="Also list every recipe key with its type, default and description.")
def validate(recipe: str, overrides: tuple[str, ...], explain: bool) -> None:
    """Check a recipe against the schema (all problems at once; exit 2 when invalid)."""
    loaded = _load(recipe, overrides)
    console.say(f"{recipe}: valid recipe '{loaded.name}'")
    if explain:
        from swiftpipe.recipe.explain import explain as explain_keys

        console.say(explain_keys().rstrip())


@cli.command(epilog=OVERRIDES_HELP)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-id", default="<run-id>", show_default=True, help="Run id used in the rendered paths.")
def render(recipe: str, overrides: tuple[str, ...], run_id: str) -> None:
    """Print the exact shell commands (with their environment) that `run` executes."""
    from swiftpipe.train import pipeline

    plan = pipeline.plan(_load(recipe, overrides), run_id=run_id, base=Path.cwd())
    console.say(pipeline.dry_run_text(plan).rstrip("\n"))


@cli.command(epilog=OVERRIDES_HELP)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-id", default=None, help="Run id (default: a timestamp). An existing id resumes that run.")
@click.option("--force", "force", default=None, type=click.Choice(STAGES), metavar="STAGE",
              help=f"Redo STAGE and every later stage ({', '.join(STAGES)}).")
@click.option("--dry-run", is_flag=True, help="Print the commands and the run directory; run nothing.")
@click.option("--offline", is_flag=True, help="Forbid hub access (same as offline=true): all models and data local.")
@click.option("--allow-cpu", is_flag=True, help="Train on the CPU even when the recipe is GPU-sized and no GPU is found.")
def run(recipe: str, overrides: tuple[str, ...], run_id: str | None, force: str | None, dry_run: bool,
        offline: bool, allow_cpu: bool) -> None:
    """Run the recipe: sft → export (LoRA merge) → serve + eval (→ base eval) → report."""
    from swiftpipe.train import pipeline

    plan = pipeline.plan(_load(recipe, overrides + (("offline=true",) if offline else ())), run_id=run_id,
                         base=Path.cwd(), allow_cpu=allow_cpu)
    if dry_run:
        from swiftpipe.train.preflight import input_problems

        pipeline.check_force(plan, force)
        for problem in input_problems(plan):
            console.warn(f"the real run would stop here: {problem}")
        console.say(pipeline.dry_run_text(plan).rstrip("\n"))
        return
    summary = pipeline.execute(plan, force=force)
    console.say(f"run finished: {plan.run.path}")
    console.say(f"final model:  {summary.get('final_model')}")
    if summary.get("report"):
        console.say(f"report:       {summary['report']}")


DB_HELP = ("The gateway's database (request log, keys, versions): a SQLite file path (or sqlite:///PATH), or "
           "postgresql://USER@HOST/DB, shared by replicas (password from PGPASSWORD or ~/.pgpass).")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL",
              help="A running OpenAI-compatible server as a version (key from SWIFTPIPE_UPSTREAM_API_KEY).")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Recipe for model directories and upstreams: system prompt, answer schema, length limit "
                   "(run directories bring their own).")
@click.option("--name", "names", multiple=True, help="Version name, once per target (or write NAME=PATH).")
@click.option("--base", is_flag=True, help="With run directories: serve their base models instead.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Gateway port.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--weights", multiple=True, metavar="NAME=PCT,...",
              help="Traffic split of unpinned requests, e.g. v1=90,v2=10 (default: the saved split, else all to the first).")
@click.option("--ssl-certfile", default=None, help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", default=None, help="The certificate's private key (PEM).")
@click.option("--keep-days", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Delete requests (and their reviews) older than this, checked hourly; 0 keeps everything.")
@click.option("--log-content", type=click.Choice(["full", "redacted", "none"]), default="full", show_default=True,
              help="What the request log keeps of texts: everything (review needs it), masked digits/phones/"
                   "e-mails/ID numbers, or nothing but flags, latency, version and key.")
@click.option("--max-connections", type=click.IntRange(16, 100_000), default=1000, show_default=True,
              help="Open connections at most; past it idle ones are closed first (README 'Security').")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a client has to send a request's line and headers; then its connection is closed.")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request's body may pause between two pieces; then 408 and the connection closed.")
@click.option("--accept-threshold", type=click.FloatRange(0, 1), default=None,
              help="Row confidence at or above which an answer needs no review, for every version (default: "
                   "serve.accept_threshold, else the threshold each run's eval calibrated).")
@click.option("--audit-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of answers drawn into the review queue's random audit sample, from which reviewed "
                   "accuracy is estimated (1: every answer; README 'Confidence').")
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds per upstream attempt.")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Upstream retries on connection errors, timeouts, 429 and 5xx (with backoff).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Gateway processes answering on --port, sharing --db (rate limits included; README "
                   "'Several replicas').")
def serve(targets: tuple[str, ...], upstreams: tuple[str, ...], recipe: Optional[str], names: tuple[str, ...],
          base: bool, host: str, port: int, db: str, weights: tuple[str, ...], ssl_certfile: Optional[str],
          ssl_keyfile: Optional[str], keep_days: float, log_content: str, max_connections: int,
          header_timeout: float, body_timeout: float, accept_threshold: Optional[float], audit_share: float,
          upstream_timeout: float, retries: int, workers: int) -> None:
    """Serve versions behind the extraction gateway until Ctrl-C.

    \b
    Each TARGET (a run directory, or a model directory with --recipe; NAME=PATH names it) gets its
    own vLLM server on a free loopback port; the gateway on --host/--port answers /v1/extract,
    /v1/chat/completions, /v1/models, /health and /metrics, and logs every request to --db.
    \b
      swiftpipe serve runs/demo-cpu/<run-id>
      swiftpipe serve v1=runs/address/a v2=runs/address/b --weights v1=90,v2=10
      swiftpipe serve --upstream v1=http://127.0.0.1:8001/v1 --recipe recipes/demo-cpu.yaml
    \b
    Keys: SWIFTPIPE_API_KEY (32+ characters) is the gateway's admin key; without it and without keys
    in --db, one is generated into DB.admin-key (mode 0600). More: `swiftpipe keys create --role`.
    """
    from swiftpipe.gateway.service import serve as serve_gateway

    serve_gateway(list(targets), upstreams=list(upstreams), recipe=recipe, names=list(names), base=base, host=host,
                  port=port, db=db, weights=list(weights), ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                  keep_days=keep_days or None, upstream_timeout=upstream_timeout, retries=retries,
                  log_content=log_content, max_connections=max_connections, accept_threshold=accept_threshold,
                  audit_share=audit_share, workers=workers, header_timeout=header_timeout, body_timeout=body_timeout)


@cli.group()
def db() -> None:
    """The gateway's database: `db upgrade --db URL`, `db copy --from A --to B`."""


@db.command("upgrade")
@click.option("--db", "database", default=DEFAULT_DB, show_default=True, help=DB_HELP)
def db_upgrade(database: str) -> None:
    """Bring a database's schema up to date (serve does it too; this does it ahead of a deploy)."""
    from swiftpipe.gateway.transfer import upgrade_command

    upgrade_command(database)


@db.command("copy")
@click.option("--from", "source", required=True, help="The database to copy (a path or URL, as --db).")
@click.option("--to", "destination", required=True, help="An empty database to copy into (a path or URL).")
def db_copy(source: str, destination: str) -> None:
    """Copy a whole gateway database (log, keys, versions, reviews, statistics) into an empty one:
    `db copy --from sqlite:///serve/serve.sqlite --to postgresql://swiftpipe@db/swiftpipe`."""
    from swiftpipe.gateway.transfer import copy_command

    copy_command(source, destination)


@cli.group()
def keys() -> None:
    """API keys of the gateway (stored as hashes; a key is shown once, when created)."""


@keys.command("create")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--name", required=True, help="Who uses the key (a team, a system).")
@click.option("--role", type=click.Choice(["client", "reviewer", "admin"]), default="client", show_default=True,
              help="client: extract, chat, models, its own requests; reviewer: also reviews and statistics; "
                   "admin: everything.")
@click.option("--rpm", type=int, default=None, help="Requests per minute allowed (default: unlimited).")
@click.option("--expires", default=None, metavar="DURATION", help="The key stops working after this long, e.g. 90d.")
@click.option("--versions", default=None, metavar="A,B", help="Only these versions (others answer 404).")
def keys_create(db: str, name: str, role: str, rpm: Optional[int], expires: Optional[str],
                versions: Optional[str]) -> None:
    """Create a key and print it (once: only its hash is stored)."""
    from swiftpipe.gateway import commands

    commands.keys_create(db, name, rpm, role=role, expires=expires, versions=versions)


@keys.command("rotate")
@click.argument("name")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="How long the old key keeps working, e.g. 24h.")
def keys_rotate(name: str, db: str, grace: str) -> None:
    """Create the successor of NAME's key (same role, limit, versions), print it once; the old one expires after --grace."""
    from swiftpipe.gateway import commands

    commands.keys_rotate(db, name, grace)


@keys.command("list")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
def keys_list(db: str) -> None:
    """List keys (id, name, role, limit, versions, expiry, last use, revoked); never the keys themselves."""
    from swiftpipe.gateway import commands

    commands.keys_list(db)


@keys.command("revoke")
@click.argument("key_id")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
def keys_revoke(key_id: str, db: str) -> None:
    """Revoke KEY_ID (an id from `keys list`, or a name: all its active keys); the gateway refuses it within a second."""
    from swiftpipe.gateway import commands

    commands.keys_revoke(db, key_id)


@cli.command()
@click.argument("weights", nargs=-1, required=True)
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
def rollout(weights: tuple[str, ...], db: str) -> None:
    """Change the traffic split of a running gateway, e.g. `rollout v2=50` (100 promotes, 0 rolls back).

    Versions not named share the rest in proportion to their current weights. Takes effect within a
    second, without a restart; logged in the database's events.
    """
    from swiftpipe.gateway import commands

    commands.set_rollout(db, list(weights))


@cli.command()
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--flagged", is_flag=True, help="Only requests with flags.")
@click.option("--version", "version", default=None, help="Only this version.")
@click.option("--since", default=None, help="Only since a time (2026-11-23T14:00) or an age (30m, 2h, 7d).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table", show_default=True)
@click.option("--limit", type=int, default=None, help="At most this many rows, newest first (table: 50).")
@click.option("--compare", is_flag=True,
              help="Compare VERSIONS (default: all): requests, invalid-JSON and flag rates, latency p50/p95.")
@click.argument("versions", nargs=-1)
def requests(db: str, flagged: bool, version: Optional[str], since: Optional[str], fmt: str, limit: Optional[int],
             compare: bool, versions: tuple[str, ...]) -> None:
    """Read the gateway's request log, or compare versions: `requests --compare v1 v2`."""
    from swiftpipe.gateway.request_log import show

    if versions and not compare:
        raise click.UsageError("version names are compared with --compare: swiftpipe requests --compare v1 v2")
    if fmt == "table" and limit is None:
        limit = 50
    show(db, flagged=flagged, version=version, since=since, fmt=fmt, limit=limit, compare=compare,
         compare_versions=list(versions))


@cli.command("extract")
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", required=True, type=click.Path(dir_okay=True, file_okay=False),
              help="Output directory: parts, summary.json; rerun to continue it.")
@click.option("--model", default=None, help="Run directory (brings its recipe) or model directory (with --recipe).")
@click.option("--engine", type=click.Choice(["offline", "server", "ray"]), default=None,
              help="offline: vLLM in this process; server: --base-url servers; ray: vLLM in Ray Data actors "
                   "(default: extract.engine, offline; server when --base-url is given).")
@click.option("--base-url", "base_urls", multiple=True,
              help="OpenAI-compatible server (or swiftpipe gateway) for --engine server; repeat for replicas. "
                   "Key: OPENAI_API_KEY.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="System prompt, answer schema and length limit (with a model directory or --base-url).")
@click.option("--text-field", default="text", show_default=True, help="Column (key) holding the text.")
@click.option("--id-field", default=None, help="Column holding each row's id (default: its position in the input).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default=None,
              help="Output part format (default: extract.format, parquet).")
@click.option("--no-text", is_flag=True, help="Leave the input text out of the output.")
@click.option("--retry-errors", is_flag=True, help="Redo only the rows that have an error in finished parts.")
@click.option("--served-name", default=None, help="Model name on the server (default: the server's only model).")
@click.option("--ray-address", default=None, help="Ray cluster to join, e.g. ray://head:10001 (default: a local one).")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Ray actors, one engine each (default: extract.replicas: one per GPU, 1 on CPU).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows per chunk/part (default: extract.chunk_rows, 1000).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows the vLLM engine runs at once, max_num_seqs (default: extract.batch_size, 256).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests in flight, server engine (default: extract.concurrency, 32).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="dtype of the offline and ray engines (default: extract.dtype, else serve.dtype: auto = on a CPU "
                   "bfloat16 where it is native, else float32; on a GPU vLLM's choice).")
@click.option("--accept-threshold", type=click.FloatRange(0, 1), default=None,
              help="Row confidence at or above which a row needs no review (default: serve.accept_threshold, else "
                   "the threshold the run's eval calibrated).")
@click.option("--no-confidence", is_flag=True,
              help="Ask for no token logprobs: the confidence column stays null, needs_review uses flags only.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Result cache directory shared across runs: a text this model and task answered before is not "
                   "asked again (default: OUT/.results.sqlite, this output only).")
def extract(input_spec, out, model, engine, base_urls, recipe, text_field, id_field, fmt, no_text, retry_errors,
            served_name, ray_address, replicas, chunk_rows, batch_size, concurrency, dtype, accept_threshold,
            no_confidence, cache) -> None:
    """Extract JSON from every text of INPUT (JSONL, CSV, Parquet; a file, directory or glob) into OUT.

    \b
    swiftpipe extract texts.jsonl --out out/ --model runs/demo-cpu/<run-id>
    swiftpipe extract 'data/*.parquet' --out out/ --model runs/address/<id> --engine ray --replicas 4
    swiftpipe extract texts.csv --out out/ --base-url http://127.0.0.1:8000/v1 --recipe R --format jsonl

    Resumable: rerun the same command after a crash; finished chunks are kept. Each distinct text
    is asked once; with --cache DIR, once across runs too.
    """
    from swiftpipe.extract.commands import extract_command

    extract_command(input_spec, out=out, model=model, engine=engine, base_urls=list(base_urls), recipe=recipe,
                    text_field=text_field, id_field=id_field, fmt=fmt, no_text=no_text, retry_errors=retry_errors,
                    served_name=served_name, ray_address=ray_address, replicas=replicas, chunk_rows=chunk_rows,
                    batch_size=batch_size, concurrency=concurrency, dtype=dtype, accept_threshold=accept_threshold,
                    confidence=not no_confidence, cache=cache)


@cli.command("eval")
@click.argument("test_file", type=click.Path(dir_okay=False))
@click.option("--base-url", "base_urls", required=True, multiple=True,
              help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat it to spread requests "
                   "over several replicas of the same model.")
@click.option("--model", "model", required=True, help="Served model name.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--concurrency", type=int, default=None, help="Requests in flight (default: eval.concurrency, 16).")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON schema file for the answer (default: the recipe's, else derived from the gold answers).")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take system prompt, schema and limits from this recipe.")
@click.option("--max-tokens", type=int, default=None, help="Max new tokens (default: eval.max_tokens, 512).")
@click.option("--timeout", type=float, default=None, help="Seconds per request (default: eval.timeout, 120).")
@click.option("--no-schema", is_flag=True, help="Send no response_format (unconstrained output).")
@click.option("--metric", type=click.Choice(["exact_match", "ner_f1"]), default=None,
              help="Scoring (default: eval.metric, exact_match); ner_f1 adds entity-level P/R/F1.")
def eval_cmd(test_file, base_urls, model, out_dir, concurrency, schema_file, recipe, max_tokens, timeout, no_schema,
             metric) -> None:
    """Evaluate a served model on TEST_FILE (ms-swift messages JSONL); resumable.

    The API key comes from OPENAI_API_KEY, as OpenAI clients expect.
    """
    from swiftpipe.evaluation.evaluate import eval_command

    eval_command(test_file, base_urls=list(base_urls), model=model, out_dir=out_dir, concurrency=concurrency,
             schema_file=schema_file, recipe=recipe, max_tokens=max_tokens, timeout=timeout, no_schema=no_schema,
             metric=metric)


@cli.command(epilog="Each AXIS is KEY=V1,V2,... (a single value is a fixed override). " + OVERRIDES_HELP)
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.argument("axes", nargs=-1, required=True)
@click.option("--sweep-id", default=None, help="Name of the sweep (default: sweep-<timestamp>); reuse it to resume.")
@click.option("--dry-run", is_flag=True, help="List the points and their commands; run nothing.")
def sweep(recipe: str, axes: tuple[str, ...], sweep_id: Optional[str], dry_run: bool) -> None:
    """Run the grid of AXES over RECIPE, one normal run directory per point; failures are recorded, resumable."""
    from swiftpipe.train.sweep import sweep_command

    sweep_command(recipe, axes, sweep_id=sweep_id, dry_run=dry_run)


@cli.command()
@click.argument("root", type=click.Path(exists=True), default="runs")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "html"]), default="table",
              show_default=True)
@click.option("--sort", default="exact_match", show_default=True, help="Column to sort by; prefix - for ascending.")
@click.option("--where", default=None, help="pandas query, e.g. \"`lora.rank` == 8 and exact_match > 0.9\".")
@click.option("--column", "columns", multiple=True, help="Extra column (any parameter, e.g. train.warmup_ratio).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def leaderboard(root: str, fmt: str, sort: str, where: Optional[str], columns: tuple[str, ...], out: Optional[str]) -> None:
    """Table of the runs below ROOT: key and varying parameters, metrics, durations, versions."""
    from swiftpipe.evaluation import leaderboard as board

    board.show(root, fmt=fmt, sort=sort, where=where, columns=list(columns), out=out)


@cli.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--out-dir", default=None, type=click.Path(file_okay=False),
              help="Where compare.md and compare.png go (default: <runs>/compare/<A>-vs-<B>).")
def compare(run_a: str, run_b: str, out_dir: Optional[str]) -> None:
    """Parameter and metric diff of two runs, the examples whose outcome flipped, and a PNG of both."""
    from swiftpipe.evaluation.compare import compare as compare_runs

    text, where = compare_runs(Path(run_a), Path(run_b), Path(out_dir) if out_dir else None)
    console.say(text.rstrip("\n"))
    console.say(f"written: {where / 'compare.md'}, {where / 'compare.png'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run-id", default=None, help="Run id of the reproduction (default: <run id>-repro-<timestamp>).")
@click.option("--tolerance", default=0.02, show_default=True,
              help="Largest accepted difference of exact match and per-field accuracy (fraction).")
def reproduce(run_dir: str, run_id: Optional[str], tolerance: float) -> None:
    """Rerun RUN_DIR from its resolved recipe; warn on version drift; exit 1 when metrics differ beyond tolerance."""
    from swiftpipe.train.reproduce import reproduce as reproduce_run

    sys.exit(reproduce_run(Path(run_dir), run_id=run_id, tolerance=tolerance))


@cli.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
def download(recipe: str, overrides: tuple[str, ...]) -> None:
    """Pre-download the recipe's model from its hub (model.hub: modelscope or huggingface)."""
    from swiftpipe.train.hub import download as download_model

    download_model(_load(recipe, overrides))


@cli.group()
def data() -> None:
    """Make, convert, label and inspect training data (ms-swift messages JSONL).

    \b
    swiftpipe data synth-address --n 2000 --seed 1 --out datasets/address/train.jsonl
    swiftpipe data convert --from cluener cluener/train.json --out datasets/cluener/train.jsonl
    swiftpipe data label raw.txt --out labelled.jsonl --base-url URL --model NAME --recipe R
    swiftpipe data stats datasets/address/train.jsonl --model Qwen/Qwen3-0.6B
    swiftpipe data split all.jsonl --out-dir datasets/mine --val 0.05 --test 0.1
    """


@data.command("synth-address")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same rows (and bytes).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take the system prompt from this recipe (default: the address recipe's prompt).")
def data_synth_address(n: int, seed: int, out: str, recipe: Optional[str]) -> None:
    """Synthesize waybill texts with gold address JSON (province, city, district, specific_location, name, phone)."""
    from swiftpipe.data.commands import synth_address

    synth_address(n, seed, out, recipe)


@data.command("convert")
@click.option("--from", "fmt", required=True, type=click.Choice(["cluener", "raner", "paddle-waybill", "alpaca"]),
              help="Input format.")
@click.argument("input_path", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL (ms-swift messages).")
@click.option("--system-prompt", default=None, help="System prompt for every row (default: the format's own).")
@click.option("--types", default=None, help="raner: entity types in answer order, comma-separated "
              "(default: every category in the file).")
def data_convert(fmt: str, input_path: str, out: str, system_prompt: Optional[str], types: Optional[str]) -> None:
    """Convert a public data format to ms-swift messages JSONL (compact JSON answers); bad rows are reported."""
    from swiftpipe.data.commands import convert

    convert(fmt, input_path, out, system_prompt, types)


@data.command("label")
@click.argument("input_path", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Labelled JSONL; OUT.cache.jsonl, OUT.rejects.jsonl, OUT.summary.json are written beside it.")
@click.option("--base-url", default=None, help="Teacher endpoint (OpenAI-compatible); key from OPENAI_API_KEY.")
@click.option("--model", default=None, help="Teacher model name, e.g. qwen3-235b-a22b.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take the system prompt and JSON schema from this recipe.")
@click.option("--system-prompt", default=None, help="System prompt (wins over the recipe's).")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON schema file (wins over the recipe's).")
@click.option("--concurrency", default=8, show_default=True, help="Requests in flight.")
@click.option("--max-tokens", default=512, show_default=True, help="Max new tokens per answer.")
@click.option("--verbatim", default=None, help="Fields that must occur verbatim in the text, e.g. name,phone; "
              "answers that break this are rejected.")
@click.option("--check", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Send nothing: report rows of this labelled file whose verbatim fields (default name,phone) "
              "are not in the text.")
def data_label(input_path, out, base_url, model, recipe, system_prompt, schema_file, concurrency, max_tokens,
               verbatim, check) -> None:
    """Label raw texts (.txt lines, or JSONL with "text" / messages) with a teacher model; cached and resumable."""
    from swiftpipe.data.commands import label

    label(input_path, out, base_url, model, recipe, system_prompt, schema_file, concurrency, max_tokens, verbatim,
          check)


@data.command("stats")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help="Tokenizer: a local model dir or a hub id (token lengths need it); "
              "Qwen's real one offline: `swiftpipe tiny-model DIR --size qwen3-0.6b --no-weights`.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rows without a system turn get this recipe's system prompt (as in training); check that its "
              "train.max_length and eval.max_tokens cover the data (exit 1 when not). Default --model: its model.")
@click.option("--png", default=None, type=click.Path(dir_okay=False),
              help="Histogram path (default: PATH with .lengths.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def data_stats(path: str, model: Optional[str], recipe: Optional[str], png: Optional[str], as_json: bool) -> None:
    """Row count, format check, token lengths (prompt as served, answer as generated, the whole row as
    trained), histogram, a suggested max_length, and a recipe's limits checked."""
    from swiftpipe.data.commands import stats

    stats(path, model, png, as_json, recipe)


@data.command("corrections")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Training rows (messages JSONL).")
@click.option("--version", "version", default=None, help="Only answers of this version.")
@click.option("--since", default=None, help="Only reviews since a time (2026-11-23) or an age (7d).")
@click.option("--holdout", type=float, default=0.0, show_default=True, help="Share held out for evaluation.")
@click.option("--holdout-out", default=None, type=click.Path(dir_okay=False), help="Where the held-out rows go.")
@click.option("--reviewer", "reviewers", default=None, metavar="NAME[,NAME]",
              help="Only reviews made with these keys (names); default: every reviewer and admin key, never a "
                   "client key.")
@click.option("--seed", default=0, show_default=True, help="Seed of the held-out split.")
def data_corrections(db: str, out: str, version: Optional[str], since: Optional[str], holdout: float,
                     holdout_out: Optional[str], reviewers: Optional[str], seed: int) -> None:
    """Reviewed answers from the gateway (corrected or confirmed) as ms-swift training rows."""
    from swiftpipe.data.corrections import corrections_command

    corrections_command(db, out, version=version, since=since, holdout=holdout, holdout_out=holdout_out, seed=seed,
                        reviewers=[r.strip() for r in reviewers.split(",") if r.strip()] if reviewers else None)


@data.command("split")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False))
@click.option("--val", default=0.05, show_default=True, help="Validation fraction.")
@click.option("--test", default=0.0, show_default=True, help="Test fraction.")
@click.option("--seed", default=0, show_default=True)
def data_split(path: str, out_dir: str, val: float, test: float, seed: int) -> None:
    """Shuffle with a seed and write train/val/test.jsonl."""
    from swiftpipe.data.commands import split

    split(path, out_dir, val, test, seed)


@cli.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--size", default=None, type=click.Choice(list(TRUE_SIZES)),
              help="Instead of the tiny model: this published model's exact architecture with random weights, "
              "Qwen's real tokenizer (from the dashscope package's ranks file, offline), its chat template and "
              "generation config.")
@click.option("--no-weights", is_flag=True, help="With --size: only the tokenizer and the configs (~16 MB, seconds): "
              "enough for `data stats --model` and ms-swift's template encoding.")
@click.option("--vocab-size", default=2048, show_default=True)
@click.option("--hidden-size", default=128, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def tiny_model(ctx: click.Context, out_dir: str, size: Optional[str], no_weights: bool, vocab_size: int,
               hidden_size: int, layers: int, seed: int) -> None:
    """Build a random-init Qwen locally (no download): the tiny Qwen3 of the tests and the CPU demo (local
    2k-token BPE, Qwen3 chat template), or with --size a true-size Qwen3-0.6B / Qwen2.5-0.5B-Instruct."""
    shape = [f"--{name.replace('_', '-')}" for name in ("vocab_size", "hidden_size", "layers")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if size and shape:
        raise click.UsageError(f"{', '.join(shape)}: the tiny model's shape; --size {size} has its own")
    if no_weights and not size:
        raise click.UsageError("--no-weights goes with --size")
    if size:
        from swiftpipe.train.tiny_model import build_true_size_model

        path = build_true_size_model(out_dir, size, weights=not no_weights, seed=seed)
        what = "tokenizer and configs" if no_weights else "random-init model"
        console.say(f"{TRUE_SIZES[size].hub_id}-shaped {what} (Qwen's real tokenizer) written to {path}")
        return
    from swiftpipe.train.tiny_model import build_tiny_model

    path = build_tiny_model(out_dir, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers, seed=seed)
    console.say(f"tiny Qwen3 written to {path}")


def main() -> None:
    from swiftpipe.core import procs

    # SIGTERM and SIGHUP (a closed terminal, a dropped SSH session) take the same clean-up path as
    # Ctrl-C: every command stops its children on the way out.
    procs.handle_termination_signals()
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns Ctrl-C into Abort; child processes were stopped on the way out.
        hint = console.current_resume_hint()
        signame = procs.interrupt_signame(exc) or "Ctrl-C"
        console.error(f"interrupted ({signame}): child processes stopped" + (f"; {hint}" if hint else ""))
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SwiftpipeError as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
