"""The gateway's pages in real Chromium, in front of the scripted upstream: extract and see the
fields highlighted at the right characters, correct an answer, review the queue (flagged first),
watch the dashboard's counts move. Any console error or off-machine request fails the test."""

import json
import sqlite3

import httpx
import pytest

from tests.helpers import DEMO_RECIPE, KEY, REPO, GatewayProcess

pytestmark = pytest.mark.integration

WAYBILL = "张三 13800000000 浙江省杭州市西湖区文三路100号"  # the scripted upstream's answer is all in it


def feedback_rows(db) -> dict:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["request_id"]: dict(r) for r in conn.execute("SELECT * FROM feedback")}
    finally:
        conn.close()


def api(gw, path, body=None):
    headers = {"Authorization": f"Bearer {KEY}"}
    if body is None:
        return httpx.get(gw.url + path, headers=headers, timeout=30)
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=30)


def extract_in_playground(page, gw, version: str, text: str) -> None:
    """Open the playground, type the key once, extract `text` and wait for the highlights."""
    page.goto(gw.url + "/")
    page.fill("#key", KEY)
    page.click("#save-key")
    page.wait_for_selector(f"#version option[value='{version}']", state="attached")
    page.fill("#text", text)
    page.click("#extract")
    page.wait_for_selector("#highlight mark")


def test_playground_review_and_dashboard(tmp_path, scripted, page, screenshot):
    # no random audit sample: the queue's order is the doubt's alone (the audit sample: the next test)
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--audit-share", "0")
    try:
        flagged = api(gw, "/v1/extract", {"text": "李四 住在上海"}).json()  # the answer is not in this text
        assert "not_in_text:name" in flagged["flags"]

        # Playground: key once, extract, highlights at the right characters.
        extract_in_playground(page, gw, "v1", WAYBILL)
        for field, value in {"specific_location": "文三路100号", "name": "张三", "phone": "13800000000",
                             "city": "杭州市"}.items():
            mark = page.locator(f"#highlight mark[data-field='{field}']")
            assert mark.count() == 1, field
            assert mark.text_content() == value
            assert int(mark.get_attribute("data-start")) == WAYBILL.index(value)
            assert int(mark.get_attribute("data-end")) == WAYBILL.index(value) + len(value)
        assert page.locator("#highlight").text_content() == WAYBILL
        assert page.locator("[data-missing]").count() == 0
        assert page.locator("#flags").text_content() == "no flags"
        request_id = page.locator("#request-id").text_content()
        screenshot(page, "playground")

        # Edit a field and save: the correction is in the database, with the reviewer's key.
        page.fill("#form input[data-field='phone']", "13800000001")
        page.click("#save")
        page.wait_for_selector("#status:has-text('saved as corrected')")
        stored = feedback_rows(gw.db)[request_id]
        assert stored["verdict"] == "corrected" and json.loads(stored["fields"])["phone"] == "13800000001"
        assert stored["key_id"].startswith("key_")
        # A later review of the same request replaces the earlier one.
        page.click("#correct")
        page.wait_for_selector("#status:has-text('saved as correct')")
        assert feedback_rows(gw.db)[request_id]["verdict"] == "correct"

        # Review queue: the flagged request first, fields not in the text marked; `a` accepts it.
        for _ in range(3):
            api(gw, "/v1/extract", {"text": WAYBILL + " 寄"})  # unflagged answers for the spot checks
        page.goto(gw.url + "/review")
        page.wait_for_selector("#item-id:not(:empty)")
        assert page.locator("#item-id").text_content() == flagged["id"]
        assert page.locator("[data-missing='name']").count() == 1
        assert page.locator("#flags [data-flag='not_in_text:name']").count() == 1
        screenshot(page, "review")
        page.keyboard.press("a")
        page.wait_for_selector(f"#done:has-text('{flagged['id']}')")
        assert feedback_rows(gw.db)[flagged["id"]]["verdict"] == "correct"
        page.wait_for_selector(f"#item-id:not(:has-text('{flagged['id']}'))")
        assert page.locator("#remaining").text_content().startswith("0 flagged, ")
        page.keyboard.press("s")  # skip: another unflagged one comes

        # Dashboard: the counts change with new requests and reviews.
        page.goto(gw.url + "/dashboard")
        cell = page.locator("tr[data-version='v1'] td[data-col='requests']")
        cell.wait_for()
        before = int(cell.text_content())
        assert page.locator("tr[data-version='v1'] td[data-col='reviewed']").text_content() == "2"
        api(gw, "/v1/extract", {"text": WAYBILL})
        page.click("#refresh")
        page.wait_for_selector(f"tr[data-version='v1'] td[data-col='requests']:has-text('{before + 1}')")
        # no audited review: no accuracy estimate; the doubtful reviews are counted beside it
        assert page.locator("tr[data-version='v1'] td[data-col='reviewed_accuracy']").text_content() == "–"
        assert page.locator("tr[data-version='v1'] td[data-col='doubtful']").text_content() == \
            "0 errors in the 2 most doubtful"
        screenshot(page, "dashboard")
    finally:
        gw.stop()


def test_confidence_in_the_playground_audit_rows_in_review_and_accuracy_with_its_interval(tmp_path, scripted, page,
                                                                                          screenshot):
    # every answer in the audit sample (--audit-share 1), the demo's threshold 0.9
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE, "--audit-share", "1",
                        "--accept-threshold", "0.9")
    try:
        extract_in_playground(page, gw, "v1", WAYBILL + " #doubt")
        shown = {name: page.locator(f"#form [data-confidence='{name}']") for name in
                 ("province", "city", "district", "specific_location", "name", "phone")}
        values = {name: float(cell.text_content()) for name, cell in shown.items()}
        assert min(values, key=values.get) == "name" and values["name"] < 0.3 and values["phone"] > 0.99
        assert [n for n, cell in shown.items() if "low" in cell.get_attribute("class").split()] == ["name"]
        assert page.locator("#row-confidence").text_content() == f"{values['name']:.3f}"
        assert page.locator("#needs-review").is_visible()
        assert page.locator("#flags [data-flag='low_confidence:name']").count() == 1
        screenshot(page, "playground-confidence")

        for i in range(3):
            api(gw, "/v1/extract", {"text": f"{WAYBILL} 订单{i}"})
        page.goto(gw.url + "/review")
        page.wait_for_selector("#item-id:not(:empty)")
        assert page.locator("#audit").is_visible() and "(4 in the audit sample)" in page.locator("#remaining").text_content()
        screenshot(page, "review-audit")
        for _ in range(4):  # confirm all four: the audit sample's accuracy is 4 of 4
            current = page.locator("#item-id").text_content()
            page.keyboard.press("a")
            page.wait_for_selector(f"#done:has-text('{current}')", state="attached")  # hidden once none is left
        page.wait_for_selector("#empty:not([hidden])")

        page.goto(gw.url + "/dashboard")
        accuracy = page.locator("tr[data-version='v1'] td[data-col='reviewed_accuracy']")
        accuracy.wait_for()
        assert accuracy.text_content() == "100.0%"
        # Wilson 95% interval of 4 of 4
        assert page.locator("tr[data-version='v1'] td[data-col='reviewed_accuracy_ci']").text_content() == \
            "51.0% – 100.0% (4 audited)"
        assert page.locator("svg#chart-accuracy circle[data-version='v1']").count() == 1
        screenshot(page, "dashboard-audit")
    finally:
        gw.stop()


def test_malformed_feedback_is_refused_and_changes_nothing(tmp_path, scripted):
    gw = GatewayProcess(tmp_path, "--upstream", f"v1={scripted}", "--recipe", DEMO_RECIPE)
    try:
        answer = api(gw, "/v1/extract", {"text": WAYBILL}).json()
        good = dict(answer["fields"], phone="13900000000")
        cases = [
            ({"id": "req_nope", "verdict": "correct"}, 404, "no request with id 'req_nope'"),
            ({"id": answer["id"], "fields": dict(good, colour="red")}, 400, "fields not in the schema: colour"),
            ({"id": answer["id"], "fields": dict(good, phone=138)}, 400, "phone: 138 is not of type 'string'"),
            ({"id": answer["id"], "fields": "张三"}, 400, "'fields' must be an object"),
            ({"id": answer["id"]}, 400, "send either 'fields'"),
            ({"id": answer["id"], "fields": good, "verdict": "correct"}, 400, "send either 'fields'"),
            ({"id": answer["id"], "verdict": "wrong"}, 400, "'verdict' can only be 'correct'"),
            ({"id": 5, "verdict": "correct"}, 400, "'id' must be the id of a request"),
        ]
        for body, status, message in cases:
            response = api(gw, "/v1/feedback", body)
            assert response.status_code == status, (body, response.text)
            assert message in response.json()["error"]["message"], response.text
        assert api(gw, "/v1/feedback", {"id": answer["id"], "bogus": 1}).status_code == 422
        assert feedback_rows(gw.db) == {}
        ok = api(gw, "/v1/feedback", {"id": answer["id"], "fields": good})
        assert ok.status_code == 200 and ok.json()["verdict"] == "corrected"
        same = api(gw, "/v1/feedback", {"id": answer["id"], "fields": answer["fields"]})
        assert same.json()["verdict"] == "correct"  # a "correction" equal to the answer confirms it
        assert len(feedback_rows(gw.db)) == 1
    finally:
        gw.stop()


def test_entity_answers_are_highlighted_by_type(tmp_path, scripted, page, screenshot):
    cluener = str(REPO / "recipes" / "cluener-qwen2.5-0.5b.yaml")
    gw = GatewayProcess(tmp_path, "--upstream", f"ner={scripted}", "--recipe", cluener)
    text = "张三去浙江省杭州市的西湖玩，张三很开心 #ner"
    try:
        extract_in_playground(page, gw, "ner", text)
        names = page.locator("#highlight mark[data-field='name']")
        assert names.count() == 2  # every occurrence of every entity
        assert [int(names.nth(i).get_attribute("data-start")) for i in range(2)] == [0, text.index("张三", 1)]
        assert page.locator("#highlight mark[data-field='address']").text_content() == "浙江省杭州市"
        assert page.locator("#highlight mark[data-field='scene']").text_content() == "西湖"
        legend = page.locator("#legend [data-legend]")
        assert legend.count() == 10 and legend.nth(0).text_content() == "address"  # a legend of all the types
        assert page.locator("#form textarea[data-field='name']").input_value() == '["张三"]'
        screenshot(page, "playground-entities")
    finally:
        gw.stop()
