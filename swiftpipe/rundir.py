"""The run directory: `<output.root>/<recipe name>/<run id>/`, self-describing and resumable.

    recipe.yaml      the recipe as written          resolved.yaml  defaults + overrides applied
    run.json         overrides, stage status, paths env.json       versions, git, host, GPUs, seed
    commands.sh      re-runnable commands           logs/<stage>.log
    train/           swift's training dir           merged/        the merged model (LoRA)
    stages/<stage>.done   completion markers (JSON: when, outputs)
    run.lock         held by the process working on the run (released by the OS when it dies)
    logs/run.log     swiftpipe's own account: stage starts and ends, failures, the resume command
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swiftpipe.jsonl import read_json, write_json

# The stages of `swiftpipe run`, in order.
STAGES = ["model", "sft", "export", "eval", "eval-base", "report"]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def merged_dir(self) -> Path:
        return self.path / "merged"

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

    def latest_checkpoint(self) -> Optional[Path]:
        """The highest-numbered complete checkpoint in train/ (for resuming an interrupted sft)."""
        best: tuple[int, Optional[Path]] = (-1, None)
        for ckpt in self.train_dir.glob("checkpoint-*"):
            step = ckpt.name.rpartition("-")[2]
            # trainer_state.json is written last: without it the checkpoint is partial.
            if step.isdigit() and (ckpt / "trainer_state.json").exists() and int(step) > best[0]:
                best = (int(step), ckpt)
        return best[1]
