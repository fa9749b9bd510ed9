"""Invitation and password reset links mailed through a real SMTP server on 127.0.0.1 (aiosmtpd)."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from tests.api_helpers import Client, new_tenant, new_user, problem, signed_in_admin, start_with_admin
from tests.conftest import free_port, poll

NEW_PASSWORD = "a fresh and long passphrase 7"


class Inbox:
    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler name
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"

    def to(self, address: str) -> list:
        return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture(scope="module")
def inbox():
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, inbox):
    _, port = inbox
    env = {"FLOWFUSE_SMTP_HOST": "127.0.0.1", "FLOWFUSE_SMTP_PORT": str(port), "FLOWFUSE_SMTP_SECURITY": "none",
           "FLOWFUSE_SMTP_SENDER": "FlowFuse <ff@example.com>"}
    srv = start_with_admin(tmp_path_factory.mktemp("mail") / "data", "web", env)
    yield srv
    srv.stop()


def link_in(message) -> str:
    return re.search(r"https?://\S+", message.get_content()).group(0)


def test_invitations_are_mailed(api, inbox):
    box, _ = inbox
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    made = admin.post(f"/tenants/{t}/invitations", json={"email": "mailed@example.com", "role": "editor"}).json()
    assert made["mailed"] is True
    message = poll(lambda: box.to("mailed@example.com"), what="the invitation mail")[0]
    assert t in message["Subject"] and message["From"] == "FlowFuse <ff@example.com>"
    token = link_in(message).rsplit("/", 1)[1]
    joined = Client(api.url).post(f"/invitations/{token}/accept", json={"password": NEW_PASSWORD}).json()
    assert joined["role"] == "editor"


def test_forgotten_passwords_are_reset_by_mail_without_telling_who_exists(api, inbox):
    box, _ = inbox
    admin = signed_in_admin(api)
    t = new_tenant(admin)
    _, email = new_user(admin, t, "viewer")
    anon = Client(api.url)
    unknown = anon.post("/password-reset", json={"email": "nobody@example.com"})
    known = anon.post("/password-reset", json={"email": email})
    assert unknown.status_code == known.status_code == 202 and unknown.json() == known.json()
    message = poll(lambda: box.to(email), what="the reset mail")[0]
    assert not box.to("nobody@example.com")
    token = link_in(message).rsplit("/", 1)[1]
    assert anon.post(f"/password-reset/{token}", json={"password": NEW_PASSWORD}).status_code == 200
    assert Client(api.url).sign_in(email, NEW_PASSWORD).status_code == 201


def test_without_smtp_an_admin_copies_the_link(tmp_path):
    srv = start_with_admin(tmp_path / "data", "web")
    try:
        admin = signed_in_admin(srv)
        t = new_tenant(admin)
        made = admin.post(f"/tenants/{t}/invitations", json={"email": "copy@example.com", "role": "viewer"}).json()
        assert made["mailed"] is False and made["link"].endswith(made["token"])
        assert "ask an instance admin" in problem(Client(srv.url).post("/password-reset",
                                                                       json={"email": "x@example.com"}), 409)["detail"]
    finally:
        srv.stop()
