"""compare / leaderboard over hand-made run directories (pure reading of files)."""

import json
import subprocess

import yaml

from swiftpipe.evaluation import compare
from swiftpipe.evaluation import leaderboard as runs
from tests.helpers import REPO, child_env, swiftpipe_cmd


def make_run(root, run_id, *, rank, outcomes, losses):
    run = root / "demo" / run_id
    (run / "eval" / "finetuned").mkdir(parents=True)
    (run / "train").mkdir()
    (run / "stages").mkdir()
    (run / "run.json").write_text(json.dumps({"name": "demo", "run_id": run_id, "status": "done"}))
    (run / "resolved.yaml").write_text(yaml.safe_dump({"name": "demo", "lora": {"rank": rank, "alpha": 32},
                                                      "train": {"lr": 1e-4}}))
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


def test_compare_lists_flips_params_and_writes_png(tmp_path):
    a = make_run(tmp_path, "a", rank=8, outcomes=[True, False, True, False], losses=[2.0, 1.0])
    b = make_run(tmp_path, "b", rank=16, outcomes=[True, True, False, False], losses=[2.0, 0.5])
    assert compare.param_diff(a, b) == [("lora.rank", 8, 16)]
    assert [(x["key"], y["correct"]) for x, y in compare.flipped(a, b)] == [("k1", True), ("k2", False)]
    done = subprocess.run([*swiftpipe_cmd(), "compare", str(a), str(b), "--out-dir", str(tmp_path / "cmp")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Flipped examples: 2 (1 right only in B, 1 right only in A)" in done.stdout
    assert "| lora.rank | 8 | 16 |" in done.stdout and "| exact match | 50.0% | 50.0% | +0.0 pt |" in done.stdout
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    bad = subprocess.run([*swiftpipe_cmd(), "compare", str(a), str(tmp_path)], cwd=REPO, env=child_env(),
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "is not a run directory" in bad.stderr and "Traceback" not in bad.stderr


def test_leaderboard_sorts_filters_and_reports_bad_queries(tmp_path):
    make_run(tmp_path, "a", rank=8, outcomes=[True, False], losses=[1.0])
    make_run(tmp_path, "b", rank=16, outcomes=[True, True], losses=[0.5])
    frame = runs.leaderboard(tmp_path)
    assert list(frame["run"]) == ["demo/b", "demo/a"] and list(frame["exact_match"]) == [1.0, 0.5]
    assert list(runs.leaderboard(tmp_path, where="`lora.rank` == 8")["run"]) == ["demo/a"]
    html = runs.render(frame, "html")
    assert html.startswith("<table") and "demo/b" in html
    bad = subprocess.run([*swiftpipe_cmd(), "leaderboard", str(tmp_path), "--sort", "nope"], cwd=REPO,
                         env=child_env(), capture_output=True, text=True)
    assert bad.returncode == 1 and "--sort nope: no such column" in bad.stderr
