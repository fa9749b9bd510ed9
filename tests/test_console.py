"""The console's sign-in pages in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import time

import httpx
import pyotp
import pytest
from playwright.sync_api import expect

from tests.api_helpers import ADMIN, PASSWORD, Client, new_tenant, new_user, signed_in_admin, start_with_admin
from tests.browser import sign_in
from tests.conftest import Server, flowfuse, free_port

NEW_PASSWORD = "a brand new passphrase 3"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = start_with_admin(tmp_path_factory.mktemp("console") / "data", "web")
    yield srv
    srv.stop()


def test_first_run_set_up_then_sign_in_and_out(page, tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port()).start("web")
    try:
        page.goto(srv.url + "/")
        expect(page).to_have_url(f"{srv.url}/setup")
        page.get_by_label("Email").fill("first@example.com")
        page.get_by_label("Password", exact=True).fill("too short")
        page.get_by_label("Password again").fill("too short")
        page.evaluate("document.querySelectorAll('input').forEach(i => i.removeAttribute('minlength'))")
        page.get_by_role("button", name="Create administrator").click()
        expect(page.get_by_role("alert")).to_contain_text("at least 12 characters")

        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Create administrator").click()
        expect(page).to_have_url(f"{srv.url}/sign-in")

        sign_in(page, srv.url, "first@example.com", "not the password!")
        expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
        sign_in(page, srv.url, "first@example.com", PASSWORD)
        expect(page).to_have_url(f"{srv.url}/")
        row = page.get_by_role("row", name="Default")
        expect(row).to_contain_text("owner")
        expect(page.get_by_text("instance admin")).to_be_visible()

        page.goto(srv.url + "/setup")  # set-up is over: it sends people to sign in
        expect(page).to_have_url(f"{srv.url}/sign-in")
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{srv.url}/sign-in")
        page.goto(srv.url + "/")
        expect(page).to_have_url(f"{srv.url}/sign-in")
    finally:
        srv.stop()


def test_sign_in_with_a_second_factor(page, api):
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    _, email = new_user(admin, t, "editor")
    person = Client(api.url)
    person.sign_in(email)
    secret = person.post("/me/mfa").json()["secret"]
    person.post("/me/mfa/confirm", json={"code": pyotp.TOTP(secret).now()})

    sign_in(page, api.url, email, PASSWORD)
    expect(page.get_by_role("heading", name="Two-factor sign-in")).to_be_visible()
    page.get_by_label("Code").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong or already used code")
    page.goto(api.url + "/")  # the pending session is not a signed-in one
    expect(page).to_have_url(f"{api.url}/sign-in")

    sign_in(page, api.url, email, PASSWORD)
    page.get_by_label("Code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(f"{api.url}/")
    expect(page.get_by_role("row", name=t)).to_contain_text("editor")


def test_invitation_and_password_reset_links(page, api):
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    invited = admin.post(f"/tenants/{t}/invitations", json={"email": "guest@example.com", "role": "viewer"}).json()
    page.goto(invited["link"])
    page.get_by_label("Name").fill("Guest")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Accept invitation").click()
    expect(page).to_have_url(f"{api.url}/sign-in")
    sign_in(page, api.url, "guest@example.com", PASSWORD)
    expect(page.get_by_role("row", name=t)).to_contain_text("viewer")

    user_id = next(m["id"] for m in admin.get(f"/tenants/{t}/members").json() if m["email"] == "guest@example.com")
    reset = admin.post(f"/users/{user_id}/password-reset").json()
    page.goto(reset["link"])
    page.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Save password").click()
    expect(page).to_have_url(f"{api.url}/sign-in")
    page.goto(api.url + "/")  # the reset ended the session
    expect(page).to_have_url(f"{api.url}/sign-in")
    sign_in(page, api.url, "guest@example.com", NEW_PASSWORD)
    expect(page).to_have_url(f"{api.url}/")
    page.goto(reset["link"])  # one use
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Save password").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")


def test_forms_from_another_site_are_refused(api):
    forged = httpx.post(f"{api.url}/sign-in", data={"email": ADMIN, "password": PASSWORD},
                        headers={"origin": "http://evil.example"})
    assert forged.status_code == 403 and "ff_session" not in forged.cookies
    assert "must be sent from this site" in forged.text
    signed_out = httpx.post(f"{api.url}/sign-out", data={"csrf": "x"}, headers={"origin": "http://evil.example"})
    assert signed_out.status_code == 403


def test_workspace_pages_list_flows_and_executions_live_and_keep_out_strangers(page, api):
    admin = signed_in_admin(api)
    t, other = new_tenant(admin), new_tenant(admin)
    _, email = new_user(admin, t, "viewer")
    flow = {"name": "greeter", "nodes": [{"id": "start", "type": "manual"},
                                         {"id": "hi", "type": "set", "params": {"fields": {"hi": True}}}],
            "edges": [{"from": "start", "to": "hi"}]}
    assert admin.post(f"/tenants/{t}/flows", json=flow).status_code == 201
    admin.post(f"/tenants/{t}/flows", json={**flow, "name": "other"})

    sign_in(page, api.url, email, PASSWORD)
    page.get_by_role("link", name=t).click()  # a workspace opens on its dashboard
    expect(page).to_have_url(f"{api.url}/t/{t}")
    expect(page.get_by_role("link", name="Dashboard")).to_have_attribute("aria-current", "page")
    page.get_by_role("link", name="Flows").click()
    expect(page).to_have_url(f"{api.url}/t/{t}/flows")
    expect(page.get_by_role("link", name="Flows")).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("row", name="greeter")).to_contain_text("never")
    page.get_by_role("searchbox", name="Search flows").fill("greet")
    page.keyboard.press("Enter")
    expect(page.get_by_role("row", name="other")).to_have_count(0)

    page.get_by_role("link", name="Executions").click()
    expect(page.get_by_text("No executions yet.")).to_be_visible()
    execution_id = admin.post(f"/tenants/{t}/flows/greeter/run", json={}).json()["execution_id"]
    row = page.get_by_role("row", name=execution_id)
    expect(row).to_be_visible(timeout=10_000)  # arrives without a reload (htmx refreshes the rows)
    expect(row).to_contain_text("greeter")

    page.goto(f"{api.url}/t/{other}/flows")  # not a member: as if it did not exist
    expect(page.get_by_role("alert")).to_contain_text("no tenant")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert httpx.get(f"{api.url}/t/{other}/flows", cookies=cookies).status_code == 404
    page.context.clear_cookies()
    page.goto(f"{api.url}/t/{t}/executions")
    expect(page).to_have_url(f"{api.url}/sign-in?next=/t/{t}/executions")


def test_execution_detail_shows_steps_and_offers_retry_and_cancel_only_to_operators(page, api, browser):
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    _, viewer = new_user(admin, t, "viewer")
    _, operator = new_user(admin, t, "operator")
    failing = {"name": "checker", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "check", "respond": "when_done"}},
        {"id": "tag", "type": "set", "params": {"fields": {"checked": True}}},
        {"id": "stop", "type": "stop_and_error", "params": {"message": "order {{ json.order }} is not valid"}}],
        "edges": [{"from": "hook", "to": "tag"}, {"from": "tag", "to": "stop"}]}
    admin.post(f"/tenants/{t}/flows", json=failing)
    admin.post(f"/tenants/{t}/flows/checker/activate")
    httpx.post(f"{api.url}/hooks/{t}/check", json={"order": 7})  # runs inline in the web process, and fails
    execution_id = admin.get(f"/tenants/{t}/executions").json()["items"][0]["id"]

    sign_in(page, api.url, viewer, PASSWORD)
    page.goto(f"{api.url}/t/{t}/executions")
    page.get_by_role("link", name=execution_id).click()
    expect(page.get_by_role("alert")).to_contain_text("stop: order 7 is not valid")
    tag_row = page.get_by_role("row", name="tag")
    expect(tag_row).to_contain_text("succeeded")
    tag_row.get_by_text("1 out of 1 in").click()
    expect(tag_row.locator("pre")).to_contain_text('"checked": true')
    expect(page.get_by_role("button", name="Retry from the failed step")).to_have_count(0)  # a viewer may not
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    refused = httpx.post(f"{api.url}/t/{t}/executions/{execution_id}/retry", cookies=cookies,
                         data={"csrf": "guess"}, headers={"origin": api.url})
    assert refused.status_code == 403

    other = browser.new_context().new_page()
    sign_in(other, api.url, operator, PASSWORD)
    other.goto(f"{api.url}/t/{t}/executions/{execution_id}")
    other.get_by_role("button", name="Retry from the failed step").click()
    expect(other.get_by_role("heading", level=1)).to_contain_text("queued")  # no worker here: it waits
    other.get_by_role("button", name="Cancel").click()
    expect(other.get_by_role("heading", level=1)).to_contain_text("cancelled")
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit", params={"actor": operator}).json()["items"]]
    assert "execution.retry" in actions and "execution.cancel" in actions
    other.context.close()


def test_profile_turns_on_two_factor_changes_the_password_and_ends_other_sessions(page, api, browser):
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    _, email = new_user(admin, t, "viewer")
    elsewhere = Client(api.url)
    elsewhere.sign_in(email)

    sign_in(page, api.url, email, PASSWORD)
    page.get_by_role("link", name=email).click()
    expect(page).to_have_url(f"{api.url}/profile")
    expect(page.get_by_role("row")).to_have_count(3)  # the header and two sessions
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    expect(page.locator(".qr svg")).to_be_visible()
    secret = page.get_by_label("Manual key").inner_text()
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("list", name="Recovery codes").get_by_role("listitem")).to_have_count(10)

    page.get_by_label("Current password").fill("not it at all, sorry")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("is not your current password")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Your password is changed")
    assert elsewhere.get("/me").status_code == 401  # the other session ended; this one goes on
    page.reload()  # a plain GET: the form is not sent again, and this session is still signed in
    expect(page).to_have_url(f"{api.url}/profile?done=password")
    expect(page.get_by_role("heading", name="Your profile")).to_be_visible()

    fresh = browser.new_context().new_page()
    sign_in(fresh, api.url, email, NEW_PASSWORD)
    expect(fresh.get_by_role("heading", name="Two-factor sign-in")).to_be_visible()
    fresh.context.close()
