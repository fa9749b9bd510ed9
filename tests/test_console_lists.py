"""The workspace dashboard, the flows list and the executions list in a real browser (Debian's
Chromium through Playwright) against a real `flowfuse serve`; executions come from real webhook
calls and manual runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api_helpers import ADMIN, PASSWORD, Client, new_tenant, new_user, signed_in_admin, start_with_admin
from tests.browser import sign_in
from tests.conftest import poll


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_with_admin(tmp_path_factory.mktemp("lists") / "data", "serve")
    yield server
    server.stop()


def hook_flow(name: str, path: str, tags: list[str] | None = None) -> dict:
    flow = {"name": name, "nodes": [{"id": "hook", "type": "webhook", "params": {"path": path}},
                                    {"id": "set", "type": "set", "params": {"fields": {"ok": True}}}],
            "edges": [{"from": "hook", "to": "set"}]}
    if tags is not None:
        flow["tags"] = tags
    return flow


FAILING = {"name": "always fails", "nodes": [{"id": "start", "type": "manual"},
                                             {"id": "boom", "type": "stop_and_error",
                                              "params": {"message": "the upstream said no"}}],
           "edges": [{"from": "start", "to": "boom"}]}


def save(admin: Client, tenant: str, flow: dict, active: bool = False) -> None:
    assert admin.post(f"/tenants/{tenant}/flows", json=flow).status_code == 201
    if active:
        assert admin.post(f"/tenants/{tenant}/flows/{flow['name']}/activate").status_code == 200


def finished(admin: Client, tenant: str, count: int) -> list[dict]:
    """Wait until `count` executions of the tenant have ended and return them."""
    def ended():
        items = admin.get(f"/tenants/{tenant}/executions", params={"limit": 500}).json()["items"]
        done = [e for e in items if e["status"] in ("succeeded", "failed")]
        return done if len(done) >= count else None
    return poll(ended, what=f"{count} finished executions in {tenant}")


def as_admin(page: Page, srv) -> None:
    sign_in(page, srv.url, ADMIN, PASSWORD)
    expect(page).to_have_url(f"{srv.url}/")


def test_dashboard_counts_match_real_runs_and_quota_use(page, srv):
    admin = signed_in_admin(srv)
    t = new_tenant(admin)
    save(admin, t, hook_flow("orders", "orders"), active=True)
    save(admin, t, FAILING)
    for i in range(3):
        assert httpx.post(f"{srv.url}/hooks/{t}/orders", json={"n": i}).status_code == 200
    for _ in range(2):
        assert admin.post(f"/tenants/{t}/flows/always fails/run", json={}).status_code == 202
    finished(admin, t, 5)
    assert admin.patch(f"/tenants/{t}/quotas", json={"active_flows": 4, "executions_per_month": 100}).status_code == 200

    as_admin(page, srv)
    page.goto(f"{srv.url}/t/{t}")
    expect(page.locator("[data-stat=succeeded] strong")).to_have_text("3")
    expect(page.locator("[data-stat=failed] strong")).to_have_text("2")
    expect(page.locator("[data-stat=success-rate] strong")).to_have_text("60.0 %")
    expect(page.locator("[data-stat=started] strong")).to_have_text("5")
    expect(page.locator("[data-stat=p95]")).to_contain_text("over the last 5 finished executions")
    expect(page.locator("[data-quota=active_flows]")).to_contain_text("1 / 4")
    expect(page.locator("[data-quota=executions_per_month]")).to_contain_text("5 / 100")
    chart = page.get_by_role("img", name="3 succeeded and 2 failed executions")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.ok")).to_have_count(1)  # all five ran today: one bar
    expect(chart.locator("rect.bad")).to_have_count(1)

    failures = page.locator("ul.failures li")
    expect(failures).to_have_count(2)
    expect(failures.first).to_contain_text("boom: the upstream said no")
    failures.first.get_by_role("link", name="always fails").click()
    expect(page).to_have_url(re.compile(rf"/t/{t}/executions/[0-9a-f]+$"))

    page.goto(f"{srv.url}/t/{t}?range=24h")
    expect(page.get_by_role("heading", name=re.compile("last 24 hours"))).to_be_visible()
    expect(page.locator("[data-stat=succeeded] strong")).to_have_text("3")


def test_flows_search_tags_create_duplicate_toggle_export_delete(page, srv):
    admin = signed_in_admin(srv)
    t = new_tenant(admin)
    save(admin, t, hook_flow("sales intake", "sales", ["sales", "eu"]))
    save(admin, t, hook_flow("sales report", "report", ["sales"]))
    save(admin, t, hook_flow("billing sync", "billing", ["finance"]))
    as_admin(page, srv)
    page.goto(f"{srv.url}/t/{t}/flows")
    rows = page.locator("table.flows tbody tr")
    expect(rows).to_have_count(3)

    page.get_by_label("Search flows").fill("SALES")
    page.get_by_label("Search flows").press("Enter")
    expect(rows).to_have_count(2)
    page.get_by_label("Search flows").fill("")
    page.get_by_label("Search flows").press("Enter")
    page.get_by_label("Tag").select_option("finance")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("billing sync")
    page.goto(f"{srv.url}/t/{t}/flows")
    page.locator("tr[data-flow='sales intake']").get_by_role("link", name="eu").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("sales intake")

    # toggle active (the API's activate: the webhook starts answering)
    page.goto(f"{srv.url}/t/{t}/flows")
    toggle = page.get_by_role("switch", name="Active: billing sync")
    expect(toggle).to_have_attribute("aria-checked", "false")
    toggle.click()
    expect(page.get_by_role("status")).to_have_text("Flow “billing sync” activated.")
    expect(page.get_by_role("switch", name="Active: billing sync")).to_have_attribute("aria-checked", "true")
    assert admin.get(f"/tenants/{t}/flows/billing sync").json()["active"] is True
    assert httpx.post(f"{srv.url}/hooks/{t}/billing", json={}).status_code == 200

    # export: the same JSON the API holds
    with page.expect_download() as download:
        page.locator("tr[data-flow='sales intake']").get_by_role("link", name="Export").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename == "sales intake.json"
    assert exported == admin.get(f"/tenants/{t}/flows/sales intake").json()["definition"]

    # duplicate under a new name: same nodes and tags, inactive
    page.locator("tr[data-flow='sales intake'] details.menu summary").click()
    page.locator("tr[data-flow='sales intake']").get_by_label("New name").fill("sales intake EU")
    page.locator("tr[data-flow='sales intake']").get_by_role("button", name="Duplicate").click()
    expect(page.get_by_role("status")).to_have_text("Flow “sales intake EU” created.")
    copy = admin.get(f"/tenants/{t}/flows/sales intake EU").json()
    assert copy["definition"]["nodes"] == exported["nodes"] and copy["definition"]["tags"] == ["sales", "eu"]
    assert copy["active"] is False
    # a name that exists is refused with the reason
    page.locator("tr[data-flow='sales report'] details.menu summary").click()
    page.locator("tr[data-flow='sales report']").get_by_label("New name").fill("billing sync")
    page.locator("tr[data-flow='sales report']").get_by_role("button", name="Duplicate").click()
    expect(page.get_by_role("alert")).to_contain_text("a flow named 'billing sync' already exists")

    # delete, after confirming
    page.goto(f"{srv.url}/t/{t}/flows")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete sales report").click()
    expect(rows).to_have_count(4)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete sales report").click()
    expect(page.get_by_role("status")).to_have_text("Flow “sales report” deleted.")
    expect(rows).to_have_count(3)
    assert admin.get(f"/tenants/{t}/flows/sales report").status_code == 404

    # create: a flow with a manual trigger, opened in the builder
    page.get_by_label("New flow").fill("Fresh flow")
    page.get_by_role("button", name="Create flow").click()
    expect(page).to_have_url(f"{srv.url}/t/{t}/flows/Fresh%20flow/edit")
    made = admin.get(f"/tenants/{t}/flows/Fresh flow").json()
    assert made["trigger"] == "manual" and made["version"] == 1
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit", params={"limit": 50}).json()["items"]]
    assert {"flow.save", "flow.delete", "flow.activate"} <= set(actions)


def test_import_from_a_file_and_pasted_text_and_a_bad_file(page, srv, tmp_path):
    admin = signed_in_admin(srv)
    t = new_tenant(admin)
    as_admin(page, srv)
    page.goto(f"{srv.url}/t/{t}/flows")
    good = tmp_path / "from-file.json"
    good.write_text(json.dumps(hook_flow("from a file", "ff", ["imported"])))
    page.get_by_text("Import a flow").click()
    page.get_by_label("Flow file (JSON)").set_input_files(str(good))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Flow “from a file” saved.")
    assert admin.get(f"/tenants/{t}/flows/from a file").json()["definition"]["tags"] == ["imported"]

    page.get_by_text("Import a flow").click()
    page.get_by_label("or paste the flow's JSON").fill(json.dumps(hook_flow("pasted", "pp")))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Flow “pasted” saved.")
    expect(page.locator("table.flows tbody tr")).to_have_count(2)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad one", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "bad"}},
        {"id": "fetch", "type": "http_request", "params": {"method": "GET"}}], "edges": [{"from": "hook", "to": "fetch"}]}))
    page.get_by_text("Import a flow").click()
    page.get_by_label("Flow file (JSON)").set_input_files(str(bad))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("nothing was saved")
    expect(page.get_by_role("list", name="Problems")).to_contain_text("node “fetch”")
    expect(page.get_by_role("list", name="Problems")).to_contain_text("url")
    assert admin.get(f"/tenants/{t}/flows/bad one").status_code == 404

    page.get_by_label("or paste the flow's JSON").fill('{"name": "broken",')
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("the pasted text is not JSON")

    page.get_by_label("or paste the flow's JSON").fill(json.dumps({**hook_flow("tagged", "tg"), "tags": "sales"}))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("list", name="Problems")).to_contain_text("tags must be a list of short strings")
    assert admin.get(f"/tenants/{t}/flows/tagged").status_code == 404


def test_executions_filter_page_and_update_live(page, srv):
    admin = signed_in_admin(srv)
    t = new_tenant(admin)
    save(admin, t, hook_flow("orders", "orders"), active=True)
    save(admin, t, FAILING)
    for i in range(52):
        assert httpx.post(f"{srv.url}/hooks/{t}/orders", json={"n": i}).status_code == 200
    assert admin.post(f"/tenants/{t}/flows/always fails/run", json={}).status_code == 202
    finished(admin, t, 53)

    as_admin(page, srv)
    page.goto(f"{srv.url}/t/{t}/executions")
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(50)
    page.get_by_role("link", name="Older").click()
    expect(rows).to_have_count(3)
    expect(page.get_by_text("Live updates are paused on older pages")).to_be_visible()

    page.goto(f"{srv.url}/t/{t}/executions")
    page.get_by_label("Status").select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("always fails")
    page.get_by_label("Status").select_option("")
    page.get_by_label("Flow", exact=True).fill("always fails")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    page.get_by_label("Flow", exact=True).fill("no such flow")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_contain_text("no flow named 'no such flow'")

    hour_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))
    page.goto(f"{srv.url}/t/{t}/executions")
    page.get_by_label("To (UTC)").fill(hour_ago)
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("No executions match these filters")
    page.get_by_label("To (UTC)").fill("")
    page.get_by_label("From (UTC)").fill(hour_ago)
    page.get_by_label("Status").select_option("failed")  # submits the form with both filters
    expect(page).to_have_url(re.compile(r"status=failed.*since=20"))
    expect(rows).to_have_count(1)

    # live: a new failure appears without reloading, and the filters stay applied
    assert httpx.post(f"{srv.url}/hooks/{t}/orders", json={"n": "live"}).status_code == 200
    assert admin.post(f"/tenants/{t}/flows/always fails/run", json={}).status_code == 202
    expect(rows).to_have_count(2, timeout=15_000)
    expect(rows.filter(has_text="orders")).to_have_count(0)


def test_a_viewer_sees_no_write_controls_and_a_forged_post_is_refused(page, srv):
    admin = signed_in_admin(srv)
    t = new_tenant(admin)
    save(admin, t, hook_flow("keep me", "keep", ["x"]))
    _, email = new_user(admin, t, "viewer")
    sign_in(page, srv.url, email, PASSWORD)
    expect(page).to_have_url(f"{srv.url}/")
    page.goto(f"{srv.url}/t/{t}/flows")
    expect(page.locator("tr[data-flow='keep me']")).to_contain_text("no")
    expect(page.get_by_role("link", name="Export")).to_be_visible()
    for name in ("Create flow", "Import", "Duplicate", "Delete keep me"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.get_by_role("switch")).to_have_count(0)
    page.goto(f"{srv.url}/t/{t}")
    expect(page.locator("[data-quota=active_flows]")).to_contain_text("0 / unlimited")

    csrf = page.locator("form.who input[name=csrf]").input_value()
    for action in ("delete", "activate", "duplicate", "create"):
        forged = page.request.post(f"{srv.url}/t/{t}/flows/{action}", headers={"origin": srv.url},
                                   form={"csrf": csrf, "name": "keep me", "new_name": "stolen"})
        assert forged.status == 403, action
    assert admin.get(f"/tenants/{t}/flows/keep me").json()["active"] is False
    assert admin.get(f"/tenants/{t}/flows/stolen").status_code == 404
    refused = admin.get(f"/tenants/{t}/audit", params={"action": "access.refused"}).json()["items"]
    assert len(refused) >= 4
