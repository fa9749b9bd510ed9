"""Helpers for tests of the REST API: a client for keys and sessions, and quick ways to make
tenants, people and keys through the API itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import Server, flowfuse, free_port

ADMIN = "root@example.com"
PASSWORD = "correct horse battery staple 9"


class Client:
    """An API caller: a key, or a session cookie with its CSRF token."""

    def __init__(self, base: str, key: str | None = None):
        self.http = httpx.Client(base_url=base + "/api/v1", timeout=15)
        if key:
            self.http.headers["authorization"] = f"Bearer {key}"

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        r = self.http.post("/session", json={"email": email, "password": password})
        if r.status_code == 201:
            self.http.headers["x-csrf-token"] = r.json()["csrf_token"]
        return r

    def __getattr__(self, name):
        return getattr(self.http, name)


def start_with_admin(data: Path, command: str, env: dict[str, str] | None = None) -> Server:
    """A real server (`serve` or `web`) over a new data directory whose instance admin is ADMIN."""
    made = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN, env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    return Server(data, free_port(), env=env or {}).start(command)


def signed_in_admin(srv: Server) -> Client:
    client = Client(srv.url)
    assert client.sign_in(ADMIN).status_code == 201
    return client


_made = iter(range(10**6))


def new_tenant(admin: Client) -> str:
    slug = f"t{next(_made)}-{int(time.time() * 1000) % 10**6}"
    assert admin.post("/tenants", json={"slug": slug}).status_code == 201
    return slug


def new_user(admin: Client, tenant: str, role: str) -> tuple[str, str]:
    email = f"u{next(_made)}-{time.time_ns()}@example.com"
    r = admin.post("/users", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    assert admin.put(f"/tenants/{tenant}/members/{uid}", json={"role": role}).status_code == 200
    return uid, email


def new_key(client: Client, tenant: str, role: str, **extra) -> str:
    r = client.post(f"/tenants/{tenant}/api-keys", json={"name": f"{role} key", "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body
