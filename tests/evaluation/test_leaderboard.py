"""`swiftpipe leaderboard`: every run under a root as a table, sorted and filtered on any column."""

from swiftpipe.evaluation import compare
from swiftpipe.evaluation import leaderboard as runs
from tests.helpers import run_cli


def test_leaderboard_sorts_filters_and_reports_bad_queries(tmp_path, make_run):
    make_run(tmp_path, "a", rank=8, outcomes=[True, False], losses=[1.0])
    make_run(tmp_path, "b", rank=16, outcomes=[True, True], losses=[0.5])
    frame = runs.leaderboard(tmp_path)
    assert list(frame["run"]) == ["demo/b", "demo/a"] and list(frame["exact_match"]) == [1.0, 0.5]
    assert list(runs.leaderboard(tmp_path, where="`lora.rank` == 8")["run"]) == ["demo/a"]
    html = runs.render(frame, "html")
    assert html.startswith("<table") and "demo/b" in html
    bad = run_cli("leaderboard", str(tmp_path), "--sort", "nope")
    assert bad.returncode == 1 and "--sort nope: no such column" in bad.stderr


def test_leaderboard_and_compare_show_a_list_of_training_files(tmp_path, make_run):
    a = make_run(tmp_path, "a", rank=8, outcomes=[True, False], losses=[1.0], data={"train": "d/train.jsonl"})
    b = make_run(tmp_path, "b", rank=8, outcomes=[True, True], losses=[0.5],
                 data={"train": ["d/train.jsonl", "corrections.jsonl"]})
    frame = runs.leaderboard(tmp_path, sort="data.train")  # mixed str / list cells sort as text
    assert list(frame["data.train"]) == ["d/train.jsonl", "[d/train.jsonl, corrections.jsonl]"]
    assert "| [d/train.jsonl, corrections.jsonl] |" in runs.render(frame, "markdown")
    picked = runs.leaderboard(tmp_path, where="`data.train` == '[d/train.jsonl, corrections.jsonl]'")
    assert list(picked["run"]) == ["demo/b"]
    assert compare.param_diff(a, b) == [("data.train", "d/train.jsonl", ["d/train.jsonl", "corrections.jsonl"])]
    assert "| data.train | d/train.jsonl | [d/train.jsonl, corrections.jsonl] |" in compare.comparison(a, b)


def test_leaderboard_shows_the_dtype_a_run_was_served_in_on_request(tmp_path, make_run):
    import json

    run = make_run(tmp_path, "a", rank=8, outcomes=[True], losses=[1.0])
    make_run(tmp_path, "old", rank=8, outcomes=[True], losses=[1.0])  # evaluated before the dtype was recorded
    metrics_path = run / "eval" / "finetuned" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["served_dtype"] = {"dtype": "float32", "requested": "auto", "device": "cpu", "reason": "..."}
    metrics_path.write_text(json.dumps(metrics))
    frame = runs.leaderboard(tmp_path, sort="-run", columns=["served_dtype"])  # "-": ascending
    assert list(frame["run"]) == ["demo/a", "demo/old"] and frame["served_dtype"][0] == "float32"
    assert frame["served_dtype"].isna()[1]
    assert "served_dtype" not in runs.leaderboard(tmp_path)  # not a default column
