"""`swiftpipe compare A B`: the parameters that differ, the examples that flipped, a chart."""

from swiftpipe.evaluation import compare
from swiftpipe.evaluation import leaderboard as runs
from tests.helpers import run_cli


def test_compare_lists_flips_params_and_writes_png(tmp_path, make_run):
    a = make_run(tmp_path, "a", rank=8, outcomes=[True, False, True, False], losses=[2.0, 1.0])
    b = make_run(tmp_path, "b", rank=16, outcomes=[True, True, False, False], losses=[2.0, 0.5])
    assert compare.param_diff(a, b) == [("lora.rank", 8, 16)]
    assert [(x["key"], y["correct"]) for x, y in compare.flipped(a, b)] == [("k1", True), ("k2", False)]
    done = run_cli("compare", str(a), str(b), "--out-dir", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    assert "Flipped examples: 2 (1 right only in B, 1 right only in A)" in done.stdout
    # 1 fixed, 1 broken: the exact McNemar test says this is no evidence either way
    assert "B fixes 1, breaks 1: exact McNemar test on the flips: p = 1; a difference this small can be chance" \
        in done.stdout
    assert "| lora.rank | 8 | 16 |" in done.stdout and "| exact match | 50.0% | 50.0% | +0.0 pt |" in done.stdout
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    bad = run_cli("compare", str(a), str(tmp_path))
    assert bad.returncode == 1 and "is not a run directory" in bad.stderr and "Traceback" not in bad.stderr


def test_where_a_run_lives_is_not_a_parameter(tmp_path, make_run):
    """reproduce passes an absolute output.root: compare and leaderboard must not list it."""
    a = make_run(tmp_path, "a", rank=8, outcomes=[True], losses=[1.0], output={"root": "runs"})
    b = make_run(tmp_path, "b", rank=8, outcomes=[True], losses=[1.0], output={"root": str(tmp_path)})
    assert compare.param_diff(a, b) == []
    assert "output.root" not in runs.leaderboard(tmp_path).columns
