"""Command line: parses arguments and calls one function per command.

Heavy imports (torch, swift, vllm) happen inside the functions that need them, so `--help`,
`validate` and `render` start instantly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from swiftpipe import __version__
from swiftpipe.errors import SwiftpipeError

OVERRIDES_HELP = "Overrides as dotted KEY=VALUE, e.g. train.lr=2e-4 lora.rank=16 (they win over the YAML)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swiftpipe")
def cli() -> None:
    """Fine-tune small LLMs for JSON extraction with ms-swift, from one YAML recipe.

    \b
    swiftpipe validate recipes/demo-cpu.yaml
    swiftpipe render   recipes/address-qwen3-0.6b.yaml train.lr=2e-4
    swiftpipe run      recipes/demo-cpu.yaml [--run-id ID] [--force STAGE] [--dry-run]
    swiftpipe serve    runs/demo-cpu/<run-id>
    swiftpipe eval     test.jsonl --base-url http://127.0.0.1:8000/v1 --model NAME --out DIR
    """


def _load(recipe: str, overrides: tuple[str, ...]):
    from swiftpipe.recipe.load import load_recipe

    return load_recipe(recipe, list(overrides))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe against the schema (all problems at once; exit 2 when invalid)."""
    loaded = _load(recipe, overrides)
    click.echo(f"{recipe}: valid recipe '{loaded.name}'")


@cli.command(epilog=OVERRIDES_HELP)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-id", default="<run-id>", show_default=True, help="Run id used in the rendered paths.")
def render(recipe: str, overrides: tuple[str, ...], run_id: str) -> None:
    """Print the exact shell commands (with their environment) that `run` executes."""
    from swiftpipe import pipeline

    plan = pipeline.plan(_load(recipe, overrides), run_id=run_id, base=Path.cwd())
    click.echo(pipeline.dry_run_text(plan), nl=False)


@cli.command(epilog=OVERRIDES_HELP)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-id", default=None, help="Run id (default: a timestamp). An existing id resumes that run.")
@click.option("--force", "force", default=None, metavar="STAGE",
              help="Redo STAGE and every later stage (model, sft, export, eval, eval-base, report).")
@click.option("--dry-run", is_flag=True, help="Print the commands and the run directory; run nothing.")
def run(recipe: str, overrides: tuple[str, ...], run_id: str | None, force: str | None, dry_run: bool) -> None:
    """Run the recipe: sft → export (LoRA merge) → serve + eval (→ base eval) → report."""
    from swiftpipe import pipeline

    plan = pipeline.plan(_load(recipe, overrides), run_id=run_id, base=Path.cwd())
    if dry_run:
        click.echo(pipeline.dry_run_text(plan), nl=False)
        return
    summary = pipeline.execute(plan, force=force)
    click.echo(f"run finished: {plan.run.path}")
    click.echo(f"final model:  {summary['final_model']}")
    if summary.get("report"):
        click.echo(f"report:       {summary['report']}")


@cli.command()
@click.argument("target", type=click.Path(exists=True))
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="Take the serve settings from this recipe (default: the run's resolved recipe).")
@click.option("--host", default=None, help="Bind address (default: serve.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: serve.port, else a free one).")
@click.option("--name", default=None, help="Served model name (default: serve.served_model_name or the recipe name).")
@click.option("--base", is_flag=True, help="With a run directory: serve the run's base model instead.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None,
              help="vLLM log file (default: <run>/logs/serve.log, or ./serve.log for a model dir).")
def serve(target: str, recipe: str | None, host: str | None, port: int | None, name: str | None, base: bool,
          log_file: str | None) -> None:
    """Serve a run's final model (or any MODEL_DIR) with vLLM until Ctrl-C.

    The API key comes from SWIFTPIPE_API_KEY (or VLLM_API_KEY); without one a key is generated and
    shown once. It is passed to vLLM through the environment, never on the command line.
    """
    from swiftpipe.commands import serve_forever

    serve_forever(target, recipe=recipe, host=host, port=port, name=name, base=base, log_file=log_file)


@cli.command("eval")
@click.argument("test_file", type=click.Path(dir_okay=False))
@click.option("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
@click.option("--model", "model", required=True, help="Served model name.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--concurrency", default=16, show_default=True, help="Requests in flight.")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON schema file for the answer (default: the recipe's, else derived from the gold answers).")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take system prompt, schema and limits from this recipe.")
@click.option("--max-tokens", type=int, default=None, help="Max new tokens (default: eval.max_tokens, 512).")
@click.option("--timeout", type=float, default=None, help="Seconds per request (default: eval.timeout, 120).")
@click.option("--no-schema", is_flag=True, help="Send no response_format (unconstrained output).")
def eval_cmd(test_file, base_url, model, out_dir, concurrency, schema_file, recipe, max_tokens, timeout, no_schema) -> None:
    """Evaluate a served model on TEST_FILE (ms-swift messages JSONL); resumable.

    The API key comes from OPENAI_API_KEY, as OpenAI clients expect.
    """
    from swiftpipe.commands import run_eval

    run_eval(test_file, base_url=base_url, model=model, out_dir=out_dir, concurrency=concurrency,
             schema_file=schema_file, recipe=recipe, max_tokens=max_tokens, timeout=timeout, no_schema=no_schema)


@cli.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--vocab-size", default=2048, show_default=True)
@click.option("--hidden-size", default=128, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
def tiny_model(out_dir: str, vocab_size: int, hidden_size: int, layers: int, seed: int) -> None:
    """Build a tiny random-init Qwen3 (local BPE tokenizer, Qwen3 chat template) for tests and demos."""
    from swiftpipe.tiny_model import build_tiny_model

    path = build_tiny_model(out_dir, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers, seed=seed)
    click.echo(f"tiny Qwen3 written to {path}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; child processes were stopped on the way out.
        click.echo("interrupted: child processes stopped; rerun with the same --run-id to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SwiftpipeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
