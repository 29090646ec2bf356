"""`swiftpipe sweep RECIPE lora.rank=8,16 train.lr=1e-4,2e-4`: a grid of normal runs.

Each point is `swiftpipe run RECIPE <its overrides> --run-id <sweep id>-<point>` in a child process,
so a point that fails is recorded (with its log) and the sweep goes on. The sweep's state is
<root>/<recipe name>/sweeps/<sweep id>.json; rerunning with the same --sweep-id skips the points
whose run finished and resumes the others from their last finished stage.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from swiftpipe.core import console, procs
from swiftpipe.core.errors import RecipeError, SwiftpipeError
from swiftpipe.core.jsonl import read_json, write_json
from swiftpipe.recipe.derived import absolute
from swiftpipe.recipe.rundir import RunDir


def split_values(text: str) -> list[str]:
    """Split at top-level commas: "8,16" → ["8", "16"]; "[q_proj,v_proj],[all-linear]" → two lists."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values]


def parse_axes(specs: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise RecipeError(f"sweep axis {spec!r}: expected KEY=V1,V2,... such as lora.rank=8,16")
        axes.append((key.strip(), split_values(values)))
    return axes


SLUG_MAX = 24


def slug(value: str) -> str:
    """A value as a readable piece of a run id: kept when short and plain, else shortened with a hash
    of the whole value, so that distinct values never share a slug."""
    plain = re.sub(r"[^A-Za-z0-9.+-]", "", value.replace("/", "-"))
    if plain and len(plain) <= SLUG_MAX and plain == value:
        return plain
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    return f"{plain[:SLUG_MAX - 9]}~{digest}" if plain else digest


def points(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def point_id(sweep_id: str, point: dict[str, str], varying: list[str]) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}{slug(point[key])}" for key in varying]
    return "-".join([sweep_id, *parts]) if parts else sweep_id


def point_ids(sweep_id: str, grid: list[dict[str, str]], varying: list[str]) -> list[str]:
    """One run id per point; refuses a grid in which two points would share a run directory."""
    ids = [point_id(sweep_id, point, varying) for point in grid]
    seen: dict[str, dict[str, str]] = {}
    for point, run_id in zip(grid, ids):
        if run_id in seen:
            raise RecipeError(f"sweep points {seen[run_id]} and {point} map to the same run id '{run_id}'; "
                              f"remove the repeated value from the axis")
        seen[run_id] = point
    return ids


def run_sweep(recipe_path: str, axes_specs: tuple[str, ...], *, sweep_id: Optional[str], dry_run: bool,
              echo=console.say) -> tuple[Path, list[str]]:
    """Run (or resume) the grid; returns the recipe's run root and the points' run ids."""
    from swiftpipe.recipe.load import load_recipe

    axes = parse_axes(axes_specs)
    grid = points(axes)
    # Every point must be a valid recipe before anything runs.
    problems, loaded = [], None
    for point in grid:
        try:
            point_recipe = load_recipe(recipe_path, [f"{k}={v}" for k, v in point.items()])
            loaded = loaded or point_recipe
        except RecipeError as exc:
            problems.append(f"{point}: {exc}")
    if problems or loaded is None:
        raise RecipeError("sweep points that are not valid recipes:\n" + "\n".join(problems))
    # Root and name as the points see them (a fixed axis such as output.root=... applies to all).
    root = Path(absolute(loaded.recipe.output.root, Path.cwd())) / loaded.name
    sweep_id = sweep_id or time.strftime("sweep-%Y%m%d-%H%M%S")
    state_path = root / "sweeps" / f"{sweep_id}.json"
    state = read_json(state_path) or {"recipe": recipe_path, "axes": axes_specs, "points": {}}
    if list(state["axes"]) != list(axes_specs):
        raise SwiftpipeError(f"sweep '{sweep_id}' was started with axes {list(state['axes'])}; rerun it with "
                             f"those, or pick a new --sweep-id")
    varying = [k for k, values in axes if len(values) > 1]
    echo(f"sweep {sweep_id}: {len(grid)} points of {recipe_path} (state: {state_path})")
    console.resume_hint("resume with `" + shlex.join(["swiftpipe", "sweep", recipe_path, *axes_specs, "--sweep-id", sweep_id])
                        + "`: finished points are skipped, the interrupted one resumes")
    run_ids = point_ids(sweep_id, grid, varying)
    for number, (point, run_id) in enumerate(zip(grid, run_ids), 1):
        overrides = [f"{k}={v}" for k, v in point.items()]
        run_dir = root / run_id
        label = f"[{number}/{len(grid)}] {' '.join(overrides)} → {run_dir}"
        if dry_run:
            echo(f"{label}\n    {' '.join(['swiftpipe', 'run', recipe_path, *overrides, '--run-id', run_id])}")
            continue
        if RunDir(run_dir).info().get("status") == "done":
            echo(f"{label}: done earlier, skipped")
            state["points"][run_id] = {"overrides": overrides, "status": "done"}
            continue
        echo(f"{label}: running")
        log = root / "sweeps" / sweep_id / f"{run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        state["points"][run_id] = {"overrides": overrides, "status": "running", "log": str(log)}
        write_json(state_path, state)
        started = time.monotonic()
        try:
            # Its own process group under a guard: it stops with the sweep however the sweep dies, and
            # gets time (grace) to stop its own trainers and servers first.
            code = procs.call([sys.executable, "-m", "swiftpipe.cli", "run", recipe_path, *overrides,
                               "--run-id", run_id], {}, log, grace=30)
        except KeyboardInterrupt:
            state["points"][run_id].update(status="interrupted")
            write_json(state_path, state)
            raise
        seconds = round(time.monotonic() - started, 1)
        if code == 130 or code < 0:
            state["points"][run_id].update(status="interrupted")
            write_json(state_path, state)
            raise KeyboardInterrupt
        status = "done" if code == 0 else "failed"
        state["points"][run_id].update(status=status, exit_code=code, seconds=seconds)
        write_json(state_path, state)
        if code:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-8:])
            echo(f"    failed (exit {code}, {seconds}s); log: {log}\n    " + tail.replace("\n", "\n    "))
        else:
            echo(f"    done in {seconds}s")
    if not dry_run:
        failed = [r for r, p in state["points"].items() if p["status"] != "done"]
        echo(f"sweep {sweep_id}: {len(grid) - len(failed)} of {len(grid)} points done"
             + (f"; failed: {', '.join(failed)} (rerun with --sweep-id {sweep_id} to retry them)" if failed else ""))
    return root, run_ids


def sweep_command(recipe: str, axes: tuple[str, ...], *, sweep_id: Optional[str], dry_run: bool) -> None:
    """`swiftpipe sweep`: run the grid, then show the leaderboard of its points."""
    from swiftpipe.evaluation import leaderboard

    root, run_ids = run_sweep(recipe, axes, sweep_id=sweep_id, dry_run=dry_run)
    if dry_run:
        return
    frame = leaderboard.leaderboard(root)
    console.say(leaderboard.render(frame[frame["run"].str.rsplit("/", n=1).str[-1].isin(run_ids)], "table").rstrip())
