"""What follows from a recipe beyond its keys, wherever it is needed (training, serving, batch
extraction): where its model and files are, whether it runs on the CPU, which GPUs it sees, the
context length its server needs and what its vLLM server serves. Pure functions, no heavy imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from swiftpipe.core.errors import RecipeError, SwiftpipeError
from swiftpipe.core.vllm_server import ServeTarget
from swiftpipe.recipe.schema import Recipe


def absolute(path: str, base: Path) -> str:
    """A path of the recipe, resolved against `base` (the directory swiftpipe runs from) when relative."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def model_ref(recipe: Recipe, base: Path) -> str:
    """What the recipe's model is loaded from: an absolute directory, or its hub id."""
    return absolute(recipe.model.id, base) if recipe.model.is_local else recipe.model.id


def device_is_cpu(recipe: Recipe, gpu_count: Optional[int]) -> bool:
    """Whether the recipe trains and serves on the CPU (hardware.device, else: no GPU visible)."""
    if recipe.hardware.device == "cpu":
        return True
    if recipe.hardware.device == "cuda":
        return False
    return not gpu_count


def visible_devices(gpus: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the recipe's `hardware.gpus` indices.

    When CUDA_VISIBLE_DEVICES is already set (a scheduler's GPU UUIDs or MIG ids, say), the
    indices pick from that list, as CUDA numbers the visible devices: `gpus: [0]` with
    CUDA_VISIBLE_DEVICES=GPU-8f3c... keeps GPU-8f3c..., never the machine's physical GPU 0.
    """
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer is None:
        return ",".join(str(g) for g in gpus)
    entries = [e.strip() for e in outer.split(",") if e.strip()]
    missing = [g for g in gpus if g >= len(entries)]
    if missing:
        raise RecipeError(
            f"hardware.gpus {gpus}: index {missing[0]} is out of range: CUDA_VISIBLE_DEVICES={outer!r} makes "
            f"{len(entries)} device(s) visible, numbered from 0; set hardware.gpus to indices into that list"
        )
    return ",".join(entries[g] for g in gpus)


def context_length(recipe: Recipe) -> int:
    """The context a server of the recipe's model needs: serve.max_model_len, else the longest
    training row (train.max_length) plus the longest answer asked for (eval.max_tokens)."""
    return recipe.serve.max_model_len or recipe.train.max_length + recipe.eval.max_tokens


def serve_target(recipe: Recipe, model_dir: str, *, served_name: str, cpu: bool,
                 hub: Optional[str] = None) -> ServeTarget:
    """A vLLM server of `model_dir` as the recipe serves it: its GPUs and context length."""
    return ServeTarget(model_dir=model_dir, served_name=served_name, cpu=cpu, hub=hub,
                       visible_devices=visible_devices(recipe.hardware.gpus) if recipe.hardware.gpus is not None else None,
                       max_model_len=context_length(recipe))


def run_serve_target(recipe: Recipe, *, which: str, final_model: Optional[str], base: Path, run_name: str,
                     cpu: bool) -> ServeTarget:
    """What a run serves: its final model (which="finetuned") or the recipe's base model
    (which="base", named "<name>-base", from the hub when the recipe names a hub id)."""
    name = recipe.serve.served_model_name or run_name
    if which == "finetuned":
        if not final_model:
            raise SwiftpipeError(f"the run has no final model yet; finish its training first (recipe {run_name})")
        return serve_target(recipe, final_model, served_name=name, cpu=cpu)
    hub = None if recipe.model.is_local else recipe.model.hub
    return serve_target(recipe, model_ref(recipe, base), served_name=f"{name}-base", cpu=cpu, hub=hub)
