"""`swiftpipe data corrections`: reviewed answers from the gateway's database → ms-swift training rows.

Each reviewed request becomes a `messages` row: the version's system prompt (as its recipe had
it when it was served), the text, and the right answer (corrected, or confirmed as it was) as
compact JSON. Texts reviewed more than once keep their latest review. `--holdout` splits off a
seeded share for evaluating the next version on corrections it was not trained on.

Only reviews made with reviewer and admin keys count (a client key cannot review; reviews of keys
since deleted or demoted do not count either), or only those of the keys `--reviewer` names; the
summary says who reviewed how many.
"""

from __future__ import annotations

import json
import random
from typing import Any, Optional

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.gateway import store
from swiftpipe.recipe.task import Task
from swiftpipe.task import messages

REVIEWER_ROLES = ("reviewer", "admin")


def reviewed(db: str, *, version: Optional[str] = None, since: Optional[str] = None,
             reviewers: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The latest review of each reviewed text (by a reviewer or admin key, or by the keys named
    in `reviewers`), oldest first."""
    from swiftpipe.gateway.request_log import filters

    where, params = filters(version=version, since=since, since_column="f.ts")  # reviews since
    where += ["r.input IS NOT NULL", "r.input != ''", f"k.role IN ({', '.join('?' * len(REVIEWER_ROLES))})"]
    params += list(REVIEWER_ROLES)
    if reviewers:
        where.append(f"k.name IN ({', '.join('?' * len(reviewers))})")
        params += reviewers
    conn = store.connect(db, create=False)
    try:
        if reviewers:
            known = {r["name"] for r in conn.execute("SELECT name FROM keys")}
            unknown = [r for r in reviewers if r not in known]
            if unknown:
                raise SwiftpipeError(f"--reviewer {', '.join(unknown)}: no key of that name in {db}; keys: "
                                     f"{', '.join(sorted(known)) or 'none'}")
        rows = conn.execute(
            "SELECT r.id, r.version, r.input, r.fields AS answer, f.verdict, f.fields AS right, f.ts, t.task, "
            "k.name AS reviewer FROM feedback f JOIN requests r ON r.id = f.request_id "
            "JOIN keys k ON k.id = f.key_id LEFT JOIN tasks t ON t.version = r.version "
            f"WHERE {' AND '.join(where)} ORDER BY f.ts", params).fetchall()
    finally:
        conn.close()
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        task = Task.from_stored(json.loads(row["task"]) if row["task"] else None)
        latest[row["input"]] = {"id": row["id"], "version": row["version"], "text": row["input"],
                                "answer": json.loads(row["answer"]) if row["answer"] else None,
                                "right": json.loads(row["right"]), "verdict": row["verdict"],
                                "system": task.system_prompt, "reviewer": row["reviewer"]}
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
    by: dict[str, int] = {}
    for item in items:
        by[item["reviewer"]] = by.get(item["reviewer"], 0) + 1
    return {"rows": len(items), "corrected": sum(i["verdict"] == "corrected" for i in items),
            "confirmed": sum(i["verdict"] == "correct" for i in items), "fields_corrected": changed,
            "reviewers": dict(sorted(by.items(), key=lambda x: -x[1]))}


def _no_reviews(db: str, version: Optional[str], since: Optional[str]) -> str:
    """Why there is nothing to export, in words."""
    conn = store.connect(db, create=False)
    try:
        reviews = conn.execute("SELECT count(*) FROM feedback").fetchone()[0]
        textless = conn.execute("SELECT count(*) FROM feedback f JOIN requests r ON r.id = f.request_id "
                                "WHERE r.input IS NULL").fetchone()[0]
    finally:
        conn.close()
    scope = f"{' of version ' + version if version else ''}{' since ' + since if since else ''}"
    if reviews and textless == reviews:
        return (f"{db}: the reviewed requests{scope} kept no text (the gateway ran with --log-content none): "
                f"there are no training rows to make")
    return (f"{db}: no reviewed requests{scope} by a reviewer or admin key; review answers in the gateway's "
            f"/review page or POST /v1/feedback first")


def export(db: str, out: str, *, version: Optional[str], since: Optional[str], holdout: float,
           holdout_out: Optional[str], seed: int, reviewers: Optional[list[str]] = None) -> dict[str, Any]:
    if not 0 <= holdout < 1:
        raise SwiftpipeError(f"--holdout must be from 0 to below 1 (got {holdout})")
    if holdout and not holdout_out:
        raise SwiftpipeError("--holdout needs --holdout-out FILE for the held-out rows")
    items = reviewed(db, version=version, since=since, reviewers=reviewers)
    if not items:
        raise SwiftpipeError(_no_reviews(db, version, since))
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
                        holdout_out: Optional[str], seed: int, reviewers: Optional[list[str]] = None) -> None:
    result = export(db, out, version=version, since=since, holdout=holdout, holdout_out=holdout_out, seed=seed,
                    reviewers=reviewers)
    console.say(f"{result['rows']} reviewed texts: {result['corrected']} corrected, {result['confirmed']} confirmed")
    console.say("reviewed by: " + ", ".join(f"{name} {n}" for name, n in result["reviewers"].items()))
    if result["fields_corrected"]:
        fields = ", ".join(f"{name} {n}" for name, n in sorted(result["fields_corrected"].items(), key=lambda x: -x[1]))
        console.say(f"fields corrected: {fields}")
    console.say(f"wrote {result['written']} rows to {out}"
                + (f", {result['holdout']} held out to {holdout_out}" if holdout_out else ""))
