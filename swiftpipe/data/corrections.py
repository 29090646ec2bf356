"""`swiftpipe data corrections`: reviewed answers from the gateway's database → ms-swift training rows.

Each reviewed request becomes a `messages` row: the version's system prompt (as its recipe had
it when it was served), the text, and the right answer (corrected, or confirmed as it was) as
compact JSON. Texts reviewed more than once keep their latest review. `--holdout` splits off a
seeded share for evaluating the next version on corrections it was not trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.gateway import store
from swiftpipe.recipe.task import Task
from swiftpipe.task import messages


def reviewed(db: str, *, version: Optional[str] = None, since: Optional[str] = None) -> list[dict[str, Any]]:
    """The latest review of each reviewed text, oldest first."""
    from swiftpipe.gateway.request_log import filters

    where, params = filters(version=version, since=since, since_column="f.ts")  # reviews since
    where += ["r.input IS NOT NULL", "r.input != ''"]
    conn = store.connect(Path(db), create=False)
    try:
        rows = conn.execute(
            "SELECT r.id, r.version, r.input, r.fields AS answer, f.verdict, f.fields AS right, f.ts, t.task "
            "FROM feedback f JOIN requests r ON r.id = f.request_id LEFT JOIN tasks t ON t.version = r.version "
            f"WHERE {' AND '.join(where)} ORDER BY f.ts", params).fetchall()
    finally:
        conn.close()
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        task = Task.from_stored(json.loads(row["task"]) if row["task"] else None)
        latest[row["input"]] = {"id": row["id"], "version": row["version"], "text": row["input"],
                                "answer": json.loads(row["answer"]) if row["answer"] else None,
                                "right": json.loads(row["right"]), "verdict": row["verdict"],
                                "system": task.system_prompt}
    return list(latest.values())


def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """How many were corrected and confirmed, and which fields the corrections changed."""
    changed: dict[str, int] = {}
    for item in items:
        if item["verdict"] != "corrected" or not isinstance(item["right"], dict):
            continue
        before = item["answer"] if isinstance(item["answer"], dict) else {}
        for name in sorted(set(item["right"]) | set(before)):
            if item["right"].get(name) != before.get(name):
                changed[name] = changed.get(name, 0) + 1
    return {"rows": len(items), "corrected": sum(i["verdict"] == "corrected" for i in items),
            "confirmed": sum(i["verdict"] == "correct" for i in items), "fields_corrected": changed}


def export(db: str, out: str, *, version: Optional[str], since: Optional[str], holdout: float,
           holdout_out: Optional[str], seed: int) -> dict[str, Any]:
    if not 0 <= holdout < 1:
        raise SwiftpipeError(f"--holdout must be from 0 to below 1 (got {holdout})")
    if holdout and not holdout_out:
        raise SwiftpipeError("--holdout needs --holdout-out FILE for the held-out rows")
    items = reviewed(db, version=version, since=since)
    if not items:
        raise SwiftpipeError(f"{db}: no reviewed requests{' of version ' + version if version else ''}"
                             f"{' since ' + since if since else ''}; review answers in the gateway's /review page "
                             f"or POST /v1/feedback first")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_holdout = round(len(items) * holdout)
    held = sorted(order[:n_holdout])
    kept = sorted(order[n_holdout:])
    rows = lambda picks: [messages.build(items[i]["system"], items[i]["text"], items[i]["right"]) for i in picks]
    written = jsonl.write_lines(out, rows(kept))
    result = {**summary(items), "out": out, "written": written}
    if holdout_out:
        result["holdout_out"], result["holdout"] = holdout_out, jsonl.write_lines(holdout_out, rows(held))
    return result


def corrections_command(db: str, out: str, *, version: Optional[str], since: Optional[str], holdout: float,
                        holdout_out: Optional[str], seed: int) -> None:
    result = export(db, out, version=version, since=since, holdout=holdout, holdout_out=holdout_out, seed=seed)
    console.say(f"{result['rows']} reviewed texts: {result['corrected']} corrected, {result['confirmed']} confirmed")
    if result["fields_corrected"]:
        fields = ", ".join(f"{name} {n}" for name, n in sorted(result["fields_corrected"].items(), key=lambda x: -x[1]))
        console.say(f"fields corrected: {fields}")
    console.say(f"wrote {result['written']} rows to {out}"
                + (f", {result['holdout']} held out to {holdout_out}" if holdout_out else ""))
