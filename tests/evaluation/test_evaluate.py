"""`swiftpipe eval`: the test rows it reads, resuming from predictions.jsonl, and Ctrl-C."""

import json
import signal
import subprocess

import pytest

from swiftpipe.evaluation import evaluate as ev
from swiftpipe.task import messages
from swiftpipe.task.messages import Example
from tests.helpers import REPO, child_env, free_port, swiftpipe_cmd, wait_for
from tests.helpers import messages_line as _row


def test_read_rows_uses_row_system_or_default(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(_row("u1", {"a": "1"}) + "\n\n" + _row("u2", {"a": "2"}, system=None) + "\n", encoding="utf-8")
    rows = ev.read_test_rows(path, default_system="recipe prompt")
    assert [(r.index, r.line, r.system, r.user, r.answer) for r in rows] == [
        (0, 1, "sys", "u1", {"a": "1"}), (1, 3, "recipe prompt", "u2", {"a": "2"})]
    assert rows[0].key != rows[1].key


def test_bad_rows_named_by_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([
        _row("ok", {"a": 1}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "plain"}]}),
        json.dumps({"text": "x"}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(messages.MessagesError) as info:
        ev.read_test_rows(path)
    msg = str(info.value)
    assert "4 bad row(s)" in msg
    for line, why in ((2, "not valid JSON"), (3, "the last message must be the assistant's answer"),
                      (4, "the assistant's answer is not valid JSON"), (5, 'expected {"messages"')):
        assert f"{path}:{line}: {why}" in msg


def test_load_done_keeps_finished_rows_only(tmp_path):
    rows = [Example(i, i + 1, None, f"u{i}", json.dumps({"a": i}), {"a": i}) for i in range(4)]
    pred = tmp_path / "predictions.jsonl"
    lines = [
        json.dumps({"index": 0, "key": rows[0].key, "error": None, "correct": True}),
        json.dumps({"index": 1, "key": "stale-key", "error": None}),  # the test row changed since
        json.dumps({"index": 2, "key": rows[2].key, "error": "APIConnectionError"}),  # retried
        '{"index": 3, "key": "' + rows[3].key + '", "err',  # killed mid-write
    ]
    pred.write_text("\n".join(lines), encoding="utf-8")
    assert list(ev.load_done(pred, rows)) == [0]


def test_interrupted_eval_says_how_to_continue_itself(tmp_path):
    """Ctrl-C in `eval` (here: while it retries a server that is down) names `eval`'s own way on."""
    out = tmp_path / "o"
    proc = subprocess.Popen([*swiftpipe_cmd(), "eval", "datasets/demo/address.jsonl", "--base-url",
                             f"http://127.0.0.1:{free_port()}/v1", "--model", "m", "--out", str(out)],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def started() -> bool:
        assert proc.poll() is None, "eval ended before the Ctrl-C: " + proc.communicate(timeout=30)[1]
        return (out / "predictions.jsonl").exists()

    try:
        # predictions.jsonl is written before the first request: from then on it retries the server
        wait_for(started, 60, "the evaluation to start (its predictions.jsonl)")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 130, err
    assert "rerun the same `swiftpipe eval` command" in err and "predictions.jsonl" in err
    assert "--run-id" not in err
