"""`swiftpipe run`: the stages of a recipe, in order, each skipped when its marker says done.

    model (build the tiny test model, when model.tiny) → sft → export (LoRA merge)
      → eval (serve the fine-tuned model with vLLM, evaluate data.test, stop the server)
      → eval-base (the same for the base model, with eval.compare_base) → report

Forcing a stage redoes it and every later stage (they consume its output).
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from swiftpipe import console, envinfo, hub, jsonl, messages, procs, render, runlock
from swiftpipe.console import say as echo
from swiftpipe.errors import RecipeError, StageFailed, SwiftpipeError
from swiftpipe.jsonl import write_atomic
from swiftpipe.recipe.derived import absolute, device_is_cpu
from swiftpipe.recipe.load import LoadedRecipe, resolved_yaml
from swiftpipe.recipe.schema import Recipe
from swiftpipe.rundir import STAGES, RunDir, new_run_id
from swiftpipe.shell import Command

# Recipe keys that legitimately differ between the machines of one multi-node run sharing
# output.root: they do not make a different recipe.
PER_MACHINE_KEYS = (("hardware", "node_rank"),)
# Sections a run does not use (batch extraction settings): changing them, or a run made before they
# existed, is not a recipe change.
NOT_RUN_SECTIONS = ("extract",)


@dataclass
class RunPlan:
    loaded: LoadedRecipe
    run: RunDir
    run_id: str
    base: Path  # relative recipe paths are resolved against this (the working directory)
    gpu_count: int
    commands: list[Command] = field(default_factory=list)
    allow_cpu: bool = False

    def resume_command(self) -> str:
        """The exact command that continues this run."""
        argv = ["swiftpipe", "run", str(self.loaded.path), *self.loaded.overrides, "--run-id", self.run_id]
        return shlex.join(argv + (["--allow-cpu"] if self.allow_cpu else []))

    @property
    def lock_path(self) -> Path:
        # One lock per machine of a multi-node run: they share the directory but not the work.
        rank = self.loaded.recipe.hardware.node_rank
        return self.run.path / ("run.lock" if rank == 0 else f"run.node{rank}.lock")


def plan(loaded: LoadedRecipe, *, run_id: Optional[str], base: Path, allow_cpu: bool = False) -> RunPlan:
    recipe = loaded.recipe
    run_id = run_id or new_run_id()
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise RecipeError(f"--run-id {run_id!r}: use a plain name such as 20261122-101500")
    root = Path(absolute(recipe.output.root, base))
    run = RunDir(root / loaded.name / run_id)
    gpu_count = len(envinfo.gpus())
    commands = render.render_all(recipe, run.path, base=base, gpu_count=gpu_count)
    return RunPlan(loaded, run, run_id, base, gpu_count, commands, allow_cpu=allow_cpu)


# Bad rows shown per data file; the others are counted.
SHOWN_BAD_ROWS = 5


def data_inputs(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe key, path as written) for each data file the recipe names: every file of data.train,
    then data.val and data.test when set."""
    d = recipe.data
    files = [("data.train", f) for f in d.train_files()]
    return files + [(f"data.{key}", value) for key in ("val", "test") if (value := getattr(d, key))]


def data_file_problems(key: str, path: Path, *, json_answer: bool) -> list[str]:
    """Why `path` is not a usable messages JSONL file (none when it is): missing, unreadable, empty,
    or bad rows, the first few named file:line. Swift would otherwise fail (or drop rows) mid-sft."""
    if not path.is_file():
        return [f"{key}: file not found: {path}"]
    rows, bad = 0, 0
    shown: list[str] = []  # the first SHOWN_BAD_ROWS problems
    try:
        for number, record in jsonl.scan(path):  # row by row, keeping nothing: the file may be large
            reason = _row_problem(path, number, record, json_answer=json_answer)
            if reason is None:
                rows += 1
                continue
            bad += 1
            if len(shown) < SHOWN_BAD_ROWS:
                shown.append(reason)
    except (OSError, jsonl.JsonlError) as exc:
        return [f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"]
    except UnicodeDecodeError as exc:
        return [f"{key}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"]
    if bad:
        more = [f"... and {bad - len(shown)} more"] if bad > len(shown) else []
        listing = "".join(f"\n      - {line}" for line in shown + more)
        return [f"{key}: {bad} bad row(s) in {path} (expected {messages.SHAPE}):{listing}"]
    if not rows:
        return [f"{key}: {path} has no rows (expected {messages.SHAPE})"]
    return []


def _row_problem(path: Path, number: int, record: object, *, json_answer: bool) -> Optional[str]:
    """'file:line: reason' when the line is not a usable messages row, else None."""
    if isinstance(record, jsonl.JsonlError):
        return str(record)
    try:
        messages.parse(record, line=number, json_answer=json_answer)
    except ValueError as exc:
        return f"{path}:{number}: {exc}"
    return None


def input_problems(p: RunPlan) -> list[str]:
    """What would stop the run before any stage: missing or malformed data files (each naming its
    recipe key, its file and the bad lines), a missing model, and a GPU-sized recipe about to run on
    a CPU-only machine."""
    recipe, problems = p.loaded.recipe, []
    for key, value in data_inputs(recipe):
        path = Path(absolute(value, p.base))
        if key == "data.test" and not evaluates(recipe):
            # Not read by this run: only its presence is checked, as the recipe names it.
            problems += [f"{key}: file not found: {path}"] if not path.is_file() else []
            continue
        # Training answers must be JSON when the recipe declares an answer schema; test answers are
        # the gold JSON the evaluation scores against.
        json_answer = key == "data.test" or bool(recipe.data.output_schema)
        problems += data_file_problems(key, path, json_answer=json_answer)
    model_dir = Path(absolute(recipe.model.id, p.base))
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
    problems += cpu_problems(p)
    return problems


def cpu_problems(p: RunPlan) -> list[str]:
    """A recipe left on `hardware.device: auto` that finds no GPU would train on CPU: for a real model
    that is many hours. Say so before anything starts; go on only when asked to."""
    recipe = p.loaded.recipe
    hw, t = recipe.hardware, recipe.train
    if p.gpu_count or hw.device == "cpu" or p.allow_cpu:
        return []
    found = envinfo.gpu_detection()
    if hw.device == "cuda":
        return [f"hardware.device: cuda, but no GPU is visible ({found}); run on a GPU machine, or set "
                f"hardware.device=cpu"]
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    return [f"hardware.device: auto found no GPU ({found}), so this recipe would train {recipe.model.id} "
            f"({recipe.model.torch_dtype}, {t.tuner}, batch {t.batch_size} x {t.grad_accum}, {length}) on the CPU, "
            f"which takes many hours for a real model. Use recipes/demo-cpu.yaml for a CPU demo, or a GPU "
            f"machine; to train on this CPU anyway pass --allow-cpu (or set hardware.device=cpu)"]


def check_inputs(p: RunPlan) -> None:
    """Fail before any stage when an input is missing; then, for a hub model that is not cached,
    fail in seconds when the hub cannot be reached."""
    problems = input_problems(p)
    if problems:
        raise RecipeError(f"{p.loaded.path}: cannot start:\n" + "\n".join(f"  - {x}" for x in problems))
    model = p.loaded.recipe.model
    if not model.is_local and "sft" in active_stages(p):
        hub.check_reachable(model.id, model.hub)


def _diff_lines(old: str, new: str) -> str:
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "stored", "now", lineterm="", n=0)
    return "\n".join(line for line in diff if not line.startswith(("---", "+++", "@@")))


def _same_recipe_text(text: str) -> str:
    """resolved.yaml without the keys that differ per machine of one run."""
    data = yaml.safe_load(text) or {}
    for section, key in PER_MACHINE_KEYS:
        (data.get(section) or {}).pop(key, None)
    for section in NOT_RUN_SECTIONS:
        data.pop(section, None)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


def prepare_run_dir(p: RunPlan) -> bool:
    """Create (or re-open) the run directory. Returns True when re-opening an existing run."""
    resolved = resolved_yaml(p.loaded.recipe)
    if p.run.resolved.exists():
        stored = p.run.resolved.read_text(encoding="utf-8")
        if _same_recipe_text(stored) != _same_recipe_text(resolved):
            raise RecipeError(
                f"run {p.run.path} was made with a different recipe:\n{_diff_lines(stored, resolved)}\n"
                f"Use a new --run-id for a changed recipe (or pass the same overrides)."
            )
        _warn_version_drift(p)
        return True
    p.run.write_recipe(p.loaded.text, resolved)
    p.run.write_env(envinfo.environment(p.base, seed=p.loaded.recipe.train.seed))
    write_atomic(p.run.path / "commands.sh", render.commands_script(p.commands))
    (p.run.path / "commands.sh").chmod(0o755)
    p.run.create(recipe=str(p.loaded.path), name=p.loaded.name, run_id=p.run_id, overrides=p.loaded.overrides,
                 cwd=str(p.base), created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return False


def _warn_version_drift(p: RunPlan) -> None:
    drift = envinfo.version_drift(p.run.env())
    if drift:
        console.warn(f"package versions changed since this run started: {', '.join(drift)}")


# ---------------------------------------------------------------- live view of sft


class SftProgress:
    """Reads swift's logging.jsonl as it grows and shows step/total, loss, elapsed and ETA.

    It runs inside the training stage's loop: nothing it reads may stop training, so a malformed
    line (a loss that is not a number, a partial line) is skipped, never raised.
    """

    def __init__(self, logging_jsonl: Path, out=None, *, from_end: bool = False):
        self.log = jsonl.Follower(logging_jsonl, from_end=from_end)
        self.last: Optional[str] = None
        self.out = out or sys.stdout
        self.tty = self.out.isatty()

    def __call__(self) -> None:
        for entry in self.log.new():
            if isinstance(entry, dict) and "loss" in entry and "global_step/max_steps" in entry:
                self.show(entry)

    @staticmethod
    def line(entry: dict) -> Optional[str]:
        """The progress line of one log entry; None when the entry is not one swift would write."""
        step, _, total = str(entry.get("global_step/max_steps")).partition("/")
        try:
            loss = float(entry["loss"])
        except (TypeError, ValueError):
            return None
        pct = int(step) * 100 // max(int(total), 1) if step.isdigit() and total.isdigit() else 0
        return (f"  sft {step}/{total} ({pct}%)  loss {loss:.4f}  "
                f"elapsed {entry.get('elapsed_time', '?')}  eta {entry.get('remaining_time', '?')}")

    def show(self, entry: dict) -> None:
        text = self.line(entry)
        if text is None:
            return
        try:
            self.out.write("\r" + text.ljust(78) if self.tty else text + "\n")
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away (SIGHUP): training goes on
            pass
        self.last = text

    def finish(self) -> None:
        if self.tty and self.last:
            with contextlib.suppress(OSError, ValueError):
                self.out.write("\n")
                self.out.flush()


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


# ---------------------------------------------------------------- stages


def stage_model(p: RunPlan) -> dict:
    from swiftpipe.tiny_model import build_tiny_model  # torch: only when this stage runs

    model_dir = Path(absolute(p.loaded.recipe.model.id, p.base))
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
    progress = SftProgress(p.run.train_dir / "logging.jsonl", from_end=resume is not None)
    try:
        procs.run_stage("sft", cmd.argv, cmd.env, p.run.log("sft"), on_tick=progress)
    finally:
        progress.finish()
    return {"checkpoint": last_checkpoint_from_log(p.run.train_dir), "command": cmd.shell()}


def stage_export(p: RunPlan) -> dict:
    checkpoint = p.run.stage_outputs("sft")["checkpoint"]
    cmd = render.render_export(p.loaded.recipe, p.run.path, base=p.base, checkpoint=checkpoint, gpu_count=p.gpu_count)
    assert cmd is not None  # the export stage only runs when the recipe merges
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
    from swiftpipe import client, evaluate, reports, scoring
    from swiftpipe.vllm_server import ServeTarget, VllmServer

    recipe = p.loaded.recipe
    out = p.run.eval_dir(which)
    if fresh and out.exists():
        shutil.rmtree(out)
    rows = evaluate.read_test_rows(Path(absolute(recipe.data.test or "", p.base)), recipe.data.system_prompt)
    schema = recipe.data.json_schema() or scoring.schema_from_gold(rows)
    target = ServeTarget.for_run(recipe, which=which, final_model=summarize(p)["final_model"], base=p.base,
                                 run_name=p.loaded.name, cpu=device_is_cpu(recipe, p.gpu_count))
    log = p.run.log("eval" if which == "finetuned" else "eval-base")
    echo(f"  starting vLLM for {target.model_dir} (log: {log})")
    with VllmServer(target, log, settings=recipe.serve) as server:
        echo(f"  serving '{target.served_name}' at {server.base_url}; evaluating {len(rows)} rows")
        endpoint = client.Endpoint(server.base_url, target.served_name, server.api_key, timeout=recipe.eval.timeout)
        metrics = evaluate.evaluate([endpoint], rows, out, schema=schema, settings=recipe.eval,
                                    progress=sys.stderr.isatty(), title=f"{p.loaded.name} ({which})")
    echo(f"  {which}: {reports.headline(metrics)}")
    return {"exact_match": metrics["exact_match"], "metrics": str(out / "metrics.json"), "model": target.model_dir}


def stage_report(p: RunPlan) -> dict:
    from swiftpipe import evaluate, reports

    tuned_dir, base_dir = p.run.eval_dir("finetuned"), p.run.eval_dir("base")
    tuned = p.run.metrics("finetuned") or {}
    base = p.run.metrics("base") if p.loaded.recipe.eval.compare_base else None
    if base:
        text = reports.comparison_markdown(
            base, tuned, evaluate.read_records(base_dir), evaluate.read_records(tuned_dir))
    else:
        text = (tuned_dir / "report.md").read_text(encoding="utf-8")
    write_atomic(p.run.path / "report.md", text)
    echo(text.split("\n## ", 1)[0].rstrip())  # the summary table; examples stay in the file
    return {"report": str(p.run.path / "report.md")}


def check_force(p: RunPlan, force: Optional[str]) -> None:
    stages = active_stages(p)
    if force and force not in stages:
        raise RecipeError(f"--force {force}: this recipe's stages are {', '.join(stages)}")


def execute(p: RunPlan, *, force: Optional[str] = None) -> dict:
    """Run the stages that are not done yet; returns the run summary.

    Nothing is created before the inputs are checked; the run directory is locked for the whole
    run (a second `swiftpipe run` on it is refused, naming this process), and run.json names this
    process as the owner, so a run whose owner died reads as interrupted, never as running.
    """
    check_force(p, force)
    check_inputs(p)
    stages = active_stages(p)
    redo = set(stages[stages.index(force):]) if force else set()
    console.resume_hint(f"resume with `{p.resume_command()}` (finished stages are kept)")
    with runlock.RunLock(p.run.path, name=p.lock_path.name):
        reopened = prepare_run_dir(p)
        echo(f"run directory: {p.run.path}" + (" (resuming)" if reopened else ""))
        runners: dict[str, Callable[[], dict]] = {
            "model": lambda: stage_model(p),
            "sft": lambda: stage_sft(p, fresh="sft" in redo),
            "export": lambda: stage_export(p),
            "eval": lambda: stage_eval(p, "finetuned", fresh="eval" in redo),
            "eval-base": lambda: stage_eval(p, "base", fresh="eval-base" in redo),
            "report": lambda: stage_report(p),
        }
        node = {} if p.loaded.recipe.hardware.node_rank == 0 else {"node_rank": p.loaded.recipe.hardware.node_rank}
        for stage in stages:
            if p.run.is_done(stage) and stage not in redo:
                echo(f"[{stage}] done earlier, skipped")
                continue
            p.run.clear(stage)
            echo(f"[{stage}] running (log: {p.run.log(stage)})")
            started = time.monotonic()
            if not node:
                p.run.update(status=f"running {stage}", owner=runlock.owner())
            run_log(p, f"[{stage}] started")
            try:
                outputs = runners[stage]()
            except KeyboardInterrupt as exc:
                _record_end(p, stage, "interrupted", f"interrupted by {procs.interrupt_signame(exc) or 'Ctrl-C'}")
                raise
            except SwiftpipeError as exc:
                _record_end(p, stage, "failed", f"failed: {str(exc).splitlines()[0]}")
                raise _with_resume(p, stage, exc) from None
            except BaseException:
                _record_end(p, stage, "failed", "failed with an unexpected error")
                raise
            seconds = round(time.monotonic() - started, 1)
            p.run.mark_done(stage, seconds=seconds, **outputs)
            run_log(p, f"[{stage}] done in {seconds}s")
            echo(f"[{stage}] done in {seconds}s")
        summary = summarize(p)
        if not node:
            p.run.update(status="done", **summary)
        console.resume_hint(None)
        return summary


def run_log(p: RunPlan, line: str) -> None:
    """swiftpipe's own account of the run (stage starts and ends, failures, the resume command)."""
    p.run.logs.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError), open(p.run.log("run"), "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")


def _record_end(p: RunPlan, stage: str, how: str, detail: str) -> None:
    if p.loaded.recipe.hardware.node_rank == 0:
        p.run.update(status=f"{how} in {stage}")
    run_log(p, f"[{stage}] {detail}; resume with: {p.resume_command()}")


def _with_resume(p: RunPlan, stage: str, exc: SwiftpipeError) -> SwiftpipeError:
    """The stage's error, told as a hub failure when that is what its log shows, ending with the
    exact command that resumes the run."""
    model = p.loaded.recipe.model
    message = str(exc)
    if isinstance(exc, StageFailed) and not model.is_local:
        try:
            log_text = Path(exc.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            log_text = ""
        if hub.failure_in_log(log_text):
            message = hub.explain_failure(stage, model.id, model.hub, exc.log_path)
    exc.args = (f"{message}\nFix the cause, then resume (finished stages are kept):\n  {p.resume_command()}",)
    return exc


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

