"""The workspace management and instance admin pages in a real browser (Debian's Chromium through
Playwright) against a real `flowfuse serve`: credentials, variables, members and invitations, API
keys, the audit log, settings, and the instance pages."""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pyotp
import pytest
from playwright.sync_api import Page, expect

from tests.api_helpers import ADMIN as ADMIN_EMAIL
from tests.api_helpers import PASSWORD, Client, new_key, new_tenant, new_user, signed_in_admin, start_with_admin
from tests.browser import sign_in

SECRET = "tok-9f3b2c-very-secret-value"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_with_admin(tmp_path_factory.mktemp("manage") / "data", "serve")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(srv):
    return signed_in_admin(srv)


def accept_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())


def session_of(page: Page) -> tuple[dict[str, str], str]:
    """The browser's session cookie and the CSRF token its pages put in every form."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return cookies, page.locator("input[name=csrf]").first.input_value()


def forge(srv, page: Page, path: str, **fields: str) -> httpx.Response:
    """A form post made outside the page's controls, with the person's own cookie and CSRF token."""
    cookies, csrf = session_of(page)
    return httpx.post(srv.url + path, data={"csrf": csrf, **fields}, cookies=cookies, headers={"origin": srv.url})


def test_an_editor_manages_credentials_without_ever_seeing_a_secret_again(page, srv, admin, peer):
    t = new_tenant(admin)
    _, editor = new_user(admin, t, "editor")
    peer.behave["/me"] = lambda count, r: ((200, {"me": "ok"}, 0) if r["headers"].get("Authorization") ==
                                          f"Bearer {SECRET}" else (401, {"error": "no"}, 0))
    sign_in(page, srv.url, editor, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/credentials")
    expect(page.get_by_text("No credentials yet.")).to_be_visible()
    page.get_by_label("Type").select_option("bearer")  # the form is generated from the type's fields
    expect(page).to_have_url(f"{srv.url}/t/{t}/credentials?type=bearer")
    token = page.get_by_label("Token")
    expect(token).to_have_attribute("type", "password")
    expect(token).to_have_attribute("required", "")
    expect(page.get_by_label("User name")).to_have_count(0)

    page.get_by_label("Name", exact=True).fill("peer-token")
    page.get_by_role("button", name="Save credential").click()  # the browser asks for the required token
    expect(page.get_by_role("status")).to_have_count(0)
    token.fill(SECRET)
    page.get_by_role("button", name="Save credential").click()
    expect(page.get_by_role("status")).to_contain_text("Credential saved.")
    row = page.get_by_role("row", name="peer-token")
    expect(row).to_contain_text("bearer")
    expect(row).to_contain_text("token")
    assert SECRET not in page.content()

    row.get_by_role("link", name="Edit peer-token").click()
    expect(page.get_by_role("heading", name="peer-token")).to_be_visible()
    expect(page.get_by_label("Token")).to_have_value("")
    assert SECRET not in page.content()
    page.get_by_label("URL").fill(peer.url + "/me")
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_role("status", name="Test result")).to_have_text("Works: HTTP 200")
    assert peer.of("/me")[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"

    page.get_by_label("Name", exact=True).fill("peer-bearer")  # rename; the blank token keeps its value
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_contain_text("Credential saved.")
    expect(page.get_by_role("heading", name="peer-bearer")).to_be_visible()
    page.get_by_label("URL").fill(peer.url + "/me")
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_role("status", name="Test result")).to_have_text("Works: HTTP 200")
    page.get_by_label("Token").fill("not the right one")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_label("URL").fill(peer.url + "/me")
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_role("status", name="Test result")).to_have_text("Refused: HTTP 401")
    assert SECRET not in page.content() and "not the right one" not in page.content()

    listed = admin.get(f"/tenants/{t}/credentials").json()
    assert [(c["name"], c["type"], c["fields"]) for c in listed] == [("peer-bearer", "bearer", ["token"])]
    entries = admin.get(f"/tenants/{t}/audit", params={"action": "credential."}).json()["items"]
    assert [e["action"] for e in entries] == ["credential.test", "credential.update", "credential.test",
                                              "credential.update", "credential.test", "credential.set"]
    assert entries[0]["outcome"] == "failed" and entries[0]["actor_label"] == editor

    accept_dialogs(page)
    page.get_by_role("button", name="Delete credential").click()
    expect(page.get_by_role("status")).to_contain_text("Credential deleted.")
    expect(page.get_by_text("No credentials yet.")).to_be_visible()
    assert admin.get(f"/tenants/{t}/credentials").json() == []


def test_generic_credentials_take_named_fields_and_a_bad_form_says_why(page, srv, admin):
    t = new_tenant(admin)
    _, editor = new_user(admin, t, "editor")
    sign_in(page, srv.url, editor, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/credentials?type=generic")
    page.get_by_label("Name", exact=True).fill("misc")
    page.get_by_role("group", name="Field 1").get_by_label("Field name").fill("api_secret")
    page.get_by_role("group", name="Field 1").get_by_label("Value").fill(SECRET)
    page.get_by_role("group", name="Field 2").get_by_label("Value").fill("orphan value")
    page.get_by_role("button", name="Save credential").click()
    expect(page.get_by_role("alert")).to_contain_text("other field 2 has a value but no name")
    assert SECRET not in page.content()
    page.get_by_label("Name", exact=True).fill("misc")
    page.get_by_role("group", name="Field 1").get_by_label("Field name").fill("api_secret")
    page.get_by_role("group", name="Field 1").get_by_label("Value").fill(SECRET)
    page.get_by_role("button", name="Save credential").click()
    expect(page.get_by_role("row", name="misc")).to_contain_text("api_secret")

    page.goto(f"{srv.url}/t/{t}/credentials?type=basic")  # the vault's own check: a required field left out
    page.get_by_label("Name", exact=True).fill("half")
    page.get_by_label("User name").fill("alice")
    page.evaluate("document.querySelectorAll('input').forEach(i => i.removeAttribute('required'))")
    page.get_by_role("button", name="Save credential").click()
    expect(page.get_by_role("alert")).to_contain_text("field 'password' is required for a basic credential")
    expect(page.get_by_label("User name")).to_have_value("alice")  # not secret: kept for the next try


def test_variables_are_set_and_deleted(page, srv, admin):
    t = new_tenant(admin)
    _, editor = new_user(admin, t, "editor")
    sign_in(page, srv.url, editor, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/variables")
    page.get_by_label("Name").fill("region")
    page.get_by_label("Value").fill("eu-west")
    page.get_by_role("button", name="Save variable").click()
    expect(page.get_by_role("status")).to_contain_text("Variable saved.")
    expect(page.get_by_role("row", name="region")).to_contain_text('"eu-west"')
    page.get_by_label("Name").fill("limits")
    page.get_by_label("Value").fill('{"max": 3}')
    page.get_by_label("Read it as").select_option("json")
    page.get_by_role("button", name="Save variable").click()
    expect(page.get_by_role("row", name="limits")).to_contain_text('{"max": 3}')
    assert admin.get(f"/tenants/{t}/variables").json() == {"limits": {"max": 3}, "region": "eu-west"}

    page.get_by_label("Name").fill("9lives")
    page.get_by_label("Name").evaluate("i => i.removeAttribute('pattern')")
    page.get_by_label("Value").fill("x")
    page.get_by_role("button", name="Save variable").click()
    expect(page.get_by_role("alert")).to_contain_text("use letters, digits and underscores")
    page.get_by_label("Name").fill("broken")
    page.get_by_label("Value").fill("{not json")
    page.get_by_label("Read it as").select_option("json")
    page.get_by_role("button", name="Save variable").click()
    expect(page.get_by_role("alert")).to_contain_text("is not valid JSON")

    accept_dialogs(page)
    page.get_by_role("button", name="Delete region").click()
    expect(page.get_by_role("status")).to_contain_text("Variable deleted.")
    expect(page.get_by_role("row", name="region")).to_have_count(0)
    assert admin.get(f"/tenants/{t}/variables").json() == {"limits": {"max": 3}}
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit", params={"action": "variable."}).json()["items"]]
    assert actions == ["variable.delete", "variable.set", "variable.set"]


def test_an_owner_invites_changes_roles_and_the_last_owner_stays(page, srv, admin, browser):
    t = new_tenant(admin)
    owner_id, owner = new_user(admin, t, "owner")
    sign_in(page, srv.url, owner, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/members")
    invitee = f"new-{t}@example.com"
    page.get_by_label("Email").fill(invitee)
    page.get_by_label("Role", exact=True).select_option("editor")
    page.get_by_role("button", name="Invite").click()
    link = page.get_by_label("Invitation link").input_value()
    assert link.startswith(f"{srv.url}/invitations/")
    expect(page.get_by_role("table", name="Pending invitations")).to_contain_text(invitee)
    page.goto(f"{srv.url}/t/{t}/members")  # shown once: the page does not show it again
    expect(page.get_by_label("Invitation link")).to_have_count(0)

    guest = browser.new_context().new_page()
    guest.goto(link)
    guest.get_by_label("Name").fill("New Person")
    guest.get_by_label("Password").fill(PASSWORD)
    guest.get_by_role("button", name="Accept invitation").click()
    expect(guest).to_have_url(f"{srv.url}/sign-in")
    sign_in(guest, srv.url, invitee, PASSWORD)
    expect(guest.get_by_role("row", name=t)).to_contain_text("editor")
    guest.context.close()

    page.goto(f"{srv.url}/t/{t}/members")
    expect(page.get_by_role("table", name="Pending invitations")).to_contain_text("No pending invitations.")
    page.get_by_label(f"Role of {invitee}", exact=True).select_option("operator")
    page.get_by_role("button", name=f"Change role of {invitee}").click()
    expect(page.get_by_role("status")).to_contain_text("Role changed.")
    expect(page.get_by_label(f"Role of {invitee}", exact=True)).to_have_value("operator")
    roles = {m["email"]: m["role"] for m in admin.get(f"/tenants/{t}/members").json()}
    assert roles == {owner: "owner", invitee: "operator"}

    page.get_by_label(f"Role of {owner}", exact=True).select_option("admin")  # the only owner
    page.get_by_role("button", name=f"Change role of {owner}").click()
    expect(page.get_by_role("alert")).to_have_text("the last owner cannot be removed or demoted; make someone else "
                                                   "owner first")
    accept_dialogs(page)
    page.get_by_role("button", name=f"Remove {owner}").click()
    expect(page.get_by_role("alert")).to_contain_text("the last owner cannot be removed or demoted")
    assert {m["email"]: m["role"] for m in admin.get(f"/tenants/{t}/members").json()}[owner] == "owner"

    page.get_by_label("Email").fill("later@example.com")  # withdrawn: the link stops working
    page.get_by_role("button", name="Invite").click()
    withdrawn = page.get_by_label("Invitation link").input_value()
    page.get_by_role("button", name="Withdraw the invitation for later@example.com").click()
    expect(page.get_by_role("status")).to_contain_text("Invitation withdrawn.")
    other = browser.new_context().new_page()
    other.goto(withdrawn)
    other.get_by_label("Password").fill(PASSWORD)
    other.get_by_role("button", name="Accept invitation").click()
    expect(other.get_by_role("alert")).to_contain_text("not valid or was already used")
    other.context.close()
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit").json()["items"] if e["actor_id"] == owner_id]
    assert actions[:4] == ["invitation.revoke", "invitation.create", "member.set_role", "invitation.create"]


def test_an_admin_cannot_grant_owner(page, srv, admin):
    t = new_tenant(admin)
    new_user(admin, t, "owner")
    _, manager = new_user(admin, t, "admin")
    other_id, other = new_user(admin, t, "viewer")
    sign_in(page, srv.url, manager, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/members")
    options = page.get_by_label(f"Role of {other}", exact=True).locator("option").all_inner_texts()
    assert options == ["viewer", "operator", "editor", "admin"]
    refused = forge(srv, page, f"/t/{t}/members/{other_id}/role", role="owner")
    assert refused.status_code == 403 and "only an owner can grant or change the owner role" in refused.text
    assert {m["email"]: m["role"] for m in admin.get(f"/tenants/{t}/members").json()}[other] == "viewer"


def test_api_keys_are_shown_once_work_and_stop_when_revoked(page, srv, admin):
    t = new_tenant(admin)
    _, manager = new_user(admin, t, "admin")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=srv.url)
    sign_in(page, srv.url, manager, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/keys")
    expect(page.get_by_label("Role")).to_contain_text("admin")
    assert "owner" not in page.get_by_label("Role").locator("option").all_inner_texts()  # not above the creator's
    page.get_by_label("Name").fill("deploy bot")
    page.get_by_label("Role").select_option("editor")
    page.get_by_label("Expires").fill((dt.date.today() + dt.timedelta(days=30)).isoformat())
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("New API key").input_value()
    assert key.startswith("ffk_")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.get_by_role("row", name="deploy bot")
    expect(row).to_contain_text(key[:12])
    expect(row).to_contain_text("editor")
    expect(row).to_contain_text("never")  # not used yet

    api = httpx.Client(base_url=f"{srv.url}/api/v1", headers={"authorization": f"Bearer {key}"})
    assert api.get(f"/tenants/{t}/flows").status_code == 200
    assert api.put(f"/tenants/{t}/variables/set_by_key", json={"value": 1}).status_code == 200
    page.goto(f"{srv.url}/t/{t}/keys")  # shown once: never again
    assert key not in page.content()
    expect(page.get_by_role("row", name="deploy bot").locator("td").nth(4)).not_to_have_text("never")  # last used

    accept_dialogs(page)
    page.get_by_role("button", name="Revoke deploy bot").click()
    expect(page.get_by_role("status")).to_contain_text("Key revoked")
    expect(page.get_by_role("row", name="deploy bot")).to_contain_text("revoked")
    refused = api.get(f"/tenants/{t}/flows")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit", params={"action": "api_key."}).json()["items"]]
    assert actions == ["api_key.revoke", "api_key.create"]


def test_the_audit_log_shows_filters_pages_and_exports_with_the_chain_checked(page, srv, admin):
    t = new_tenant(admin)
    _, owner = new_user(admin, t, "owner")
    for i in range(55):
        assert admin.put(f"/tenants/{t}/variables/v{i}", json={"value": i}).status_code == 200
    sign_in(page, srv.url, owner, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/variables")
    page.get_by_label("Name").fill("by_owner")
    page.get_by_label("Value").fill("yes")
    page.get_by_role("button", name="Save variable").click()

    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("status", name="Chain status")).to_contain_text("Chain verified")
    table = page.get_by_role("table", name="Audit entries")
    expect(table.locator("tbody tr")).to_have_count(50)
    first = table.locator("tbody tr").first
    expect(first).to_contain_text("variable.set")
    expect(first).to_contain_text(owner)
    expect(first).to_contain_text("by_owner")
    page.get_by_role("link", name="Older entries").click()
    expect(table.locator("tbody tr").last).to_contain_text("tenant.create")  # the first entry of this workspace

    page.get_by_label("Actor").fill(owner)
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    page.get_by_label("Actor").fill("")
    page.get_by_label("Action").fill("member.")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("member.set_role")
    page.get_by_label("Action").fill("")
    page.get_by_label("Target").fill("v7")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("variable v7")
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("Target").fill("")
    page.get_by_label("From (UTC)").fill(tomorrow)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No entries match these filters.")).to_be_visible()
    page.get_by_label("From (UTC)").fill("")
    page.get_by_label("To (UTC)").fill(tomorrow)
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(50)

    with page.expect_download() as got:
        page.get_by_role("link", name="CSV").click()
    csv_text = got.value.path().read_text()
    assert got.value.suggested_filename == f"audit-{t}.csv"
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("seq,") and len(lines) == 1 + 1 + 1 + 55 + 1  # create, member, 55 + 1 variables
    assert "by_owner" in lines[-1]
    with page.expect_download() as got:
        page.get_by_role("link", name="JSON lines").click()
    entries = [json.loads(line) for line in got.value.path().read_text().splitlines()]
    assert [e["action"] for e in entries[:2]] == ["tenant.create", "member.set_role"]
    assert entries[-1]["target_id"] == "by_owner" and len(entries) == 58


def test_a_viewer_sees_no_edit_controls_and_forged_posts_are_refused(page, srv, admin):
    t = new_tenant(admin)
    viewer_id, viewer = new_user(admin, t, "viewer")
    admin.put(f"/tenants/{t}/variables/kept", json={"value": 1})
    cid = admin.post(f"/tenants/{t}/credentials", json={"name": "c", "type": "bearer",
                                                          "data": {"token": SECRET}}).json()["id"]
    sign_in(page, srv.url, viewer, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/credentials")
    expect(page.get_by_role("row", name="c bearer")).to_be_visible()
    expect(page.get_by_role("button", name="Save credential")).to_have_count(0)
    expect(page.get_by_role("link", name="Edit c")).to_have_count(0)
    nav = page.get_by_role("navigation")
    for tab in ("API keys", "Audit log", "Settings", "Instance"):
        expect(nav.get_by_role("link", name=tab)).to_have_count(0)
    page.get_by_role("link", name="Variables").click()
    expect(page.get_by_role("row", name="kept")).to_be_visible()
    expect(page.get_by_role("button", name="Save variable")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete kept")).to_have_count(0)
    page.get_by_role("link", name="Members").click()
    expect(page.get_by_role("row", name=viewer)).to_contain_text("viewer")
    expect(page.get_by_role("button", name="Invite")).to_have_count(0)
    expect(page.get_by_role("combobox", name=f"Role of {viewer}")).to_have_count(0)
    page.goto(f"{srv.url}/t/{t}/credentials/{cid}")
    expect(page.get_by_role("alert")).to_contain_text("the viewer role may not do credentials.write")
    page.goto(f"{srv.url}/t/{t}/keys")
    expect(page.get_by_role("alert")).to_contain_text("may not do api_keys.manage")

    page.goto(f"{srv.url}/t/{t}/variables")
    for path, fields in ((f"/t/{t}/credentials", {"name": "x", "type": "bearer", "field.token": "y"}),
                         (f"/t/{t}/credentials/{cid}/delete", {}),
                         (f"/t/{t}/credentials/{cid}/test", {"url": "http://127.0.0.1:9/"}),
                         (f"/t/{t}/variables", {"name": "forged", "value": "1"}),
                         (f"/t/{t}/variables/kept/delete", {}),
                         (f"/t/{t}/invitations", {"email": "x@example.com", "role": "owner"}),
                         (f"/t/{t}/members/{viewer_id}/role", {"role": "owner"}),
                         (f"/t/{t}/keys", {"name": "mine", "role": "viewer"}),
                         (f"/t/{t}/settings/security", {"require_mfa": "on"}),
                         ("/admin/tenants", {"slug": f"{t}-forged"})):
        refused = forge(srv, page, path, **fields)
        assert refused.status_code == 403, (path, refused.status_code)
    cookies, _ = session_of(page)
    no_token = httpx.post(f"{srv.url}/t/{t}/variables", data={"name": "forged", "value": "1"}, cookies=cookies,
                          headers={"origin": srv.url})
    assert no_token.status_code == 403 and "token does not match" in no_token.text
    assert admin.get(f"/tenants/{t}/variables").json() == {"kept": 1}
    assert [c["name"] for c in admin.get(f"/tenants/{t}/credentials").json()] == ["c"]
    assert admin.get(f"/tenants/{t}/api-keys").json() == [] and admin.get(f"/tenants/{t}/invitations").json() == []
    refusals = admin.get(f"/tenants/{t}/audit", params={"action": "access.refused", "actor": viewer}).json()["items"]
    assert len(refusals) >= 9


def test_settings_rename_require_two_factor_and_quotas_for_instance_admins(page, srv, admin, browser):
    t = new_tenant(admin)
    _, owner = new_user(admin, t, "owner")
    person = Client(srv.url)
    person.sign_in(owner)
    secret = person.post("/me/mfa").json()["secret"]
    person.post("/me/mfa/confirm", json={"code": pyotp.TOTP(secret).now()})
    _, no_mfa = new_user(admin, t, "editor")
    checker = Client(srv.url, new_key(admin, t, "owner"))  # keys need no second factor; sessions will
    sign_in(page, srv.url, owner, PASSWORD)
    page.get_by_label("Code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(f"{srv.url}/")

    page.goto(f"{srv.url}/t/{t}/settings")
    page.get_by_label("Workspace name").fill("Renamed Team")
    page.get_by_role("button", name="Save name").click()
    expect(page.get_by_role("status")).to_contain_text("Name saved.")
    assert admin.get(f"/tenants/{t}").json()["name"] == "Renamed Team"

    mfa = page.get_by_label("Require two-factor sign-in")
    expect(mfa).not_to_be_checked()
    mfa.check()
    page.get_by_role("button", name="Save security settings").click()
    expect(page.get_by_role("status")).to_contain_text("Security settings saved.")
    expect(page.get_by_label("Require two-factor sign-in")).to_be_checked()
    assert checker.get(f"/tenants/{t}/settings").json() == {"require_mfa": True}
    assert admin.get(f"/tenants/{t}/settings").status_code == 403  # the admin's session has no second factor
    other = browser.new_context().new_page()
    sign_in(other, srv.url, no_mfa, PASSWORD)
    other.goto(f"{srv.url}/t/{t}/variables")
    expect(other.get_by_role("alert")).to_contain_text("requires two-factor sign-in")
    other.context.close()
    page.get_by_label("Require two-factor sign-in").uncheck()
    page.get_by_role("button", name="Save security settings").click()
    expect(page.get_by_label("Require two-factor sign-in")).not_to_be_checked()
    assert checker.get(f"/tenants/{t}/settings").json() == {"require_mfa": False}

    quotas = page.get_by_role("table", name="Quotas")  # an owner sees them; instance admins change them
    expect(quotas.get_by_role("row", name="retention days")).to_contain_text("instance default")
    expect(page.get_by_role("button", name="Save quotas")).to_have_count(0)
    refused = forge(srv, page, f"/t/{t}/settings/quotas", **{"quota.executions_per_month": "999999"})
    assert refused.status_code == 403 and "changing quotas is for instance admins" in refused.text

    page.context.clear_cookies()
    sign_in(page, srv.url, ADMIN_EMAIL, PASSWORD)
    page.goto(f"{srv.url}/t/{t}/settings")
    page.get_by_label("Override executions per month").fill("100")
    page.get_by_label("Override retention days").fill("7")
    page.get_by_role("button", name="Save quotas").click()
    expect(page.get_by_role("status")).to_contain_text("Quotas saved.")
    expect(quotas.get_by_role("row", name="executions per month")).to_contain_text("this workspace")
    view = admin.get(f"/tenants/{t}/quotas").json()["quotas"]
    assert view["executions_per_month"] == {"limit": 100, "unlimited": False, "source": "tenant"}
    assert view["retention_days"]["limit"] == 7
    page.get_by_label("Override retention days").fill("soon")
    page.get_by_label("Override retention days").evaluate("i => i.removeAttribute('pattern')")
    page.get_by_role("button", name="Save quotas").click()
    expect(page.get_by_role("alert")).to_contain_text("must be a whole number of 0 or more")
    page.get_by_label("Override retention days").fill("")
    page.get_by_role("button", name="Save quotas").click()
    expect(quotas.get_by_role("row", name="retention days")).to_contain_text("instance default")
    assert admin.get(f"/tenants/{t}/quotas").json()["quotas"]["retention_days"]["source"] == "instance"


def test_instance_admin_pages(page, srv, admin, browser):
    sign_in(page, srv.url, ADMIN_EMAIL, PASSWORD)
    page.goto(f"{srv.url}/admin")
    health = page.get_by_role("definition").first
    expect(health).to_contain_text("alive")  # `serve` runs the worker beside the web process
    expect(page.get_by_text("last heartbeat")).to_be_visible()
    expect(page.get_by_text("FlowFuse 0.1.0")).to_be_visible()
    files = page.get_by_role("table", name="Database files")
    for name in ("flowfuse.db", "runs.db", "audit.db", "queue.db"):
        expect(files.get_by_role("cell", name=name, exact=True)).to_be_visible()
    expect(page.get_by_text("waiting,")).to_be_visible()

    page.get_by_role("link", name="Workspaces", exact=True).click()
    slug = "made-in-console"
    page.get_by_label("Slug (its address)").fill("Bad Slug!")
    page.get_by_label("Slug (its address)").evaluate("i => i.removeAttribute('pattern')")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("alert")).to_contain_text("use 3-40 lowercase letters")
    page.get_by_label("Slug (its address)").fill(slug)
    page.get_by_label("Name", exact=True).fill("Made here")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("status")).to_contain_text("Workspace created.")
    row = page.get_by_role("row", name=slug)
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("retention days: 30")
    assert admin.get(f"/tenants/{slug}").json()["name"] == "Made here"

    accept_dialogs(page)
    row.get_by_role("button", name=f"Suspend {slug}").click()
    expect(page.get_by_role("status")).to_contain_text("Workspace suspended")
    expect(page.get_by_role("row", name=slug)).to_contain_text("suspended")
    assert admin.get(f"/tenants/{slug}").json()["status"] == "suspended"
    page.get_by_role("row", name=slug).get_by_role("button", name=f"Resume {slug}").click()
    expect(page.get_by_role("row", name=slug)).to_contain_text("active")
    page.get_by_label(f"New name of {slug}").fill("Made and renamed")
    page.get_by_role("button", name=f"Rename {slug}").click()
    expect(page.get_by_role("status")).to_contain_text("Workspace renamed.")
    page.get_by_role("row", name=slug).get_by_text("Delete…").click()
    page.get_by_label(f"Confirm the slug of {slug}").fill("default")
    page.get_by_role("button", name=f"Delete {slug}").click()
    expect(page.get_by_role("alert")).to_contain_text(f"type the workspace's slug ({slug}) to confirm")
    assert admin.get(f"/tenants/{slug}").status_code == 200
    page.get_by_role("row", name=slug).get_by_text("Delete…").click()
    page.get_by_label(f"Confirm the slug of {slug}").fill(slug)
    page.get_by_role("button", name=f"Delete {slug}").click()
    expect(page.get_by_role("status")).to_contain_text("Workspace deleted")
    expect(page.get_by_role("row", name=slug)).to_have_count(0)
    assert admin.get(f"/tenants/{slug}").status_code == 404
    actions = [e["action"] for e in admin.get("/audit", params={"target": admin.get("/audit", params={
        "action": "tenant.delete"}).json()["items"][0]["target_id"]}).json()["items"]]
    assert actions == ["tenant.delete", "tenant.update", "tenant.resume", "tenant.suspend", "tenant.create"]

    page.get_by_role("link", name="Users").click()
    email = f"made-{slug}@example.com"
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("status")).to_contain_text("User created.")
    page.get_by_role("button", name=f"Password reset link for {email}").click()
    link = page.get_by_label("Password reset link", exact=True).input_value()
    assert link.startswith(f"{srv.url}/password-reset/")
    person = browser.new_context().new_page()
    person.goto(link)
    person.get_by_label("Password", exact=True).fill("a fresh passphrase for them 4")
    person.get_by_label("Password again").fill("a fresh passphrase for them 4")
    person.get_by_role("button", name="Save password").click()
    sign_in(person, srv.url, email, "a fresh passphrase for them 4")
    expect(person).to_have_url(f"{srv.url}/")

    person.goto(f"{srv.url}/admin/tenants")  # not an instance admin: refused, as the API refuses
    expect(person.get_by_role("alert")).to_contain_text("is for instance admins")
    cookies = {c["name"]: c["value"] for c in person.context.cookies()}
    assert httpx.get(f"{srv.url}/admin", cookies=cookies).status_code == 403
    person.goto(f"{srv.url}/profile")
    refused = forge(srv, person, "/admin/tenants", slug="sneaky-one")
    assert refused.status_code == 403 and admin.get("/tenants/sneaky-one").status_code == 404
    person.context.close()
    assert httpx.get(f"{srv.url}/admin/users").headers.get("location", "").startswith("/sign-in")
