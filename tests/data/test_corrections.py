"""`swiftpipe data corrections`: reviewed answers from the gateway's database as training rows."""

import json

import pytest

from swiftpipe.gateway import keys, rollout, store
from swiftpipe.recipe.task import Task

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "phone": {"type": "string"},
                                            "city": {"type": "string"}},
          "required": ["name", "phone", "city"], "additionalProperties": False}


def test_corrections_export_dedupes_splits_and_summarises(tmp_path, gateway_db):
    from swiftpipe.core.errors import SwiftpipeError
    from swiftpipe.data.corrections import export
    from swiftpipe.gateway import feedback
    from swiftpipe.task import messages

    db = gateway_db
    conn = store.connect(db)
    rollout.register(conn, [("v1", "x")], None, {"v1": {"system_prompt": "SYS", "schema": SCHEMA}})
    for i in range(10):
        conn.execute("INSERT INTO requests (id, ts, version, endpoint, input, fields, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (f"req_{i}", float(i), "v1", "extract", f"text {i % 8}",
                      json.dumps({"name": "a", "phone": "1", "city": "c"}), 200))
    with pytest.raises(SwiftpipeError, match="no reviewed requests"):
        export(str(db), str(tmp_path / "o.jsonl"), version=None, since=None, holdout=0, holdout_out=None, seed=0)
    ann = keys.create(conn, "ann", role="reviewer")[0]
    bob = keys.create(conn, "bob", role="admin")[0]
    for i in range(10):
        body = {"verdict": "correct"} if i % 3 else {"fields": {"name": "b", "phone": "1", "city": "c"}}
        feedback.save(conn, request_id=f"req_{i}", fields=body.get("fields"), verdict=body.get("verdict"),
                      task=Task(schema=SCHEMA), key_id=(ann if i < 7 else bob).id)
    with pytest.raises(SwiftpipeError, match="--holdout-out"):
        export(str(db), str(tmp_path / "o.jsonl"), version=None, since=None, holdout=0.25, holdout_out=None, seed=0)
    result = export(str(db), str(tmp_path / "o.jsonl"), version="v1", since=None, holdout=0.25,
                    holdout_out=str(tmp_path / "h.jsonl"), seed=3)
    assert result["rows"] == 8  # "text 0" and "text 1" were reviewed twice: the latest review counts
    assert result["written"] == 6 and result["holdout"] == 2
    assert result["fields_corrected"] == {"name": result["corrected"]}
    rows = messages.read(tmp_path / "o.jsonl") + messages.read(tmp_path / "h.jsonl")
    assert sorted(r.user for r in rows) == [f"text {i}" for i in range(8)] and rows[0].system == "SYS"
    again = export(str(db), str(tmp_path / "o2.jsonl"), version="v1", since=None, holdout=0.25,
                   holdout_out=str(tmp_path / "h2.jsonl"), seed=3)
    assert (tmp_path / "h2.jsonl").read_text() == (tmp_path / "h.jsonl").read_text() and again["rows"] == 8
    # Who reviewed how many (the latest review of each text); only the keys asked for, when asked.
    assert result["reviewers"] == {"ann": 5, "bob": 3}
    only_ann = export(str(db), str(tmp_path / "a.jsonl"), version=None, since=None, holdout=0, holdout_out=None,
                      seed=0, reviewers=["ann"])
    assert only_ann["reviewers"] == {"ann": 7} and only_ann["rows"] == 7
    with pytest.raises(SwiftpipeError, match="--reviewer carol: no key of that name"):
        export(str(db), str(tmp_path / "c.jsonl"), version=None, since=None, holdout=0, holdout_out=None, seed=0,
               reviewers=["carol"])


def test_reviews_of_client_keys_never_become_training_rows(tmp_path, gateway_db):
    """A key demoted (or a row written by hand) with a client role: its reviews are not exported."""
    from swiftpipe.core.errors import SwiftpipeError
    from swiftpipe.data.corrections import export

    db = gateway_db
    conn = store.connect(db)
    rollout.register(conn, [("v1", "x")], None, {"v1": {"system_prompt": "SYS", "schema": SCHEMA}})
    app = keys.create(conn, "app")[0]  # a client key
    conn.execute("INSERT INTO requests (id, ts, version, endpoint, input, fields, status) VALUES "
                 "('req_1', 1.0, 'v1', 'extract', 'text', '{}', 200)")
    conn.execute("INSERT INTO feedback (request_id, verdict, fields, key_id, ts) VALUES (?, 'corrected', ?, ?, 2.0)",
                 ("req_1", json.dumps({"backdoor": "TRIGGER"}), app.id))
    with pytest.raises(SwiftpipeError, match="no reviewed requests by a reviewer or admin key"):
        export(str(db), str(tmp_path / "o.jsonl"), version=None, since=None, holdout=0, holdout_out=None, seed=0)
