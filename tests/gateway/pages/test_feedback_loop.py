"""The loop closes on CPU, with the tiny model and real vLLM: v1 trained on half the demo rows
answers the other half wrongly; corrections posted through /v1/feedback become training rows
(`swiftpipe data corrections`); v2 trained on the original rows plus them answers correctly; served
side by side at 50/50, `requests --compare` and the dashboard (in Chromium) show v2's higher
reviewed accuracy."""

import json
import subprocess

import httpx
import pytest

from swiftpipe.core import jsonl
from swiftpipe.gateway import keys, store
from swiftpipe.task import messages
from tests.helpers import DEMO_DATA, KEY, REPO, GatewayProcess, child_env, processes_mentioning, swiftpipe_cmd

pytestmark = pytest.mark.integration


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    out = subprocess.run([*swiftpipe_cmd(), *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def post(gw, path, body, key=KEY) -> dict:
    response = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def review(gw, answer: dict, gold: dict) -> None:
    """What a reviewer does: confirm a right answer, correct a wrong one."""
    body = {"verdict": "correct"} if answer["fields"] == gold else {"fields": gold}
    post(gw, "/v1/feedback", {"id": answer["id"], **body})


def test_corrections_train_a_better_version(tmp_path, tiny_model_dir, page, screenshot):
    lines = jsonl.raw_lines(DEMO_DATA)
    rows = messages.read(DEMO_DATA)
    seen, unseen = tmp_path / "seen.jsonl", tmp_path / "unseen.jsonl"
    jsonl.write_raw_lines(seen, lines[:8])
    jsonl.write_raw_lines(unseen, lines[8:])
    unseen_rows = rows[8:]
    # No eval stage: what each version gets right is read from its answers through the gateway (one
    # vLLM start per version instead of two; the eval stage has tests of its own).
    common = [f"output.root={tmp_path / 'runs'}", f"model.id={tiny_model_dir}", f"data.test={unseen}",
              "eval.enabled=false"]

    # v1: trained on the first half (briefly: it only has to be a tuned model that is wrong on the
    # second half); wrong on the second.
    run("run", str(REPO / "recipes" / "demo-cpu.yaml"), *common, f"data.train={seen}", "train.max_steps=20",
        "train.save_steps=20", "--run-id", "v1", cwd=tmp_path)
    v1 = tmp_path / "runs" / "demo-cpu" / "v1"

    # Served, its answers to the second half reviewed and corrected through the API.
    gw = GatewayProcess(tmp_path, f"v1={v1}", startup_s=600)
    try:
        v1_right = 0
        for row in unseen_rows:
            answer = post(gw, "/v1/extract", {"text": row.user})
            v1_right += answer["fields"] == row.answer
            review(gw, answer, row.answer)
        assert v1_right <= 2, f"v1 got {v1_right} of {len(unseen_rows)} unseen rows right"
    finally:
        assert gw.stop() == 0
    out = run("data", "corrections", "--db", str(gw.db), "--out", str(tmp_path / "corrections.jsonl"), cwd=tmp_path)
    assert "8 reviewed texts" in out.stdout and "corrected" in out.stdout
    corrections = messages.read(tmp_path / "corrections.jsonl")
    assert sorted(c.user for c in corrections) == sorted(r.user for r in unseen_rows)
    assert {c.user: c.answer for c in corrections} == {r.user: r.answer for r in unseen_rows}
    assert corrections[0].system == rows[0].system  # the recipe's system prompt, as it was served

    # v2: the original rows plus the corrections; right on the second half.
    run("run", str(REPO / "recipes" / "demo-cpu.yaml"), *common,
        f"data.train=[{seen},{tmp_path / 'corrections.jsonl'}]", "--run-id", "v2", cwd=tmp_path)
    v2 = tmp_path / "runs" / "demo-cpu" / "v2"

    # Side by side at 50/50 on the same database; every answer reviewed, every answer in the audit
    # sample (--audit-share 1: the accuracy estimate is over all of them).
    gw = GatewayProcess(tmp_path, f"v1={v1}", f"v2={v2}", "--weights", "v1=50,v2=50", "--audit-share", "1",
                        startup_s=600)
    try:
        conn = store.connect(gw.db)
        secrets = [keys.create(conn, f"client-{i}")[1] for i in range(24)]
        conn.close()
        served = {"v1": 0, "v2": 0}
        right = {"v1": 0, "v2": 0}
        for i, secret in enumerate(secrets):
            row = unseen_rows[i % len(unseen_rows)]
            answer = post(gw, "/v1/extract", {"text": row.user}, key=secret)
            served[answer["version"]] += 1
            right[answer["version"]] += answer["fields"] == row.answer
            review(gw, answer, row.answer)
        assert served["v1"] >= 4 and served["v2"] >= 4, served
        assert right["v2"] >= 0.9 * served["v2"], (right, served)  # v2 is right on the second half
        stats = httpx.get(gw.url + "/v1/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
        totals = {name: v["total"] for name, v in stats["versions"].items()}
        assert totals["v2"]["reviewed_accuracy"] >= 0.9 > 0.5 >= totals["v1"]["reviewed_accuracy"], totals
        # ... and as a person sees it on the dashboard.
        page.goto(gw.url + "/dashboard")
        page.fill("#key", KEY)
        page.click("#save-key")
        page.wait_for_selector("tr[data-version='v2'] td[data-col='reviewed_accuracy']")
        shown = {v: float(page.locator(f"tr[data-version='{v}'] td[data-col='reviewed_accuracy']").text_content()
                          .rstrip("%")) for v in ("v1", "v2")}
        assert shown["v2"] >= 90 > 50 >= shown["v1"], shown
        assert page.locator("svg#chart-accuracy circle[data-version='v2']").count() == 1
        screenshot(page, "dashboard-v1-v2")
    finally:
        assert gw.stop() == 0
    compare = run("requests", "--db", str(gw.db), "--compare", "v1", "v2", "--format", "jsonl", cwd=tmp_path)
    table = {r["version"]: r for r in map(json.loads, compare.stdout.splitlines())}
    assert table["v2"]["reviewed_accuracy"] > table["v1"]["reviewed_accuracy"], table
    assert processes_mentioning(str(v1)) == [] and processes_mentioning(str(v2)) == []
