"""Reviews of answers: corrections and confirmations (`POST /v1/feedback`) and the review queue.
A correction equal to the answer counts as a confirmation. The numbers the dashboard draws are
`gateway.stats`.

The queue asks about the doubtful answers first, and keeps a random audit sample beside them:

- **Audit sample.** When an answer is logged, it is drawn into the audit sample with probability
  `AUDIT_SHARE` (10%), whatever its flags or confidence (`requests.audit`). Of every ten reviews
  the queue hands out, one (the 10th, 20th, ...) is an unreviewed audit answer picked at random,
  marked `"audit": true`. Reviewed audit
  answers are a uniform sample of the traffic, so the share of them a person confirmed estimates
  the version's accuracy without the bias of the ordering (`gateway.stats`).
- **Doubtful first.** The other reviews go to the answers nobody can vouch for, in this order:
  answers that are invalid, name a value not in the text or think aloud (whatever their
  confidence); then by row confidence, lowest first (`task.confidence`); answers without a
  confidence (an upstream without logprobs) after those, flagged ones first, then at random.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Optional

from swiftpipe.gateway.db import Connection, count_if, dialect
from swiftpipe.recipe.task import Task
from swiftpipe.task import flags

AUDIT_SHARE = 0.1  # share of logged answers drawn into the random audit sample, and of reviews spent on it
_rng = random.SystemRandom()


def draw_audit(share: float = AUDIT_SHARE) -> bool:
    """Whether a newly logged answer joins the random audit sample."""
    return _rng.random() < share


class FeedbackError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _answer(row: Any) -> Optional[Any]:
    return json.loads(row["fields"]) if row["fields"] else None


def save(conn: Connection, *, request_id: Any, fields: Any, verdict: Any, task: Optional[Task],
           key_id: str) -> dict:
    """Validate and store one review; raises FeedbackError(400|404) and changes nothing when wrong."""
    if not isinstance(request_id, str) or not request_id:
        raise FeedbackError(400, "'id' must be the id of a request (as /v1/extract or /v1/chat/completions returned it)")
    if (fields is None) == (verdict is None):
        raise FeedbackError(400, "send either 'fields' (the corrected answer) or 'verdict': 'correct', not both or neither")
    row = conn.execute("SELECT id, fields, status, input, content, version FROM requests WHERE id = ?",
                       (request_id,)).fetchone()
    if row is None:
        raise FeedbackError(404, f"no request with id '{request_id}' in the request log")
    if row["status"] != 200:
        raise FeedbackError(400, f"request '{request_id}' was not answered (status {row['status']}): only answered "
                                 f"requests can be reviewed")
    if row["input"] is None:
        raise FeedbackError(400, f"the gateway kept no text of request '{request_id}' (--log-content "
                                 f"{row['content'] or 'none'}): there is nothing to review")
    if task is None or not task.schema:
        raise FeedbackError(400, f"no answer schema is known for version '{row['version']}' (served without a "
                                 f"recipe): its answers cannot be checked, so they cannot be reviewed")
    answer = _answer(row)
    if verdict is not None:
        if verdict != "correct":
            raise FeedbackError(400, f"'verdict' can only be 'correct' (got {verdict!r}); send 'fields' to correct an answer")
        if answer is None:
            raise FeedbackError(400, f"request '{request_id}' has no parsed answer to confirm; send 'fields' instead")
        right = answer
    else:
        if not isinstance(fields, dict):
            raise FeedbackError(400, f"'fields' must be an object of the answer's fields (got {type(fields).__name__})")
        known = task.fields
        unknown = [name for name in fields if name not in known]
        if unknown:
            raise FeedbackError(400, f"fields not in the schema: {', '.join(unknown)}; the fields are {', '.join(known)}")
        checked = flags.check("", json.dumps(fields, ensure_ascii=False), schema=task.schema)
        if checked.problems:
            raise FeedbackError(400, "the corrected answer does not fit the schema: " + "; ".join(checked.problems))
        right = fields
    outcome = "correct" if right == answer else "corrected"
    conn.execute("INSERT INTO feedback (request_id, verdict, fields, key_id, ts) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (request_id) DO UPDATE SET verdict = excluded.verdict, fields = excluded.fields, "
                 "key_id = excluded.key_id, ts = excluded.ts",
                 (request_id, outcome, json.dumps(right, ensure_ascii=False), key_id, time.time()))
    return {"id": request_id, "verdict": outcome, "fields": right}


def _flag_filter(conn: Connection) -> str:
    """The answer has flag :flag (or one of its kind, `flag:detail`)."""
    return (f"EXISTS (SELECT 1 FROM {dialect(conn).json_items('r.flags', 'j')} WHERE j.value = :flag "
            f"OR j.value LIKE :flag || ':%')")


_NOT_IN_TEXT, _THINK_BLOCK = "'\"not_in_text:'", "'\"think_block\"'"  # as they appear in the flags' JSON
_UNFLAGGED = "r.flags = '[]'"


def _hard(conn: Connection) -> str:
    """Answers that are doubtful whatever their confidence: not valid, a value not in the text, a think block."""
    contains = dialect(conn).contains
    return f"(r.valid = 0 OR {contains('r.flags', _NOT_IN_TEXT)} OR {contains('r.flags', _THINK_BLOCK)})"


def next_for_review(conn: Connection, *, version: Optional[str], flag: Optional[str],
                    exclude: list[str]) -> dict:
    """The next answer to review (module docstring): an audit answer when audited reviews would
    otherwise fall below `AUDIT_SHARE` of all reviews, else the most doubtful unreviewed one."""
    where = ["r.status = 200", "r.input IS NOT NULL", "f.request_id IS NULL"]
    params: dict[str, Any] = {}
    if version:
        where.append("r.version = :version")
        params["version"] = version
    if flag:
        where.append(_flag_filter(conn))
        params["flag"] = flag
    if exclude:
        marks = []
        for i, rid in enumerate(exclude[:500]):
            params[f"x{i}"] = rid
            marks.append(f":x{i}")
        where.append(f"r.id NOT IN ({', '.join(marks)})")
    base = "FROM requests r LEFT JOIN feedback f ON f.request_id = r.id WHERE " + " AND ".join(where)
    flagged_n, other_n, audit_n = conn.execute(
        f"SELECT coalesce({count_if('NOT ' + _UNFLAGGED)}, 0), coalesce({count_if(_UNFLAGGED)}, 0), "
        f"coalesce(sum(r.audit), 0) "
        f"{base}", params).fetchone()
    reviewed, audited = conn.execute(
        "SELECT count(*), coalesce(sum(r.audit), 0) FROM feedback f CROSS JOIN requests r ON r.id = f.request_id"
        + (" WHERE r.version = :version" if version else ""), params).fetchone()
    row = None
    if audited < int(AUDIT_SHARE * (reviewed + 1) + 1e-9) and not flag:  # this review is the 10th, 20th, ...
        row = conn.execute(f"SELECT r.* {base} AND r.audit = 1 ORDER BY random() LIMIT 1", params).fetchone()
    if row is None:
        row = conn.execute(
            f"SELECT r.* {base} AND r.audit = 0 ORDER BY {_hard(conn)} DESC, r.row_confidence IS NULL, r.row_confidence, "
            f"r.flags != '[]' DESC, random() LIMIT 1", params).fetchone()
    if row is None:  # only audit answers are left
        row = conn.execute(f"SELECT r.* {base} ORDER BY random() LIMIT 1", params).fetchone()
    remaining = {"flagged": flagged_n, "unflagged": other_n, "audit": audit_n}
    if row is None:
        textless = conn.execute("SELECT 1 FROM requests WHERE status = 200 AND input IS NULL LIMIT 1").fetchone()
        why = {"reason": "the gateway keeps no text of its requests (--log-content none): there is nothing to "
                         "review"} if textless and not conn.execute(
            "SELECT 1 FROM requests WHERE status = 200 AND input IS NOT NULL LIMIT 1").fetchone() else {}
        return {"request": None, "remaining": remaining, **why}
    return {"request": request_view(row), "remaining": remaining}


def request_view(row: Any) -> dict:
    return {"id": row["id"], "version": row["version"], "ts": row["ts"], "endpoint": row["endpoint"],
            "input": row["input"], "fields": _answer(row), "valid": bool(row["valid"]) if row["valid"] is not None else None,
            "flags": json.loads(row["flags"] or "[]"), "latency_ms": row["latency_ms"],
            "confidence": json.loads(row["confidence"]) if row["confidence"] else None,
            "row_confidence": row["row_confidence"], "audit": bool(row["audit"])}
