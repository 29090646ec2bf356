"""`swiftpipe run`: the plan of a run (its directory, its commands), then its stages (the table in
`stages`), in order, each skipped when its marker says done, after the checks of `preflight`.
Forcing a stage redoes it and every later stage (they consume its output).
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from swiftpipe.core import console, envinfo, procs, runlock
from swiftpipe.core.console import say as echo
from swiftpipe.core.errors import RecipeError, StageFailed, SwiftpipeError
from swiftpipe.core.jsonl import write_atomic
from swiftpipe.core.shell import Command
from swiftpipe.recipe.derived import absolute
from swiftpipe.recipe.load import LoadedRecipe, resolved_yaml
from swiftpipe.recipe.rundir import RunDir, new_run_id
from swiftpipe.train import hub, render
from swiftpipe.train.preflight import check_inputs
from swiftpipe.train.stages import active, summarize

# Recipe keys that legitimately differ between the machines of one multi-node run sharing
# output.root: they do not make a different recipe.
PER_MACHINE_KEYS = (("hardware", "node_rank"),)
# Sections a run does not use (batch extraction settings): changing them, or a run made before they
# existed, is not a recipe change.
NOT_RUN_SECTIONS = ("extract",)
# Keys added to the schema after runs were made with it, at their default (what those runs did):
# a stored resolved.yaml without them is the same recipe.
ADDED_KEYS = ((("serve", "dtype"), "auto"),)


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
    for (section, key), default in ADDED_KEYS:
        if (data.get(section) or {}).get(key, default) == default:
            (data.get(section) or {}).pop(key, None)
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


def check_force(p: RunPlan, force: Optional[str]) -> None:
    stages = [s.name for s in active(p)]
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
    stages = active(p)
    names = [s.name for s in stages]
    redo = set(names[names.index(force):]) if force else set()
    console.resume_hint(f"resume with `{p.resume_command()}` (finished stages are kept)")
    with runlock.RunLock(p.run.path, name=p.lock_path.name):
        reopened = prepare_run_dir(p)
        echo(f"run directory: {p.run.path}" + (" (resuming)" if reopened else ""))
        node = {} if p.loaded.recipe.hardware.node_rank == 0 else {"node_rank": p.loaded.recipe.hardware.node_rank}
        for entry in stages:
            stage = entry.name
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
                outputs = entry.run(p, stage in redo)
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


def dry_run_text(p: RunPlan) -> str:
    return render.commands_script(p.commands, header=f"run directory: {p.run.path}")

