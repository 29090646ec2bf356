"""`swiftpipe compare RUN_A RUN_B`: parameter and metric diff, flipped examples, a PNG of both runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.jsonl import write_atomic
from swiftpipe.evaluation import leaderboard as runs
from swiftpipe.evaluation.evaluate import read_records
from swiftpipe.evaluation.reports import mcnemar_line, pct
from swiftpipe.recipe.explain import format_value
from swiftpipe.recipe.rundir import NotARun, RunDir


class CompareError(SwiftpipeError):
    pass


def check_run(run: Path) -> Path:
    try:
        return RunDir.open(run).path
    except NotARun as exc:
        raise CompareError(str(exc)) from None


def param_diff(a: Path, b: Path) -> list[tuple[str, Any, Any]]:
    pa, pb = runs.params(a), runs.params(b)
    return [(k, pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb))
            if k not in runs.LOCATION_KEYS and pa.get(k) != pb.get(k)]


def _param(value: Any) -> Any:
    """A parameter as a recipe writes it: a list (data.train with several files) as [a.jsonl, b.jsonl]."""
    return format_value(value) if isinstance(value, list) else value


def _records(run: Path) -> dict[str, dict]:
    out = RunDir(run).eval_dir("finetuned")
    return {r["key"]: r for r in read_records(out)} if (out / "predictions.jsonl").exists() else {}


def flipped(a: Path, b: Path) -> list[tuple[dict, dict]]:
    """(record in A, record in B) for the test rows whose exact-match outcome differs."""
    ra, rb = _records(a), _records(b)
    return [(ra[k], rb[k]) for k in ra if k in rb and ra[k]["correct"] != rb[k]["correct"]]


def comparison(a: Path, b: Path, *, examples: int = 20) -> str:
    a, b = check_run(a), check_run(b)
    status = {run: RunDir(run).status() for run in (a, b)}
    lines = [f"# {a.name} vs {b.name}", "", f"- A: {a} ({status[a]})", f"- B: {b} ({status[b]})", "",
             "## Parameters that differ", ""]
    diff = param_diff(a, b)
    lines += ["| parameter | A | B |", "|---|---|---|"] + [f"| {k} | {_param(va)} | {_param(vb)} |" for k, va, vb in diff] \
        if diff else ["(none: same resolved recipe)"]
    ma, mb = RunDir(a).metrics() or {}, RunDir(b).metrics() or {}
    lines += ["", "## Metrics", "", "| metric | A | B | B − A |", "|---|---|---|---|"]
    rows: list[tuple[str, Optional[float], Optional[float]]] = [("exact match", ma.get("exact_match"), mb.get("exact_match"))]
    if ma.get("ner") or mb.get("ner"):
        rows.append(("NER micro F1", (ma.get("ner") or {}).get("micro", {}).get("f1"),
                     (mb.get("ner") or {}).get("micro", {}).get("f1")))
    for field in sorted(set(ma.get("per_field", {})) | set(mb.get("per_field", {}))):
        rows.append((f"field: {field}", ma.get("per_field", {}).get(field), mb.get("per_field", {}).get(field)))
    for name, va, vb in rows:
        delta = f"{100 * (vb - va):+.1f} pt" if va is not None and vb is not None else "–"
        lines.append(f"| {name} | {pct(va)} | {pct(vb)} | {delta} |")
    flips = flipped(a, b)
    to_b = sum(1 for _, rb in flips if rb["correct"])
    lines += ["", f"## Flipped examples: {len(flips)} ({to_b} right only in B, {len(flips) - to_b} right only in A)", "",
              f"B fixes {to_b}, breaks {len(flips) - to_b}: {mcnemar_line(len(flips) - to_b, to_b)}.", ""]
    for ra, rb in flips[:examples]:
        lines += [f"- input: {ra['input']}", f"  - gold: {json.dumps(ra['gold'], ensure_ascii=False)}",
                  f"  - A ({'right' if ra['correct'] else 'wrong'}): {json.dumps(ra['prediction'], ensure_ascii=False)}",
                  f"  - B ({'right' if rb['correct'] else 'wrong'}): {json.dumps(rb['prediction'], ensure_ascii=False)}"]
    return "\n".join(lines) + "\n"


def plot(a: Path, b: Path, out: Path) -> None:
    """Loss curves of both runs and their per-field accuracy, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for run, color in ((a, "#4477aa"), (b, "#ee6677")):
        curve = runs.loss_curve(run)
        if curve:
            left.plot(*zip(*curve), label=run.name, color=color)
    left.set_title("training loss")
    left.set_xlabel("step")
    left.legend()
    fields = sorted(set((RunDir(a).metrics() or {}).get("per_field", {})) | set((RunDir(b).metrics() or {}).get("per_field", {})))
    width = 0.4
    for i, (run, color) in enumerate(((a, "#4477aa"), (b, "#ee6677"))):
        per_field = (RunDir(run).metrics() or {}).get("per_field", {})
        right.bar([x + (i - 0.5) * width for x in range(len(fields))], [per_field.get(f, 0) for f in fields],
                  width, label=run.name, color=color)
    right.set_xticks(range(len(fields)), fields, rotation=30, ha="right")
    right.set_ylim(0, 1.05)
    right.set_title("per-field accuracy")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def compare(a: Path, b: Path, out_dir: Optional[Path]) -> tuple[str, Path]:
    text = comparison(a, b)
    out_dir = out_dir or a.parent / "compare" / f"{a.name}-vs-{b.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "compare.md", text)
    plot(a, b, out_dir / "compare.png")
    return text, out_dir
