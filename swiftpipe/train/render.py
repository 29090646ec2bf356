"""Render a recipe into the exact `swift sft` / `swift export` command lines.

Pure functions: no swift or torch import. The installed ms-swift's version is read from package
metadata so flag names follow it (3.x `--train_type`, 4.x `--tuner_type`); 4.x when it is absent.
"""

from __future__ import annotations

import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core.shell import Command, cli_flags
from swiftpipe.recipe.derived import absolute, device_is_cpu, model_ref, visible_devices
from swiftpipe.recipe.schema import Recipe

# The export command reads the checkpoint that sft reports in the summary line of logging.jsonl,
# so commands.sh is re-runnable as a script, the same way the runner finds it.
LAST_CHECKPOINT_SNIPPET = (
    "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])"
    "['last_model_checkpoint'])"
)


def swift_version() -> Optional[str]:
    try:
        return metadata.version("ms-swift")
    except metadata.PackageNotFoundError:
        return None


def swift_major(version: Optional[str]) -> int:
    if not version:
        return 4
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 4


def stage_env(recipe: Recipe, *, cpu: bool, distributed: bool) -> dict[str, str]:
    hw = recipe.hardware
    env: dict[str, str] = {}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif hw.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(hw.gpus)
    if distributed:
        if hw.processes_per_node > 1 or hw.nnodes > 1:
            env["NPROC_PER_NODE"] = str(hw.processes_per_node)
        if hw.nnodes > 1:
            env.update(
                NNODES=str(hw.nnodes),
                NODE_RANK=str(hw.node_rank),
                MASTER_ADDR=hw.master_addr,
                MASTER_PORT=str(hw.master_port),
            )
    if recipe.model.is_local:
        # A local model needs no hub; make any stray lookup fail fast instead of hanging.
        env.update(USE_HF="1", HF_HUB_OFFLINE="1")
    elif recipe.model.hub == "huggingface":
        env["USE_HF"] = "1"
    return env


def _model_args(recipe: Recipe, base: Path) -> dict[str, Any]:
    m = recipe.model
    return {
        "model": model_ref(recipe, base),
        "model_type": m.model_type,
        "template": m.template,
        "torch_dtype": m.torch_dtype if m.torch_dtype != "auto" else None,
        # check_model contacts the hub to compare revisions: pointless (and slow offline) locally.
        "check_model": False if m.is_local else None,
    }


def render_sft(
    recipe: Recipe,
    run_dir: Path,
    *,
    base: Path,
    version: Optional[str] = None,
    gpu_count: Optional[int] = None,
    resume_from: Optional[str] = None,
) -> Command:
    t, lora, d = recipe.train, recipe.lora, recipe.data
    cpu = device_is_cpu(recipe, gpu_count)
    tuner_flag = "train_type" if swift_major(version) < 4 else "tuner_type"
    args: dict[str, Any] = _model_args(recipe, base)
    args |= {
        # One or several JSONL files: `--dataset a.jsonl b.jsonl` (ms-swift concatenates them; with
        # split_dataset_ratio each one gives its share of validation rows).
        "dataset": [absolute(f, base) for f in d.train_files()],
        "val_dataset": absolute(d.val, base) if d.val else None,
        "split_dataset_ratio": d.split_ratio,
        "system": d.system_prompt,
        tuner_flag: "full" if t.tuner == "full" else "lora",
    }
    if t.tuner != "full":
        args |= {
            "lora_rank": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": lora.target_modules,
        }
    if t.tuner == "qlora":
        args |= {"quant_method": "bnb", "quant_bits": 4}
    args |= {
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.eval_batch_size or t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.lr,
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "max_length": t.max_length,
        "warmup_ratio": t.warmup_ratio,
        "save_steps": t.save_steps,
        "eval_steps": t.eval_steps or t.save_steps,
        "save_total_limit": t.save_total_limit,
        "logging_steps": t.logging_steps,
        "seed": t.seed,
        "data_seed": t.seed,
        "report_to": t.report_to,
        "gradient_checkpointing": t.gradient_checkpointing,
        "deepspeed": t.deepspeed,
        "ddp_backend": recipe.hardware.ddp_backend,
        "dataloader_num_workers": t.dataloader_num_workers,
        "use_cpu": True if cpu else None,
        "output_dir": str(run_dir / "train"),
        # A fixed training dir (no v0-<timestamp> subdir) so reruns and resumes find it.
        "add_version": False,
        "resume_from_checkpoint": resume_from,
    }
    args |= t.extra_args
    return Command(
        stage="sft",
        argv=["swift", "sft", *cli_flags(args)],
        env=stage_env(recipe, cpu=cpu, distributed=True),
    )


def render_export(
    recipe: Recipe,
    run_dir: Path,
    *,
    base: Path,
    checkpoint: Optional[str] = None,
    gpu_count: Optional[int] = None,
) -> Optional[Command]:
    """The LoRA merge; None when there is nothing to merge (full fine-tuning, merge_lora off)."""
    if not recipe.merges:
        return None
    prelude = []
    if checkpoint is None:
        log = run_dir / "train" / "logging.jsonl"
        prelude = [
            f"LAST_CHECKPOINT=$(python3 -c {shlex.quote(LAST_CHECKPOINT_SNIPPET)} "
            f"{shlex.quote(str(log))})"
        ]
        checkpoint = '"$LAST_CHECKPOINT"'
    args = {
        "adapters": checkpoint,
        "merge_lora": True,
        "output_dir": str(run_dir / "merged"),
        # Re-merging over an earlier (possibly partial) merge must not fail.
        "exist_ok": True,
        "torch_dtype": recipe.model.torch_dtype if recipe.model.torch_dtype != "auto" else None,
    }
    cpu = device_is_cpu(recipe, gpu_count)
    return Command(
        stage="export",
        argv=["swift", "export", *cli_flags(args)],
        env=stage_env(recipe, cpu=cpu, distributed=False),
        prelude=prelude,
    )


def render_all(recipe: Recipe, run_dir: Path, *, base: Path, gpu_count: Optional[int]) -> list[Command]:
    version = swift_version()
    commands = []
    if recipe.model.tiny:
        model_dir = absolute(recipe.model.id, base)
        commands.append(Command(
            stage="model",
            argv=["swiftpipe", "tiny-model", model_dir],
            skip_if_exists=f"{model_dir}/config.json",
        ))
    commands += [render_sft(recipe, run_dir, base=base, version=version, gpu_count=gpu_count)]
    export = render_export(recipe, run_dir, base=base, gpu_count=gpu_count)
    if export:
        commands.append(export)
    return commands


def commands_script(commands: list[Command], header: str = "") -> str:
    lines = ["#!/usr/bin/env bash", "# Re-runnable: the exact commands swiftpipe ran, in order.", "set -euo pipefail"]
    if header:
        lines += [f"# {line}" for line in header.splitlines()]
    for cmd in commands:
        lines += ["", f"# --- stage: {cmd.stage}", cmd.shell()]
    return "\n".join(lines) + "\n"
