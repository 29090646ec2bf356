"""`swiftpipe run`: the stages of a recipe, in order, each skipped when its marker says done.

    model (build the tiny test model, when model.tiny) → sft → export (LoRA merge)
      → eval (serve the fine-tuned model with vLLM, evaluate data.test, stop the server)
      → eval-base (the same for the base model, with eval.compare_base) → report

Forcing a stage redoes it and every later stage (they consume its output).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from swiftpipe import envinfo, procs, render
from swiftpipe.errors import RecipeError, SwiftpipeError
from swiftpipe.recipe.load import LoadedRecipe, resolved_yaml
from swiftpipe.rundir import RunDir, new_run_id, read_json, write_atomic, write_json

STAGES = ["model", "sft", "export", "eval", "eval-base", "report"]


def echo(message: str = "") -> None:
    print(message, flush=True)


@dataclass
class RunPlan:
    loaded: LoadedRecipe
    run: RunDir
    run_id: str
    base: Path  # relative recipe paths are resolved against this (the working directory)
    gpu_count: int
    commands: list[render.Command] = field(default_factory=list)


def plan(loaded: LoadedRecipe, *, run_id: Optional[str], base: Path) -> RunPlan:
    recipe = loaded.recipe
    run_id = run_id or new_run_id()
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise RecipeError(f"--run-id {run_id!r}: use a plain name such as 20261122-101500")
    root = Path(render.absolute(recipe.output.root, base))
    run = RunDir(root / loaded.name / run_id)
    gpu_count = len(envinfo.gpus())
    commands = render.render_all(recipe, run.path, base=base, gpu_count=gpu_count)
    return RunPlan(loaded, run, run_id, base, gpu_count, commands)


def check_inputs(p: RunPlan) -> None:
    """Fail before any stage when an input is missing, naming the recipe key."""
    recipe, problems = p.loaded.recipe, []
    for key in ("train", "val", "test"):
        value = getattr(recipe.data, key)
        if value and not Path(render.absolute(value, p.base)).is_file():
            problems.append(f"data.{key}: file not found: {render.absolute(value, p.base)}")
    model_dir = Path(render.absolute(recipe.model.id, p.base))
    if recipe.offline and not recipe.model.is_local:
        problems.append(
            f"model.id: '{recipe.model.id}' is a hub id, but offline is set; download it where there is "
            f"network (`modelscope download --model {recipe.model.id} --local_dir DIR`), copy DIR here and "
            f"set model.id=DIR"
        )
    elif recipe.model.is_local and not recipe.model.tiny and not (model_dir / "config.json").is_file():
        problems.append(
            f"model.id: no model at {model_dir} (no config.json); give a hub id such as "
            f"Qwen/Qwen3-0.6B, or build a test model with `swiftpipe tiny-model {recipe.model.id}`"
        )
    if problems:
        raise RecipeError(f"{p.loaded.path}: cannot start:\n" + "\n".join(f"  - {x}" for x in problems))


def _diff_lines(old: str, new: str) -> str:
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "stored", "now", lineterm="", n=0)
    return "\n".join(line for line in diff if not line.startswith(("---", "+++", "@@")))


def prepare_run_dir(p: RunPlan) -> bool:
    """Create (or re-open) the run directory. Returns True when re-opening an existing run."""
    resolved = resolved_yaml(p.loaded.recipe)
    stored_path = p.run.path / "resolved.yaml"
    if stored_path.exists():
        stored = stored_path.read_text(encoding="utf-8")
        if stored != resolved:
            raise RecipeError(
                f"run {p.run.path} was made with a different recipe:\n{_diff_lines(stored, resolved)}\n"
                f"Use a new --run-id for a changed recipe (or pass the same overrides)."
            )
        _warn_version_drift(p)
        return True
    p.run.path.mkdir(parents=True, exist_ok=True)
    write_atomic(p.run.path / "recipe.yaml", p.loaded.text)
    write_atomic(stored_path, resolved)
    write_json(p.run.path / "env.json", envinfo.environment(p.base, seed=p.loaded.recipe.train.seed))
    write_atomic(p.run.path / "commands.sh", render.commands_script(p.commands))
    (p.run.path / "commands.sh").chmod(0o755)
    write_json(p.run.path / "run.json", {
        "recipe": str(p.loaded.path),
        "name": p.loaded.name,
        "run_id": p.run_id,
        "overrides": p.loaded.overrides,
        "cwd": str(p.base),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return False


def _warn_version_drift(p: RunPlan) -> None:
    drift = envinfo.version_drift(read_json(p.run.path / "env.json"))
    if drift:
        echo(f"warning: package versions changed since this run started: {', '.join(drift)}")


def update_run_json(run: RunDir, **fields) -> None:
    data = read_json(run.path / "run.json") or {}
    data.update(fields)
    write_json(run.path / "run.json", data)


# ---------------------------------------------------------------- live view of sft


class SftProgress:
    """Reads swift's logging.jsonl as it grows and shows step/total, loss, elapsed and ETA."""

    def __init__(self, logging_jsonl: Path, out=None):
        self.path, self.offset, self.last = logging_jsonl, 0, None
        self.out = out or sys.stdout
        self.tty = self.out.isatty()

    def __call__(self) -> None:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]  # a half-written line waits for the next tick
        self.offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in entry and "global_step/max_steps" in entry:
                self.show(entry)

    def show(self, entry: dict) -> None:
        step, _, total = entry["global_step/max_steps"].partition("/")
        pct = int(step) * 100 // max(int(total), 1) if step.isdigit() and total.isdigit() else 0
        text = (
            f"  sft {step}/{total} ({pct}%)  loss {entry['loss']:.4f}  "
            f"elapsed {entry.get('elapsed_time', '?')}  eta {entry.get('remaining_time', '?')}"
        )
        if self.tty:
            self.out.write("\r" + text.ljust(78))
        else:
            self.out.write(text + "\n")
        self.out.flush()
        self.last = text

    def finish(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def last_checkpoint_from_log(train_dir: Path) -> str:
    """The checkpoint swift reports in the summary (last) line of logging.jsonl."""
    path = train_dir / "logging.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        ckpt = json.loads(lines[-1]).get("last_model_checkpoint") if lines else None
    except (FileNotFoundError, json.JSONDecodeError):
        ckpt = None
    if not ckpt:
        raise SwiftpipeError(
            f"sft finished but {path} has no summary line with last_model_checkpoint; "
            f"see the training log and rerun with --force sft"
        )
    return ckpt


# ---------------------------------------------------------------- stages


def stage_model(p: RunPlan) -> dict:
    from swiftpipe.tiny_model import build_tiny_model  # torch: only when this stage runs

    model_dir = Path(render.absolute(p.loaded.recipe.model.id, p.base))
    if (model_dir / "config.json").is_file():
        echo(f"  tiny model already at {model_dir}")
    else:
        p.run.logs.mkdir(parents=True, exist_ok=True)
        with open(p.run.log("model"), "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
            build_tiny_model(model_dir)
        echo(f"  built tiny model at {model_dir}")
    return {"model_dir": str(model_dir)}


def stage_sft(p: RunPlan, *, fresh: bool) -> dict:
    if fresh and p.run.train_dir.exists():
        shutil.rmtree(p.run.train_dir)
    resume = p.run.latest_checkpoint()
    cmd = render.render_sft(
        p.loaded.recipe, p.run.path, base=p.base, version=render.swift_version(),
        gpu_count=p.gpu_count, resume_from=str(resume) if resume else None,
    )
    if resume:
        echo(f"  resuming from {resume}")
    progress = SftProgress(p.run.train_dir / "logging.jsonl")
    if resume:
        progress.offset = _size(p.run.train_dir / "logging.jsonl")
    try:
        procs.run_stage("sft", cmd.argv, cmd.env, p.run.log("sft"), on_tick=progress)
    finally:
        progress.finish()
    return {"checkpoint": last_checkpoint_from_log(p.run.train_dir), "command": cmd.shell()}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def stage_export(p: RunPlan) -> dict:
    checkpoint = p.run.stage_outputs("sft")["checkpoint"]
    cmd = render.render_export(p.loaded.recipe, p.run.path, base=p.base, checkpoint=checkpoint, gpu_count=p.gpu_count)
    procs.run_stage("export", cmd.argv, cmd.env, p.run.log("export"))
    if not (p.run.merged_dir / "config.json").is_file():
        raise SwiftpipeError(f"export finished but wrote no model to {p.run.merged_dir}; see {p.run.log('export')}")
    return {"merged_model": str(p.run.merged_dir), "command": cmd.shell()}


def active_stages(p: RunPlan) -> list[str]:
    recipe = p.loaded.recipe
    if recipe.hardware.node_rank > 0:
        # Multi-node: the other machines only join the training; node 0 merges, serves and evaluates.
        return [stage for stage in STAGES if stage == "sft" or (stage == "model" and recipe.model.tiny)]
    wanted = {
        "model": recipe.model.tiny,
        "sft": True,
        "export": recipe.merges,
        "eval": evaluates(recipe),
        "eval-base": evaluates(recipe) and recipe.eval.compare_base,
        "report": evaluates(recipe),
    }
    return [stage for stage in STAGES if wanted[stage]]


def evaluates(recipe) -> bool:
    return bool(recipe.data.test) and recipe.eval.enabled


def stage_eval(p: RunPlan, which: str, *, fresh: bool) -> dict:
    """Serve one model (fine-tuned or base), evaluate the test set against it, stop the server."""
    from swiftpipe import evaluate
    from swiftpipe.serve import ServeOptions, VllmServer

    recipe = p.loaded.recipe
    out = p.run.path / "eval" / which
    if fresh and out.exists():
        shutil.rmtree(out)
    rows = evaluate.read_test_rows(Path(render.absolute(recipe.data.test, p.base)), recipe.data.system_prompt)
    schema = recipe.data.json_schema() or evaluate.schema_from_gold(rows)
    opts = ServeOptions.for_run(recipe, which=which, final_model=summarize(p)["final_model"], base=p.base,
                                run_name=p.loaded.name, cpu=render.device_is_cpu(recipe, p.gpu_count))
    model, name = opts.model_dir, opts.served_name
    log = p.run.log("eval" if which == "finetuned" else "eval-base")
    echo(f"  starting vLLM for {model} (log: {log})")
    with VllmServer(opts, log) as server:
        echo(f"  serving '{name}' at {server.base_url}; evaluating {len(rows)} rows")
        cfg = evaluate.EvalConfig(
            base_url=server.base_url, model=name, api_key=server.api_key, schema=schema,
            concurrency=recipe.eval.concurrency, max_tokens=recipe.eval.max_tokens, timeout=recipe.eval.timeout,
            metric=recipe.eval.metric,
        )
        metrics = evaluate.evaluate(cfg, rows, out, progress=sys.stderr.isatty(), title=f"{p.loaded.name} ({which})")
    echo(f"  {which}: {evaluate.headline(metrics)}")
    return {"exact_match": metrics["exact_match"], "metrics": str(out / "metrics.json"), "model": model}


def stage_report(p: RunPlan) -> dict:
    from swiftpipe import evaluate

    tuned_dir, base_dir = p.run.path / "eval" / "finetuned", p.run.path / "eval" / "base"
    tuned = read_json(tuned_dir / "metrics.json")
    base = read_json(base_dir / "metrics.json") if p.loaded.recipe.eval.compare_base else None
    if base:
        text = evaluate.comparison_markdown(
            base, tuned, evaluate.read_records(base_dir), evaluate.read_records(tuned_dir))
    else:
        text = (tuned_dir / "report.md").read_text(encoding="utf-8")
    write_atomic(p.run.path / "report.md", text)
    echo(text.split("\n## ", 1)[0].rstrip())  # the summary table; examples stay in the file
    return {"report": str(p.run.path / "report.md")}


def execute(p: RunPlan, *, force: Optional[str] = None) -> dict:
    """Run the stages that are not done yet; returns the run summary."""
    check_inputs(p)
    reopened = prepare_run_dir(p)
    stages = active_stages(p)
    if force and force not in stages:
        raise RecipeError(f"--force {force}: this recipe's stages are {', '.join(stages)}")
    redo = set(stages[stages.index(force):]) if force else set()
    echo(f"run directory: {p.run.path}" + (" (resuming)" if reopened else ""))
    runners: dict[str, Callable[[], dict]] = {
        "model": lambda: stage_model(p),
        "sft": lambda: stage_sft(p, fresh="sft" in redo),
        "export": lambda: stage_export(p),
        "eval": lambda: stage_eval(p, "finetuned", fresh="eval" in redo),
        "eval-base": lambda: stage_eval(p, "base", fresh="eval-base" in redo),
        "report": lambda: stage_report(p),
    }
    for stage in stages:
        if p.run.is_done(stage) and stage not in redo:
            echo(f"[{stage}] done earlier, skipped")
            continue
        p.run.clear(stage)
        echo(f"[{stage}] running (log: {p.run.log(stage)})")
        started = time.monotonic()
        update_run_json(p.run, status=f"running {stage}")
        try:
            outputs = runners[stage]()
        except BaseException:
            update_run_json(p.run, status=f"failed in {stage}")
            raise
        seconds = round(time.monotonic() - started, 1)
        p.run.mark_done(stage, seconds=seconds, **outputs)
        echo(f"[{stage}] done in {seconds}s")
    summary = summarize(p)
    update_run_json(p.run, status="done", **summary)
    return summary


def summarize(p: RunPlan) -> dict:
    sft = p.run.stage_outputs("sft")
    export = p.run.stage_outputs("export")
    summary = {
        "checkpoint": sft.get("checkpoint"),
        "merged_model": export.get("merged_model"),
        # What a server loads: the merged model for LoRA, the last checkpoint otherwise.
        "final_model": export.get("merged_model") or sft.get("checkpoint"),
    }
    for stage, key in (("eval", "exact_match"), ("eval-base", "base_exact_match")):
        if p.run.is_done(stage):
            summary[key] = p.run.stage_outputs(stage).get("exact_match")
    if p.run.is_done("report"):
        summary["report"] = p.run.stage_outputs("report").get("report")
    return summary


def dry_run_text(p: RunPlan) -> str:
    return render.commands_script(p.commands, header=f"run directory: {p.run.path}")

