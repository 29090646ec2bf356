"""`swiftpipe reproduce RUN_DIR`: rerun a run from its resolved recipe beside it and check that the
metrics agree (within a tolerance), warning about package versions that changed since."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from swiftpipe.core import console, envinfo, procs
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.evaluation.compare import check_run
from swiftpipe.evaluation.reports import pct
from swiftpipe.recipe.rundir import RunDir


class ReproduceError(SwiftpipeError):
    pass


def reproduce(run: Path, *, run_id: Optional[str], tolerance: float, echo=console.say) -> int:
    """Rerun `run` from its resolved recipe into a sibling run directory; 0 when the metrics agree."""
    run = check_run(run)
    original = RunDir(run)
    for line in envinfo.version_drift(original.env()):
        echo(f"warning: version drift since the run (then → now): {line}")
    run_id = run_id or f"{run.name}-repro-{time.strftime('%Y%m%d-%H%M%S')}"
    # The resolved recipe has every default filled in; the root is the original run's root so that
    # the reproduction lands beside it. Relative paths resolve against the original working directory.
    cwd = str(original.base) if original.info().get("cwd") else str(Path.cwd())
    root = run.parent.parent
    echo(f"reproducing {run} as {root / run.parent.name / run_id}")
    log = root / run.parent.name / f"{run_id}.reproduce.log"
    echo(f"  (its output: {log})")
    code = procs.call([sys.executable, "-m", "swiftpipe.cli", "run", str(original.resolved), f"output.root={root}",
                       f"name={run.parent.name}", "--run-id", run_id], {}, log, cwd=Path(cwd), grace=30)
    if code:
        raise ReproduceError(f"the reproduction run failed (exit {code}); see {root / run.parent.name / run_id}/logs")
    new = root / run.parent.name / run_id
    before, after = original.metrics() or {}, RunDir(new).metrics() or {}
    if "exact_match" not in before or "exact_match" not in after:
        echo("no eval metrics to compare (eval disabled or data.test unset); the run itself reproduced")
        return 0
    worst = 0.0
    lines = ["| metric | original | reproduced | difference |", "|---|---|---|---|"]
    pairs = [("exact_match", before["exact_match"], after["exact_match"])]
    pairs += [(f"field.{k}", v, after.get("per_field", {}).get(k)) for k, v in before.get("per_field", {}).items()]
    for name, va, vb in pairs:
        delta = abs((vb or 0) - (va or 0))
        worst = max(worst, delta)
        over = " **over tolerance**" if delta > tolerance else ""
        lines.append(f"| {name} | {pct(va)} | {pct(vb)} | {100 * delta:.1f} pt{over} |")
    echo("\n".join(lines))
    verdict = "reproduced" if worst <= tolerance else "NOT reproduced"
    echo(f"{verdict}: largest difference {100 * worst:.1f} pt, tolerance {100 * tolerance:.1f} pt ({new})")
    return 0 if worst <= tolerance else 1
