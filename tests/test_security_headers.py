"""Security headers and a strict Content-Security-Policy on every response of a real `flowfuse serve`,
and the console's main pages in a real browser (Debian's Chromium through Playwright) loading and
working with no CSP violation."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api_helpers import ADMIN, PASSWORD, new_tenant, signed_in_admin, start_with_admin
from tests.browser import sign_in

STRICT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
              "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_with_admin(tmp_path_factory.mktemp("headers") / "data", "serve")
    yield server
    server.stop()


@pytest.fixture
def admin(srv):
    return signed_in_admin(srv)


def directives(csp: str) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part.partition(" ")[2] for part in (p.strip() for p in csp.split(";")) if part}


def assert_secured(r: httpx.Response, csp: str = STRICT_CSP) -> None:
    assert r.headers.get_list("content-security-policy") == [csp], r.url
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["x-frame-options"] == "DENY"
    assert "camera=()" in r.headers["permissions-policy"]
    assert "strict-transport-security" not in r.headers, "HSTS over plain HTTP"


def test_every_kind_of_response_carries_the_headers_and_no_hsts_over_http(srv, admin):
    t = new_tenant(admin)
    admin.post(f"/tenants/{t}/flows", json={"name": "echo", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "echo"}}], "edges": []})
    admin.post(f"/tenants/{t}/flows/echo/activate")
    pages = [srv.url + "/sign-in", srv.url + "/healthz", srv.url + "/static/css/console.css",
             srv.url + "/api/openapi.json", srv.url + "/no/such/page"]
    for url in pages:
        assert_secured(httpx.get(url))
    assert_secured(admin.get(f"/tenants/{t}/flows"))  # the REST API
    # webhooks (the hot path, outside Litestar) answer with a flow's content: a sandbox that allows nothing
    hook = httpx.post(f"{srv.url}/hooks/{t}/echo", json={"a": 1})
    assert hook.status_code < 500, hook.text
    missing = httpx.post(f"{srv.url}/hooks/{t}/nothing-here", json={})  # and its errors
    for r in (hook, missing):
        assert r.headers.get_list("content-security-policy") == ["default-src 'none'; frame-ancestors 'none'; sandbox"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-request-id"]
        assert "strict-transport-security" not in r.headers, "HSTS over plain HTTP"


def test_a_webhook_answering_html_runs_no_script_on_this_origin(page: Page, srv, admin):
    """A flow that answers text/html with the caller's input (a stored XSS waiting to happen) cannot run
    script, load anything or reach the console's cookies: the webhook CSP is an empty sandbox."""
    t = new_tenant(admin)
    admin.post(f"/tenants/{t}/flows", json={"name": "page", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "page", "method": "GET"}},
        {"id": "answer", "type": "respond_to_webhook", "params": {
            "headers": {"content-type": "text/html"},
            "body": "<h1>{{ json.name }}</h1>"}}], "edges": [{"from": "hook", "to": "answer"}]})
    assert admin.post(f"/tenants/{t}/flows/page/activate").status_code == 200
    violations = watch_csp(page)
    hostile = "<script>document.title='ran'</script><img src=/static/css/console.css>"
    page.goto(f"{srv.url}/hooks/{t}/page?name={quote(hostile)}")
    expect(page.locator("h1")).to_be_attached()  # the page itself is shown
    assert page.title() != "ran"
    assert page.evaluate("() => document.domain") == ""  # sandboxed: an opaque origin, no cookies of ours
    assert any("console.css" in v for v in violations), violations  # and it loads nothing either


def test_only_the_api_docs_get_the_relaxations_redoc_needs(srv):
    r = httpx.get(srv.url + "/api/docs")
    assert r.status_code == 200
    docs = directives(r.headers["content-security-policy"])
    strict = directives(STRICT_CSP)
    assert docs["script-src"] == "'self'"  # no inline script even here: Redoc reads the schema from spec-url
    assert docs["style-src"] == "'self' 'unsafe-inline'"  # Redoc creates <style> elements
    assert docs["worker-src"] == "blob:"  # Redoc's search worker
    assert {k: v for k, v in docs.items() if k not in ("style-src", "worker-src")} == \
        {k: v for k, v in strict.items() if k != "style-src"}
    assert "<script>" not in r.text and "<script type" not in r.text and "spec-url='/api/openapi.json'" in r.text


def watch_csp(page: Page) -> list[str]:
    """The console messages of CSP violations (Chromium reports each one there)."""
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    return violations


def test_the_main_pages_load_and_work_with_no_csp_violation(page: Page, srv, admin):
    t = new_tenant(admin)
    flow = {"name": "shown", "nodes": [
        {"id": "start", "type": "manual", "position": [0, 0]},
        {"id": "double", "type": "set", "params": {"fields": {"n": "{{ json.n * 2 }}"}}, "position": [260, 0]}],
        "edges": [{"from": "start", "to": "double"}]}
    assert admin.post(f"/tenants/{t}/flows", json=flow).status_code == 201
    execution_id = admin.post(f"/tenants/{t}/flows/shown/run", json={"input": [{"n": 4}]}).json()["execution_id"]
    violations = watch_csp(page)

    page.goto(srv.url + "/sign-in")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    sign_in(page, srv.url, ADMIN, PASSWORD)
    expect(page.get_by_role("link", name="FlowFuse")).to_be_visible()

    page.goto(f"{srv.url}/t/{t}")  # dashboard
    expect(page.locator("main")).to_be_visible()
    page.goto(f"{srv.url}/t/{t}/flows")
    expect(page.get_by_text("shown").first).to_be_visible()
    page.goto(f"{srv.url}/t/{t}/executions")  # htmx refreshes this list while runs are live
    expect(page.locator("main")).to_be_visible()

    page.set_viewport_size({"width": 1600, "height": 1000})
    page.goto(f"{srv.url}/t/{t}/flows/shown/edit")  # the builder draws the flow's nodes
    expect(page.locator("#builder")).to_have_attribute("data-ready", "yes")
    expect(page.locator('.node[data-node-id="double"]')).to_be_visible()
    expect(page.locator(".node")).to_have_count(2)

    page.goto(f"{srv.url}/t/{t}/executions/{execution_id}")  # the execution view draws and colours them
    expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded", timeout=20_000)
    expect(page.locator('.node[data-node-id="double"]')).to_have_attribute("data-status", "succeeded")

    page.goto(f"{srv.url}/t/{t}/credentials")
    kinds = page.get_by_label("Type").locator("option").all_inner_texts()
    page.get_by_label("Type").select_option(kinds[-1])  # manage.js (a script file) submits the choice
    expect(page).to_have_url(f"{srv.url}/t/{t}/credentials?type={kinds[-1]}")

    assert violations == []

    page.goto(srv.url + "/api/docs")  # Redoc, from this server, with its scoped relaxations
    expect(page.get_by_text("FlowFuse API").first).to_be_visible(timeout=20_000)
    expect(page.locator("[data-section-id]").first).to_be_attached(timeout=20_000)  # the operations are drawn
    page.get_by_placeholder("Search...").fill("flows")  # the search runs in its blob: worker
    expect(page.get_by_role("menuitem", name="Flows", exact=True)).to_be_visible(timeout=20_000)
    # Redoc's bundle always asks for its "by Redocly" logo from cdn.redoc.ly; the CSP keeps that request from
    # leaving the server (an air-gapped host could not reach it anyway) and Redoc drops the image. Nothing else.
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in v and "img-src" in v for v in violations), violations
