"""Screenshots of the console's main pages for the README: `make screenshots` (not a test).

Starts a real `flowfuse serve` over a temporary data directory, fills it with a few flows and real
executions (webhook calls and manual runs, some failing), a credential and some members, signs in
with Debian's Chromium through Playwright and writes one PNG a page to docs/screenshots/. A page
that does not exist yet (404) is skipped with a note, so the script screenshots what is built.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from tests.api_helpers import ADMIN, PASSWORD, Client, start_with_admin
from tests.browser import CHROMIUM, FLAGS

OUT = ROOT / "docs" / "screenshots"
TENANT = "default"
ORDERS = {"name": "Large order -> Slack", "tags": ["sales", "alerts"], "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "orders", "method": "POST"}},
    {"id": "big", "type": "if", "params": {"condition": "{{ json.total > 100 }}"}},
    {"id": "note", "type": "set", "params": {"fields": {"message": "Order {{ json.id }}: {{ json.total }}"}}},
], "edges": [{"from": "hook", "to": "big"}, {"from": "big", "output": "true", "to": "note"}]}
REPORT = {"name": "Nightly sales report", "tags": ["sales", "nightly"], "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "sum", "type": "set", "params": {"fields": {"day": "{{ now() }}", "orders": 42}}},
], "edges": [{"from": "start", "to": "sum"}]}
SYNC = {"name": "CRM sync", "tags": ["crm"], "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "fail", "type": "stop_and_error", "params": {"message": "CRM answered 503 Service Unavailable"}},
], "edges": [{"from": "start", "to": "fail"}]}


def fill(url: str) -> dict[str, str]:
    """Sample flows, executions, a credential and members, made through the API and webhooks."""
    admin = signed_in_admin_at(url)
    for flow in (ORDERS, REPORT, SYNC):
        admin.post(f"/tenants/{TENANT}/flows", json=flow).raise_for_status()
    admin.post(f"/tenants/{TENANT}/flows/{ORDERS['name']}/activate").raise_for_status()
    for i, total in enumerate([250, 40, 120, 980, 15, 310, 77, 130]):
        httpx.post(f"{url}/hooks/{TENANT}/orders", json={"id": f"o-{1000 + i}", "total": total}).raise_for_status()
    for flow in (REPORT, REPORT, SYNC, SYNC):
        admin.post(f"/tenants/{TENANT}/flows/{flow['name']}/run", json={"input": {}}).raise_for_status()
    admin.post(f"/tenants/{TENANT}/credentials", json={"name": "slack-sales", "type": "bearer",
                                                         "data": {"token": "xoxb-example-not-real"}}).raise_for_status()
    for email, role in (("ada@example.com", "editor"), ("grace@example.com", "operator"), ("linus@example.com", "viewer")):
        made = admin.post("/users", json={"email": email, "password": PASSWORD})
        if made.status_code == 201:
            admin.put(f"/tenants/{TENANT}/members/{made.json()['id']}", json={"role": role}).raise_for_status()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        items = admin.get(f"/tenants/{TENANT}/executions", params={"limit": 100}).json()["items"]
        if items and all(e["status"] in ("succeeded", "failed") for e in items) and len(items) >= 12:
            break
        time.sleep(0.2)
    failed = next((e["id"] for e in items if e["status"] == "failed"), items[0]["id"])
    succeeded = next((e["id"] for e in items if e["status"] == "succeeded"), items[0]["id"])
    return {"failed": failed, "succeeded": succeeded}


def signed_in_admin_at(url: str) -> Client:
    client = Client(url)
    assert client.sign_in(ADMIN).status_code == 201
    return client


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowfuse-shots-") as tmp:
        srv = start_with_admin(Path(tmp) / "data", "serve")
        try:
            ids = fill(srv.url)
            base = f"/t/{TENANT}"
            pages = [
                ("dashboard", base),
                ("flows", f"{base}/flows"),
                ("executions", f"{base}/executions"),
                ("execution", f"{base}/executions/{ids['failed']}"),
                ("builder", f"{base}/flows/{ORDERS['name'].replace(' ', '%20').replace('>', '%3E')}/edit"),
                ("credentials", f"{base}/credentials"),
                ("members", f"{base}/members"),
                ("audit", f"{base}/audit"),
                ("profile", "/profile"),
            ]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
                page = context.new_page()
                page.goto(f"{srv.url}/sign-in")
                shoot(page, "sign-in")
                page.get_by_label("Email").fill(ADMIN)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{srv.url}/")
                for name, path in pages:
                    response = page.goto(srv.url + path)
                    if response is None or response.status >= 400:
                        print(f"  skipped {name}: {path} answered {response.status if response else 'nothing'} "
                              "(not built yet?)")
                        continue
                    try:  # a page with a live stream never goes idle: give it a moment, then shoot
                        page.wait_for_load_state("networkidle", timeout=3000)
                    except PlaywrightTimeout:
                        pass
                    shoot(page, name)
                browser.close()
        finally:
            srv.stop()


def shoot(page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"  wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
