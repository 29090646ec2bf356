"""The run directory: `<output.root>/<recipe name>/<run id>/`, self-describing and resumable. This
module is the one that knows its files; everything else asks a `RunDir`.

    recipe.yaml      the recipe as written          resolved.yaml  defaults + overrides applied
    run.json         overrides, stage status, paths env.json       versions, git, host, GPUs, seed
    commands.sh      re-runnable commands           logs/<stage>.log
    train/           swift's training dir           merged/        the merged model (LoRA)
    stages/<stage>.done   completion markers (JSON: when, outputs)
    eval/<which>/    predictions.jsonl, metrics.json, report.md (which: finetuned, base)
    run.lock         held by the process working on the run (released by the OS when it dies)
    logs/run.log     swiftpipe's own account: stage starts and ends, failures, the resume command

`resolve_target` turns a directory given to `swiftpipe serve` or `swiftpipe extract --model` (a run
directory, or a model directory with an optional recipe) into what it serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from swiftpipe.core import console, runlock
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.jsonl import read_json, write_atomic, write_json

if TYPE_CHECKING:
    from swiftpipe.recipe.schema import Recipe

RUN_JSON = "run.json"
RESOLVED = "resolved.yaml"


class NotARun(SwiftpipeError):
    pass


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class RunDir:
    path: Path

    # ------------------------------------------------------------ what it is

    @classmethod
    def open(cls, path: Path | str) -> "RunDir":
        """An existing run directory; NotARun (naming what is missing) otherwise."""
        run = cls(Path(path))
        if not run.exists():
            raise NotARun(f"{path} is not a run directory (no {RUN_JSON} / {RESOLVED}); pass runs/<recipe>/<run id>")
        return run

    def exists(self) -> bool:
        return (self.path / RUN_JSON).is_file() and self.resolved.is_file()

    @staticmethod
    def find(root: Path) -> list["RunDir"]:
        """Run directories at or below `root` (a runs root, a recipe's folder, or one run)."""
        if RunDir(root).exists():
            return [RunDir(root)]
        return [RunDir(p.parent) for p in sorted(root.rglob(RUN_JSON)) if RunDir(p.parent).exists()]

    # ------------------------------------------------------------ run.json

    def info(self) -> dict[str, Any]:
        """run.json: the recipe it came from, overrides, working directory, status, owner, final model."""
        return read_json(self.path / RUN_JSON) or {}

    def create(self, **fields: Any) -> None:
        write_json(self.path / RUN_JSON, fields)

    def update(self, **fields: Any) -> None:
        data = self.info()
        data.update(fields)
        write_json(self.path / RUN_JSON, data)

    @property
    def name(self) -> str:
        return self.info().get("name") or self.path.parent.name

    @property
    def run_id(self) -> str:
        return self.info().get("run_id") or self.path.name

    @property
    def base(self) -> Path:
        """The directory the run was started from: its recipe's relative paths are relative to it."""
        return Path(self.info().get("cwd") or ".")

    @property
    def final_model(self) -> Optional[str]:
        """What a server of the finished run loads (the merged model, or the last checkpoint)."""
        return self.info().get("final_model")

    def status(self) -> str:
        """run.json's status; "interrupted (at stage X)" when its owner died while running X."""
        return runlock.effective_status(self.info())

    # ------------------------------------------------------------ the recipe

    @property
    def resolved(self) -> Path:
        return self.path / RESOLVED

    def recipe(self) -> "Recipe":
        """The resolved recipe the run was made with."""
        from swiftpipe.recipe.load import load_recipe

        return load_recipe(self.resolved).recipe

    def params(self) -> dict[str, Any]:
        """The resolved recipe as data (every default filled in)."""
        import yaml

        return yaml.safe_load(self.resolved.read_text(encoding="utf-8")) or {}

    def write_recipe(self, written: str, resolved: str) -> None:
        write_atomic(self.path / "recipe.yaml", written)
        write_atomic(self.resolved, resolved)

    # ------------------------------------------------------------ what it produced

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def merged_dir(self) -> Path:
        return self.path / "merged"

    def eval_dir(self, which: str = "finetuned") -> Path:
        return self.path / "eval" / which

    def metrics(self, which: str = "finetuned") -> Optional[dict]:
        return read_json(self.eval_dir(which) / "metrics.json")

    def accept_threshold(self, which: str = "finetuned") -> Optional[float]:
        """The row-confidence threshold the run's eval calibrated (metrics.json confidence.accept_threshold):
        what `serve` and `extract` use unless told otherwise; None before an eval with confidence."""
        value = ((self.metrics(which) or {}).get("confidence") or {}).get("accept_threshold")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def env(self) -> dict[str, Any]:
        return read_json(self.path / "env.json") or {}

    def write_env(self, env: dict[str, Any]) -> None:
        write_json(self.path / "env.json", env)

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    def marker(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.done"

    def is_done(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def mark_done(self, stage: str, **outputs: Any) -> None:
        write_json(self.marker(stage), {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **outputs})

    def clear(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)

    def stage_outputs(self, stage: str) -> dict:
        return read_json(self.marker(stage)) or {}

    def stage_seconds(self) -> dict[str, Optional[float]]:
        """Seconds each finished stage took."""
        return {m.stem: (read_json(m) or {}).get("seconds") for m in sorted((self.path / "stages").glob("*.done"))}

    def latest_checkpoint(self) -> Optional[Path]:
        """The highest-numbered complete checkpoint in train/ (for resuming an interrupted sft)."""
        best: tuple[int, Optional[Path]] = (-1, None)
        for ckpt in self.train_dir.glob("checkpoint-*"):
            step = ckpt.name.rpartition("-")[2]
            # trainer_state.json is written last: without it the checkpoint is partial.
            if step.isdigit() and (ckpt / "trainer_state.json").exists() and int(step) > best[0]:
                best = (int(step), ckpt)
        return best[1]


@dataclass
class Target:
    """What a directory given to `serve` or `extract --model` serves."""

    path: Path  # as given, resolved
    run: Optional[RunDir]  # when it is a run directory
    recipe: Optional["Recipe"]  # the run's own recipe, else --recipe's (None: a bare model)
    base: Path  # the recipe's relative paths are relative to this
    model_dir: Optional[str]  # the run's final model (None when not asked for), or the model directory


def resolve_target(spec: str, *, recipe: Optional["Recipe"], recipe_from: Optional[str] = None, option: str = "",
                   final_model: bool = True) -> Target:
    """A run directory (its final model and resolved recipe; a given `recipe` is ignored, with a
    warning) or a model directory (with the given `recipe`, if any). Raises NotARun naming `option`
    (e.g. "--model ") and the fix. `final_model=False` (to serve a run's base model) accepts a run
    that is not finished."""
    path = Path(spec).resolve()
    if not path.exists():
        raise NotARun(f"{option}{spec}: no such run or model directory (it does not exist)")
    run = RunDir(path)
    if run.exists():
        if recipe is not None:
            console.warn(f"--recipe {recipe_from or ''} is ignored: the run directory {spec} brings its own recipe")
        if final_model and not run.final_model:
            info = run.info()
            raise NotARun(f"{path}: the run has no final model yet (status: {info.get('status')}); finish it with "
                          f"`swiftpipe run <recipe> --run-id {info.get('run_id')}`")
        return Target(path, run, run.recipe(), run.base, run.final_model)
    if not (path / "config.json").is_file():
        raise NotARun(f"{option}{spec}: not a run directory (no {RUN_JSON}) nor a model directory (no config.json); "
                      f"pass runs/<recipe>/<run-id> or a merged model directory")
    return Target(path, None, recipe, Path.cwd(), str(path))
