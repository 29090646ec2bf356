"""Hand-made run directories for compare / leaderboard (pure reading of files)."""

import json

import pytest
import yaml


def _make_run(root, run_id, *, rank, outcomes, losses, **params):
    """A finished run `demo/RUN_ID` under `root`: its recipe (lora.rank=`rank`, plus the sections in
    `params`), an evaluation with `outcomes` (one row each) and a training log with `losses`."""
    run = root / "demo" / run_id
    (run / "eval" / "finetuned").mkdir(parents=True)
    (run / "train").mkdir()
    (run / "stages").mkdir()
    (run / "run.json").write_text(json.dumps({"name": "demo", "run_id": run_id, "status": "done"}))
    (run / "resolved.yaml").write_text(yaml.safe_dump({"name": "demo", "lora": {"rank": rank, "alpha": 32},
                                                      "train": {"lr": 1e-4}, **params}))
    (run / "env.json").write_text(json.dumps({"packages": {"ms-swift": "4.6.0", "torch": "2.13.0"}}))
    (run / "stages" / "sft.done").write_text(json.dumps({"seconds": 10.0}))
    records = [{"key": f"k{i}", "input": f"text {i}", "gold": {"name": "a"}, "prediction": {"name": "a" if ok else "b"},
                "correct": ok, "fields": {"name": ok}} for i, ok in enumerate(outcomes)]
    (run / "eval" / "finetuned" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    share = sum(outcomes) / len(outcomes)
    (run / "eval" / "finetuned" / "metrics.json").write_text(json.dumps(
        {"n": len(outcomes), "correct": sum(outcomes), "exact_match": share, "per_field": {"name": share},
         "invalid_json": 0, "api_errors": 0}))
    (run / "train" / "logging.jsonl").write_text("".join(
        json.dumps({"loss": loss, "global_step/max_steps": f"{5 * (i + 1)}/20"}) + "\n" for i, loss in enumerate(losses)))
    return run


@pytest.fixture
def make_run():
    """`make_run(root, run_id, *, rank, outcomes, losses, **params)`: a finished run directory."""
    return _make_run
