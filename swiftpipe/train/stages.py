"""The stages of `swiftpipe run`, as one table: each entry says when a recipe has the stage, how it
runs and what its outputs add to the run's summary. Adding a stage is adding an entry.

    model (build the tiny test model, when model.tiny) → sft → export (LoRA merge)
      → eval (serve the fine-tuned model with vLLM, evaluate data.test, stop the server)
      → eval-base (the same for the base model, with eval.compare_base) → report

A stage returns its outputs (kept in its marker, `stages/<stage>.done`); forcing a stage redoes it
and every later one (they consume its output). Light at import: the CLI lists the stage names.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from swiftpipe.core import jsonl, procs
from swiftpipe.core.console import say as echo
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.jsonl import write_atomic

if TYPE_CHECKING:
    from swiftpipe.recipe.schema import Recipe
    from swiftpipe.train.pipeline import RunPlan


def last_checkpoint_from_log(train_dir: Path) -> str:
    """The checkpoint swift reports in the summary (last) line of logging.jsonl."""
    path = train_dir / "logging.jsonl"
    summary = jsonl.last(path)
    ckpt = summary.get("last_model_checkpoint") if isinstance(summary, dict) else None
    if not ckpt:
        raise SwiftpipeError(
            f"sft finished but {path} has no summary line with last_model_checkpoint; "
            f"see the training log and rerun with --force sft"
        )
    return ckpt


def stage_model(p: "RunPlan", fresh: bool) -> dict:
    from swiftpipe.recipe.derived import absolute
    from swiftpipe.train.tiny_model import build_tiny_model  # torch: only when this stage runs

    model_dir = Path(absolute(p.loaded.recipe.model.id, p.base))
    if (model_dir / "config.json").is_file():
        echo(f"  tiny model already at {model_dir}")
    else:
        p.run.logs.mkdir(parents=True, exist_ok=True)
        with open(p.run.log("model"), "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
            build_tiny_model(model_dir)
        echo(f"  built tiny model at {model_dir}")
    return {"model_dir": str(model_dir)}


def stage_sft(p: "RunPlan", fresh: bool) -> dict:
    from swiftpipe.train import render
    from swiftpipe.train.progress import SftProgress

    if fresh and p.run.train_dir.exists():
        shutil.rmtree(p.run.train_dir)
    resume = p.run.latest_checkpoint()
    cmd = render.render_sft(
        p.loaded.recipe, p.run.path, base=p.base, version=render.swift_version(),
        gpu_count=p.gpu_count, resume_from=str(resume) if resume else None,
    )
    if resume:
        echo(f"  resuming from {resume}")
    progress = SftProgress(p.run.train_dir / "logging.jsonl", from_end=resume is not None)
    try:
        procs.run_stage("sft", cmd.argv, cmd.env, p.run.log("sft"), on_tick=progress)
    finally:
        progress.finish()
    return {"checkpoint": last_checkpoint_from_log(p.run.train_dir), "command": cmd.shell()}


def stage_export(p: "RunPlan", fresh: bool) -> dict:
    from swiftpipe.train import render

    checkpoint = p.run.stage_outputs("sft")["checkpoint"]
    cmd = render.render_export(p.loaded.recipe, p.run.path, base=p.base, checkpoint=checkpoint, gpu_count=p.gpu_count)
    assert cmd is not None  # the export stage only runs when the recipe merges
    procs.run_stage("export", cmd.argv, cmd.env, p.run.log("export"))
    if not (p.run.merged_dir / "config.json").is_file():
        raise SwiftpipeError(f"export finished but wrote no model to {p.run.merged_dir}; see {p.run.log('export')}")
    return {"merged_model": str(p.run.merged_dir), "command": cmd.shell()}


def stage_eval(p: "RunPlan", which: str, fresh: bool) -> dict:
    """Serve one model (fine-tuned or base), evaluate the test set against it, stop the server."""
    from swiftpipe.core.vllm_server import VllmServer
    from swiftpipe.evaluation import evaluate, reports, scoring
    from swiftpipe.recipe.derived import absolute, device_is_cpu, run_serve_target
    from swiftpipe.task import client

    recipe = p.loaded.recipe
    out = p.run.eval_dir(which)
    if fresh and out.exists():
        shutil.rmtree(out)
    rows = evaluate.read_test_rows(Path(absolute(recipe.data.test or "", p.base)), recipe.data.system_prompt)
    schema = recipe.data.json_schema() or scoring.schema_from_gold(rows)
    target = run_serve_target(recipe, which=which, final_model=summarize(p)["final_model"], base=p.base,
                                 run_name=p.loaded.name, cpu=device_is_cpu(recipe, p.gpu_count))
    log = p.run.log("eval" if which == "finetuned" else "eval-base")
    echo(f"  starting vLLM for {target.model_dir} (log: {log})")
    with VllmServer(target, log, settings=recipe.serve) as server:
        echo(f"  serving '{target.served_name}' at {server.base_url}; evaluating {len(rows)} rows")
        endpoint = client.Endpoint(server.base_url, target.served_name, server.api_key, timeout=recipe.eval.timeout)
        metrics = evaluate.evaluate([endpoint], rows, out, schema=schema, settings=recipe.eval,
                                    progress=sys.stderr.isatty(), title=f"{p.loaded.name} ({which})",
                                    extra={"served_dtype": server.dtype.record()},
                                    verbatim_fields=recipe.data.verbatim_fields)
    echo(f"  {which}: {reports.headline(metrics)}")
    echo(f"  {which}: {reports.accept_sentence(metrics.get('confidence'))}")
    return {"exact_match": metrics["exact_match"], "metrics": str(out / "metrics.json"), "model": target.model_dir,
            "dtype": server.dtype.dtype or "auto",
            "accept_threshold": (metrics.get("confidence") or {}).get("accept_threshold")}


def stage_report(p: "RunPlan", fresh: bool) -> dict:
    from swiftpipe.evaluation import evaluate, reports

    tuned_dir, base_dir = p.run.eval_dir("finetuned"), p.run.eval_dir("base")
    tuned = p.run.metrics("finetuned") or {}
    base = p.run.metrics("base") if p.loaded.recipe.eval.compare_base else None
    if base:
        text = reports.comparison_markdown(
            base, tuned, evaluate.read_records(base_dir), evaluate.read_records(tuned_dir))
    else:
        text = (tuned_dir / "report.md").read_text(encoding="utf-8")
    if (tuned_dir / reports.RELIABILITY_PNG).is_file():  # the report links it beside itself
        shutil.copyfile(tuned_dir / reports.RELIABILITY_PNG, p.run.path / reports.RELIABILITY_PNG)
    write_atomic(p.run.path / "report.md", text)
    echo(text.split("\n## ", 1)[0].rstrip())  # the summary table; examples stay in the file
    return {"report": str(p.run.path / "report.md")}


def evaluates(recipe: "Recipe") -> bool:
    return bool(recipe.data.test) and recipe.eval.enabled


@dataclass(frozen=True)
class Stage:
    name: str
    wanted: Callable[["Recipe"], bool]  # whether a recipe has this stage
    run: Callable[["RunPlan", bool], dict]  # (plan, fresh) -> its outputs, kept in its marker
    summary: Callable[[dict], dict] = lambda outputs: {}  # what its outputs add to the run's summary
    every_node: bool = False  # also on the other machines of a multi-node run (they only train)


STAGES: tuple[Stage, ...] = (
    Stage("model", lambda r: r.model.tiny, stage_model, every_node=True),
    # What a server loads (final_model): the last checkpoint, unless the export stage merges a LoRA.
    Stage("sft", lambda r: True, stage_sft, lambda o: {"checkpoint": o.get("checkpoint"),
                                                        "final_model": o.get("checkpoint")}, every_node=True),
    Stage("export", lambda r: r.merges, stage_export, lambda o: {"merged_model": o.get("merged_model"),
                                                                 "final_model": o.get("merged_model")}),
    Stage("eval", evaluates, lambda p, fresh: stage_eval(p, "finetuned", fresh),
          lambda o: {"exact_match": o.get("exact_match"), "accept_threshold": o.get("accept_threshold")}),
    Stage("eval-base", lambda r: evaluates(r) and r.eval.compare_base, lambda p, fresh: stage_eval(p, "base", fresh),
          lambda o: {"base_exact_match": o.get("exact_match")}),
    Stage("report", evaluates, stage_report, lambda o: {"report": o.get("report")}),
)
NAMES = [s.name for s in STAGES]


def active(p: "RunPlan") -> list[Stage]:
    """The recipe's stages, in order. Multi-node: the other machines only join the training; node 0
    merges, serves and evaluates."""
    recipe = p.loaded.recipe
    other_node = recipe.hardware.node_rank > 0
    return [s for s in STAGES if s.wanted(recipe) and (s.every_node or not other_node)]


def summarize(p: "RunPlan") -> dict:
    """The run's summary (run.json when done): what each finished stage's outputs add to it."""
    summary: dict = {}
    for stage in STAGES:
        if p.run.is_done(stage.name):
            summary.update(stage.summary(p.run.stage_outputs(stage.name)))
    return summary
