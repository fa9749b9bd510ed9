"""People over the API on a real server: first-run set-up, two-factor sign-in, invitations,
password resets and sign-in throttling."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pyotp
import pytest

from tests.api_helpers import (
    PASSWORD, Client, new_key, new_tenant, new_user, problem, signed_in_admin, start_with_admin,
)
from tests.conftest import Server, flowfuse, free_port

NEW_PASSWORD = "another long passphrase 42"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = start_with_admin(tmp_path_factory.mktemp("identity") / "data", "web")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(api):
    return signed_in_admin(api)


def code_at(secret: str, offset_s: float = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset_s)


def test_first_run_set_up_works_once(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port()).start("web")
    try:
        first = httpx.post(f"{srv.url}/api/v1/setup", json={"email": "first@example.com", "password": "short"})
        assert problem(first, 422)["errors"][0]["field"] == "password"
        made = httpx.post(f"{srv.url}/api/v1/setup", json={"email": "first@example.com", "password": PASSWORD})
        assert made.status_code == 201 and made.json()["is_admin"] == 1
        again = httpx.post(f"{srv.url}/api/v1/setup", json={"email": "second@example.com", "password": PASSWORD})
        assert "already set up" in problem(again, 409)["detail"]
        person = Client(srv.url)
        assert person.sign_in("first@example.com").status_code == 201
        assert person.get("/me").json()["tenants"] == [{"slug": "default", "name": "Default", "role": "owner"}]
    finally:
        srv.stop()


def test_two_factor_sign_in_recovery_codes_and_a_tenant_that_requires_it(api, admin):
    t = new_tenant(admin)
    _, email = new_user(admin, t, "editor")
    person = Client(api.url)
    assert person.sign_in(email).json()["mfa_required"] is False
    enrolment = person.post("/me/mfa").json()
    secret = enrolment["secret"]
    assert enrolment["uri"].startswith("otpauth://totp/") and "FlowFuse" in enrolment["uri"]
    assert enrolment["qr_svg"].lstrip().startswith("<svg")
    problem(person.post("/me/mfa/confirm", json={"code": "000000" if code_at(secret) != "000000" else "111111"}), 422)
    codes = person.post("/me/mfa/confirm", json={"code": code_at(secret)}).json()["recovery_codes"]
    assert len(set(codes)) == 10
    with sqlite3.connect(api.data_dir / "flowfuse.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump and not any(c in dump for c in codes)  # sealed and hashed

    # signing in now takes two steps; the pending session can do nothing else
    second = Client(api.url)
    assert second.sign_in(email).json()["mfa_required"] is True
    assert "finish signing in" in problem(second.get("/me"), 401)["detail"]
    problem(second.post("/session/mfa", json={"code": code_at(secret)}), 401)  # that step was used to enrol
    assert second.post("/session/mfa", json={"code": code_at(secret, 30)}).status_code == 201
    assert second.get("/me").json()["label"] == email

    third = Client(api.url)
    third.sign_in(email)
    assert third.post("/session/mfa", json={"code": codes[0].upper()}).status_code == 201
    fourth = Client(api.url)
    fourth.sign_in(email)
    problem(fourth.post("/session/mfa", json={"code": codes[0]}), 401)  # a recovery code works once

    # a tenant that requires two-factor sign-in
    _, plain_email = new_user(admin, t, "viewer")
    plain = Client(api.url)
    plain.sign_in(plain_email)
    owner_key = new_key(admin, t, "owner")
    assert Client(api.url, owner_key).patch(f"/tenants/{t}/settings", json={"require_mfa": True}).json() == \
        {"require_mfa": True}
    assert "requires two-factor" in problem(plain.get(f"/tenants/{t}/flows"), 403)["detail"]
    assert second.get(f"/tenants/{t}/flows").status_code == 200
    assert Client(api.url, owner_key).get(f"/tenants/{t}/flows").status_code == 200  # keys are not people
    problem(Client(api.url, owner_key).patch(f"/tenants/{t}/settings", json={"require_mfa": "yes"}), 400)

    assert second.post("/me/mfa/disable", json={"code": codes[1]}).json() == {"mfa_enabled": False}
    actions = [e["action"] for e in admin.get("/audit", params={"actor": email, "limit": 200}).json()["items"]]
    for expected in ("mfa.enrol_start", "mfa.enable", "auth.sign_in", "mfa.disable"):
        assert expected in actions, actions


def test_invitations_by_link(api, admin):
    t = new_tenant(admin)
    owner = Client(api.url, new_key(admin, t, "owner"))
    made = owner.post(f"/tenants/{t}/invitations", json={"email": "newcomer@example.com", "role": "operator"})
    assert made.status_code == 201
    token, link = made.json()["token"], made.json()["link"]
    assert link.endswith(token)
    listed = owner.get(f"/tenants/{t}/invitations").text
    assert "newcomer@example.com" in listed and token not in listed

    anon = Client(api.url)
    problem(anon.post(f"/invitations/{token}/accept", json={"password": "short"}), 422)
    joined = anon.post(f"/invitations/{token}/accept", json={"password": PASSWORD, "name": "New"}).json()
    assert joined["tenant"] == t and joined["role"] == "operator"
    problem(anon.post(f"/invitations/{token}/accept", json={"password": PASSWORD}), 404)  # one use
    newcomer = Client(api.url)
    assert newcomer.sign_in("newcomer@example.com").status_code == 201
    assert newcomer.get(f"/tenants/{t}/executions").status_code == 200

    other = owner.post(f"/tenants/{t}/invitations", json={"email": "late@example.com", "role": "viewer"}).json()
    with sqlite3.connect(api.data_dir / "flowfuse.db") as conn:
        conn.execute("UPDATE invitations SET expires_at=? WHERE id=?", (time.time() - 1, other["id"]))
    assert "expired" in problem(anon.post(f"/invitations/{other['token']}/accept", json={"password": PASSWORD}),
                                404)["detail"]
    withdrawn = owner.post(f"/tenants/{t}/invitations", json={"email": "never@example.com", "role": "viewer"}).json()
    assert owner.delete(f"/tenants/{t}/invitations/{withdrawn['id']}").status_code == 204
    problem(anon.post(f"/invitations/{withdrawn['token']}/accept", json={"password": PASSWORD}), 404)
    admin_key = new_key(admin, t, "admin")
    problem(Client(api.url, admin_key).post(f"/tenants/{t}/invitations", json={"email": "o@example.com",
                                                                              "role": "owner"}), 403)


def test_password_reset_by_link(api, admin):
    t = new_tenant(admin)
    uid, email = new_user(admin, t, "viewer")
    session = Client(api.url)
    session.sign_in(email)
    reset = admin.post(f"/users/{uid}/password-reset").json()
    anon = Client(api.url)
    problem(anon.post(f"/password-reset/{reset['token']}", json={"password": "tiny"}), 422)
    assert anon.post(f"/password-reset/{reset['token']}", json={"password": NEW_PASSWORD}).status_code == 200
    problem(session.get("/me"), 401)  # every session ended
    problem(anon.post(f"/password-reset/{reset['token']}", json={"password": NEW_PASSWORD}), 404)  # one use
    problem(Client(api.url).sign_in(email), 401)  # the old password is gone
    assert Client(api.url).sign_in(email, NEW_PASSWORD).status_code == 201
    problem(Client(api.url, new_key(admin, t, "owner")).post(f"/users/{uid}/password-reset"), 403)


def test_failed_sign_ins_are_throttled(api, admin):
    t = new_tenant(admin)
    _, email = new_user(admin, t, "viewer")
    for _ in range(5):
        problem(Client(api.url).sign_in(email, "not the password!"), 401)
    throttled = Client(api.url).sign_in(email, PASSWORD)  # even the right password waits now
    body = problem(throttled, 429)
    assert int(throttled.headers["retry-after"]) >= 1 and "try again" in body["detail"]
    time.sleep(int(throttled.headers["retry-after"]) + 0.1)
    assert Client(api.url).sign_in(email, PASSWORD).status_code == 201
    failed = admin.get("/audit", params={"action": "auth.sign_in_failed", "limit": 50}).json()["items"]
    assert sum(1 for e in failed if e["details"].get("email") == email) >= 5
