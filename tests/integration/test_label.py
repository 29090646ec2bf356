"""Teacher labelling against a real local vLLM (the tiny model as teacher) over HTTP."""

import json
import os
import signal
import subprocess
import urllib.request

import pytest

from swiftpipe.core.vllm_server import ServeTarget, VllmServer
from swiftpipe.data import synth
from swiftpipe.recipe.schema import ServeSection
from tests.helpers import REPO, child_env, swiftpipe_cmd, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def teacher(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("teacher") / "server.log"
    target = ServeTarget(model_dir=str(tiny_model_dir), served_name="teacher", max_model_len=1024, cpu=True)
    with VllmServer(target, log, settings=ServeSection()) as server:
        yield server


def metric(server, name: str) -> float:
    """Sum of a Prometheus counter/gauge over its labels, from vLLM's /metrics."""
    request = urllib.request.Request(server.base_url.removesuffix("/v1") + "/metrics",
                                     headers={"Authorization": f"Bearer {server.api_key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def wait_idle(server) -> None:
    """Requests the killed client left in flight finish on the server before we count."""
    wait_for(lambda: metric(server, "vllm:num_requests_running") == metric(server, "vllm:num_requests_waiting") == 0,
             60, "the teacher to finish the requests in flight", every=0.5)


def label_cmd(server, inputs, out, *extra):
    return [*swiftpipe_cmd(), "data", "label", str(inputs), "--out", str(out), "--base-url", server.base_url,
            "--model", "teacher", "--recipe", "recipes/demo-cpu.yaml", "--max-tokens", "256", *extra]


def test_label_survives_a_kill_and_never_pays_twice(teacher, tmp_path):
    texts = [text for text, _ in synth.samples(30, seed=9)]
    inputs = tmp_path / "raw.txt"
    inputs.write_text("\n".join(texts + [texts[0]]) + "\n", encoding="utf-8")  # one duplicate line
    out = tmp_path / "labelled.jsonl"
    cache = tmp_path / "labelled.jsonl.cache.jsonl"
    env = {**child_env(), "OPENAI_API_KEY": teacher.api_key}
    served_before = metric(teacher, "vllm:request_success_total")

    proc = subprocess.Popen(label_cmd(teacher, inputs, out, "--concurrency", "2"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def eight_cached() -> bool:
        assert proc.poll() is None, "labelling finished before it could be killed; " + proc.stderr.read().decode()[-2000:]
        return cache.exists() and len(cache.read_text(encoding="utf-8").splitlines()) >= 8

    wait_for(eight_cached, 300, "eight cached answers", every=0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_idle(teacher)
    cached = {json.loads(line)["key"] for line in cache.read_text(encoding="utf-8").splitlines()
              if line.endswith("}")}
    assert 8 <= len(cached) < 30
    served_after_kill = metric(teacher, "vllm:request_success_total")

    done = subprocess.run(label_cmd(teacher, inputs, out, "--concurrency", "4"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "labelled.jsonl.summary.json").read_text())
    # The rerun asked exactly the 30 distinct texts minus those answered before the kill.
    assert summary["requests_sent"] == 30 - len(cached)
    assert metric(teacher, "vllm:request_success_total") - served_after_kill == 30 - len(cached)
    assert served_after_kill - served_before >= len(cached)
    assert summary["inputs"] == 31 and summary["labelled"] + summary["rejected"] == 31
    assert summary["api_errors"] == 0 and summary["tokens_this_run"] > 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == summary["labelled"]
    for line in out.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["messages"]
        assert turns[0]["role"] == "system" and turns[1]["content"] in texts
        assert set(json.loads(turns[2]["content"])) == set(synth.ADDRESS_FIELDS)  # schema-valid answers

    # A third run with a stricter check sends nothing and re-judges the cached answers: the random
    # teacher invents names, so every row is rejected with its reason.
    served = metric(teacher, "vllm:request_success_total")
    strict = subprocess.run(label_cmd(teacher, inputs, out, "--verbatim", "name,phone"), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert metric(teacher, "vllm:request_success_total") == served
    summary = json.loads((tmp_path / "labelled.jsonl.summary.json").read_text())
    assert summary["requests_sent"] == 0 and summary["from_cache"] == 31 and summary["rejected"] == 31
    rejects = [json.loads(line) for line in (tmp_path / "labelled.jsonl.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 31 and all(r["reasons"] and r["line"] >= 1 for r in rejects)
    assert all(any(reason.startswith(("name ", "phone ")) for reason in r["reasons"]) for r in rejects)


def test_check_mode_reports_rows_whose_fields_are_not_in_the_text(tmp_path):
    rows = (REPO / "datasets" / "address" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    broken = json.loads(rows[2])
    answer = json.loads(broken["messages"][2]["content"])
    answer["phone"] = "19999999999"
    broken["messages"][2]["content"] = json.dumps(answer, ensure_ascii=False)
    rows[2] = json.dumps(broken, ensure_ascii=False)
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    done = subprocess.run([*swiftpipe_cmd(), "data", "label", "--check", str(path)], capture_output=True, text=True,
                          cwd=REPO, env=child_env())
    assert done.returncode == 1
    assert f"{path}:3: phone '19999999999' does not occur in the text" in done.stdout
    assert "1 verbatim problems" in done.stdout
