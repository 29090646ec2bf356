"""What `swiftpipe run` checks before anything starts: the data files (each bad row named by
file:line, under its recipe key), the model, a GPU-sized recipe about to train on a CPU, and, for a
hub model that is not cached, that the hub answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from swiftpipe.core import envinfo, jsonl
from swiftpipe.core.errors import RecipeError
from swiftpipe.recipe.derived import absolute
from swiftpipe.recipe.schema import Recipe
from swiftpipe.task import messages
from swiftpipe.train import hub
from swiftpipe.train.stages import active, evaluates

if TYPE_CHECKING:
    from swiftpipe.train.pipeline import RunPlan

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


def input_problems(p: "RunPlan") -> list[str]:
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


def cpu_problems(p: "RunPlan") -> list[str]:
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


def check_inputs(p: "RunPlan") -> None:
    """Fail before any stage when an input is missing; then, for a hub model that is not cached,
    fail in seconds when the hub cannot be reached."""
    problems = input_problems(p)
    if problems:
        raise RecipeError(f"{p.loaded.path}: cannot start:\n" + "\n".join(f"  - {x}" for x in problems))
    model = p.loaded.recipe.model
    if not model.is_local and "sft" in [s.name for s in active(p)]:
        hub.check_reachable(model.id, model.hub)
