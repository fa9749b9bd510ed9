"""OAuth2 credentials on a real `flowfuse serve`, against a loopback OAuth2 provider written here that
speaks RFC 6749 (authorize redirect, token endpoint: client_credentials, authorization_code with
PKCE, refresh_token) and guards an API with the tokens it issued."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from conftest import flowfuse, free_port
from tests.api_helpers import ADMIN, PASSWORD, Client, new_key, signed_in_admin
from tests.browser import sign_in
from tests.conftest import Server

CLIENT_ID, CLIENT_SECRET = "flowfuse-app", "s3cret-client-0123456789"

PLUGIN = '''
from connectors.sdk import NodeType, Param
from connectors.sdk.http import call


async def _get(ctx, items):
    response = await call(ctx, "GET", ctx.param("url"))
    return [response.json()]


def register(registry):
    registry.add(NodeType("test.api_get", _get, category="Test",
                          credential_types=("oauth2_client_credentials", "oauth2_authorization_code"),
                          params={"url": Param("string", required=True)}))
'''


class Provider:
    """An OAuth2 authorization server and a resource API on 127.0.0.1."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}  # access token -> grant
        self.codes: dict[str, dict] = {}
        self.refresh: dict[str, str] = {}
        self.token_requests: list[dict] = []
        self.api_calls: list[str] = []
        self.next_access_ttl = 3600
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/authorize":
                    if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code" \
                            or query.get("code_challenge_method") != "S256":
                        return self._json(400, {"error": "invalid_request"})
                    code = secrets.token_urlsafe(8)
                    provider.codes[code] = query
                    target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
                    self.send_response(302)
                    self.send_header("location", target)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return None
                if url.path == "/api/me":
                    token = self.headers.get("authorization", "").removeprefix("Bearer ")
                    provider.api_calls.append(token)
                    if token not in provider.tokens:
                        return self._json(401, {"error": {"message": "invalid or expired token"}})
                    return self._json(200, {"me": "ada", "grant": provider.tokens[token]})
                return self._json(404, {"error": "not found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["content-length"])).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                provider.token_requests.append(form)
                basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.headers.get("authorization") != f"Basic {basic}":
                    return self._json(401, {"error": "invalid_client"})
                grant = form.get("grant_type")
                if grant == "authorization_code":
                    asked = provider.codes.pop(form.get("code", ""), None)
                    verifier = form.get("code_verifier", "")
                    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                    if asked is None or asked["redirect_uri"] != form.get("redirect_uri") or \
                            challenge.decode() != asked["code_challenge"]:
                        return self._json(400, {"error": "invalid_grant", "error_description": "bad code"})
                elif grant == "refresh_token":
                    if form.get("refresh_token") not in provider.refresh:
                        return self._json(400, {"error": "invalid_grant", "error_description": "unknown refresh"})
                    del provider.refresh[form["refresh_token"]]  # refresh tokens rotate
                elif grant != "client_credentials":
                    return self._json(400, {"error": "unsupported_grant_type"})
                access = f"at-{grant}-{len(provider.token_requests)}-{secrets.token_hex(4)}"
                provider.tokens[access] = grant
                answer = {"access_token": access, "token_type": "Bearer", "expires_in": provider.next_access_ttl}
                if grant != "client_credentials":
                    answer["refresh_token"] = refresh = f"rt-{secrets.token_hex(6)}"
                    provider.refresh[refresh] = grant
                return self._json(200, answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def grants(self) -> list[str]:
        return [r.get("grant_type") for r in self.token_requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.close()


@pytest.fixture
def app(tmp_path):
    data = tmp_path / "data"
    made = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN, env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    (data / "plugins").mkdir()
    (data / "plugins" / "api_get.py").write_text(PLUGIN)
    srv = Server(data, free_port()).start("serve")
    yield srv
    srv.stop()


def api_flow(srv: Server, name: str, credential: str, url: str) -> None:
    srv.import_flow({"name": name, "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": name}},
        {"id": "get", "type": "test.api_get", "credential": credential, "params": {"url": url}},
    ], "edges": [{"from": "hook", "to": "get"}]})


def test_client_credentials_token_is_fetched_cached_and_renewed_on_401(app, provider):
    admin = signed_in_admin(app)
    made = admin.post("/tenants/default/credentials", json={"name": "cc", "type": "oauth2_client_credentials", "data": {
        "token_url": f"{provider.url}/token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "scope": "read"}})
    assert made.status_code == 201, made.text
    api_flow(app, "cc-flow", "cc", f"{provider.url}/api/me")
    hook = f"{app.url}/hooks/default/cc-flow"

    first = httpx.post(hook, json={})
    assert first.status_code == 200, first.text
    assert first.json() == {"me": "ada", "grant": "client_credentials"}
    assert httpx.post(hook, json={}).status_code == 200
    assert provider.grants() == ["client_credentials"]  # the token was cached for the second run
    assert provider.token_requests[0]["scope"] == "read"

    provider.tokens.clear()  # the provider revokes every token: the next call gets 401 once
    third = httpx.post(hook, json={})
    assert third.status_code == 200, third.text
    assert provider.grants() == ["client_credentials", "client_credentials"]
    assert len(set(provider.api_calls)) == 2

    execution = app.execution(third.headers["x-flowfuse-execution"])
    recorded = json.dumps(execution)
    assert not any(token in recorded for token in provider.api_calls) and CLIENT_SECRET not in recorded


def connect(app: Server, admin: Client, credential_id: str) -> httpx.Response:
    """What a browser does: start, follow the provider's redirect, land on the callback."""
    start = admin.get(f"/tenants/default/credentials/{credential_id}/oauth/start")
    assert start.status_code == 302, start.text
    authorize = httpx.get(start.headers["location"])
    assert authorize.status_code == 302, authorize.text
    callback = authorize.headers["location"]
    assert callback.startswith(app.url + "/api/v1/oauth/callback?")  # {server.base_url}/api/v1/oauth/callback
    return admin.get(callback.split("/api/v1", 1)[1])


def test_authorization_code_connects_in_the_browser_and_refreshes_into_the_vault(app, provider):
    admin = signed_in_admin(app)
    made = admin.post("/tenants/default/credentials", json={
        "name": "crm", "type": "oauth2_authorization_code", "data": {
        "auth_url": f"{provider.url}/authorize", "token_url": f"{provider.url}/token", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "scope": "contacts"}})
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    api_flow(app, "crm-flow", "crm", f"{provider.url}/api/me")
    hook = f"{app.url}/hooks/default/crm-flow"
    not_yet = httpx.post(hook, json={})
    assert not_yet.status_code == 500 and "not connected yet" in not_yet.json()["error"]

    provider.next_access_ttl = 1  # the first access token is (nearly) expired at once: the first run refreshes it
    done = connect(app, admin, cid)
    assert done.status_code == 200, done.text
    assert done.json()["connected"] is True
    assert {"access_token", "refresh_token", "expires_at"} <= set(done.json()["credential"]["fields"])
    assert provider.grants() == ["authorization_code"]
    assert "at-" not in done.text and "rt-" not in done.text  # tokens are never shown

    provider.next_access_ttl = 3600
    first = httpx.post(hook, json={})
    assert first.status_code == 200, first.text
    assert first.json() == {"me": "ada", "grant": "refresh_token"}
    assert provider.grants() == ["authorization_code", "refresh_token"]
    second = httpx.post(hook, json={})
    assert second.status_code == 200
    assert provider.grants() == ["authorization_code", "refresh_token"]  # the refreshed token came from the vault

    audit = admin.get("/tenants/default/audit")
    assert audit.status_code == 200, audit.text
    assert "credential.oauth_start" in audit.text and "credential.oauth_connect" in audit.text
    assert "at-" not in audit.text and CLIENT_SECRET not in audit.text


def test_callback_refuses_a_forged_or_foreign_state_and_viewers_cannot_start(app, provider):
    admin = signed_in_admin(app)
    made = admin.post("/tenants/default/credentials", json={
        "name": "crm", "type": "oauth2_authorization_code", "data": {
        "auth_url": f"{provider.url}/authorize", "token_url": f"{provider.url}/token", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET}})
    cid = made.json()["id"]
    forged = admin.get("/oauth/callback", params={"code": "x", "state": "eyJ0IjoidCJ9.forged"})
    assert forged.status_code == 422 and "not started here" in forged.json()["detail"]

    start = admin.get(f"/tenants/default/credentials/{cid}/oauth/start")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    other = Client(app.url, new_key(admin, "default", "editor"))
    foreign = other.get("/oauth/callback", params={"code": "x", "state": state})
    assert foreign.status_code == 422 and "someone else" in foreign.json()["detail"]

    viewer = Client(app.url, new_key(admin, "default", "viewer"))
    assert viewer.get(f"/tenants/default/credentials/{cid}/oauth/start").status_code == 403
    basic = admin.post("/tenants/default/credentials", json={"name": "b", "type": "basic",
                                                             "data": {"username": "u", "password": "p"}})
    wrong_type = admin.get(f"/tenants/default/credentials/{basic.json()['id']}/oauth/start")
    assert wrong_type.status_code == 422 and "oauth2_authorization_code" in wrong_type.json()["detail"]
    assert provider.token_requests == []


def test_the_credential_page_connects_an_authorization_code_credential_in_a_real_browser(app, provider, page):
    admin = signed_in_admin(app)
    made = admin.post("/tenants/default/credentials", json={
        "name": "crm-console", "type": "oauth2_authorization_code", "data": {
        "auth_url": f"{provider.url}/authorize", "token_url": f"{provider.url}/token", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "scope": "contacts"}})
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    sign_in(page, app.url, ADMIN, PASSWORD)
    page.goto(f"{app.url}/t/default/credentials/{cid}")
    expect(page.get_by_role("region", name="Connect")).to_contain_text("Not connected yet")
    page.get_by_role("link", name="Connect", exact=True).click()  # to the provider and back
    expect(page).to_have_url(f"{app.url}/t/default/credentials/{cid}")
    expect(page.get_by_role("region", name="Connect")).to_contain_text("Connected: flows use its tokens")
    assert provider.grants() == ["authorization_code"]
    assert "at-" not in page.content() and "rt-" not in page.content()  # tokens are never shown
