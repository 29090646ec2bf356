"""Confidence from a real tuned tiny model (the demo's, served by vLLM, asked by the real OpenAI
client): on its 16 trained rows plus unseen synthesized ones it is right on the first and wrong on
most of the rest, and its row confidence ranks the right rows above the wrong ones."""

import json

import pytest

from swiftpipe.core import jsonl
from swiftpipe.data.synth import write_samples
from swiftpipe.task import messages
from tests.helpers import DEMO_DATA, REPO, child_env, swiftpipe_cmd

pytestmark = pytest.mark.integration

UNSEEN = 48


def test_row_confidence_ranks_the_trained_rows_above_the_unseen_wrong_ones(demo_server, tmp_path):
    import subprocess

    unseen = tmp_path / "unseen.jsonl"
    with unseen.open("w", encoding="utf-8") as out:
        write_samples(out, UNSEEN, seed=7, system_prompt=messages.read(DEMO_DATA)[0].system)
    test = tmp_path / "mixed.jsonl"
    jsonl.write_raw_lines(test, jsonl.raw_lines(DEMO_DATA) + jsonl.raw_lines(unseen))
    out_dir = tmp_path / "eval"
    done = subprocess.run([*swiftpipe_cmd(), "eval", str(test), "--base-url", demo_server.base_url, "--model", "demo",
                           "--out", str(out_dir), "--recipe", "recipes/demo-cpu.yaml", "--concurrency", "8"],
                          cwd=REPO, env={**child_env(), "OPENAI_API_KEY": demo_server.api_key}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    records = jsonl.read_all(out_dir / "predictions.jsonl")
    right = [r for r in records if r["correct"]]
    assert len(right) >= 15 and len(records) - len(right) >= UNSEEN // 2, metrics["exact_match"]  # a mixed set
    # every answer that is JSON has one (the others: control characters in a garbled unseen answer)
    assert all(r["row_confidence"] is not None for r in records if r["prediction"] is not None)
    conf = metrics["confidence"]
    assert conf["auroc"] >= 0.8, conf["auroc_by_aggregate"]
    assert conf["rows_scored"] == sum(r["row_confidence"] is not None for r in records)
    # the accept threshold keeps out what it must: every accepted row meets the target here
    threshold = conf["accept_threshold"]
    assert threshold is not None
    accepted = [r for r in records if r["row_confidence"] is not None and r["row_confidence"] >= threshold]
    assert sum(r["correct"] for r in accepted) >= 0.99 * len(accepted)
    assert "at t = " in done.stdout and "of rows need no review" in done.stdout
    report = (out_dir / "report.md").read_text(encoding="utf-8")
    assert "## Calibration of confidence" in report and (out_dir / "reliability.png").is_file()
