"""The REST API over a real `flowfuse serve`: sign-in, tenant isolation, roles, keys, flows, audit."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from appliance.identity import PERMISSIONS, ROLES, role_at_least, roles_with
from tests.api_helpers import (
    ADMIN, Client, new_key, new_tenant, new_user, problem, signed_in_admin, start_with_admin,
)
from tests.conftest import flowfuse, poll
from web.api import HANDLERS


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = start_with_admin(tmp_path_factory.mktemp("api") / "data", "serve")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(api):
    return signed_in_admin(api)


HOOK_FLOW = {"name": "orders", "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "orders", "respond": "when_done"}},
    {"id": "double", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}}],
    "edges": [{"from": "hook", "to": "double"}]}
MANUAL_FLOW = {"name": "manual", "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}],
    "edges": [{"from": "start", "to": "mark"}]}


def test_sign_in_sessions_and_csrf(api, admin):
    anon = Client(api.url)
    problem(anon.get("/me"), 401)
    problem(anon.sign_in(ADMIN, "wrong password 123"), 401)
    problem(anon.sign_in("nobody@example.com"), 401)

    person = Client(api.url)
    r = person.sign_in(ADMIN)
    assert "ff_session" in r.cookies and "httponly" in r.headers["set-cookie"].lower()
    assert person.get("/me").json()["is_admin"] is True

    csrf = person.http.headers.pop("x-csrf-token")
    refused = problem(person.post("/tenants", json={"slug": "no-csrf"}), 403)
    assert "CSRF" in refused["detail"]
    person.http.headers["x-csrf-token"] = csrf
    assert person.delete("/session").status_code == 204
    problem(person.get("/me"), 401)

    other = Client(api.url)
    other.sign_in(ADMIN)
    third = Client(api.url)
    third.sign_in(ADMIN)
    assert other.delete("/sessions").status_code == 204  # sign out everywhere
    problem(third.get("/me"), 401)
    admin.sign_in(ADMIN)  # the module's admin session was ended too


def _tenant_routes():
    """(method, path template, permission) of every tenant-scoped route, from the handlers themselves;
    the permission is None for routes only instance admins may use."""
    for handler in HANDLERS:
        for path in handler.paths:
            if "{tenant" in path:
                for method in handler.http_methods:
                    yield method, path, handler.opt.get("permission")


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(values[m.group(1)]), path)


BODIES = {"POST": {"name": "x", "role": "viewer", "type": "bearer", "data": {"token": "abcdef"}, "input": [],
                   "email": "x@example.com"},
          "PUT": {"role": "viewer", "value": 1}, "PATCH": {"name": "renamed"}}


def test_no_route_gives_tenant_a_anything_of_tenant_b(api, admin):
    a, b = new_tenant(admin), new_tenant(admin)
    _, alice = new_user(admin, a, "owner")
    carol_id, _ = new_user(admin, b, "owner")
    assert admin.post(f"/tenants/{b}/flows", json=MANUAL_FLOW).status_code == 201
    run = admin.post(f"/tenants/{b}/flows/manual/run", json={"input": {"n": 1}}).json()
    cred = admin.post(f"/tenants/{b}/credentials", json={"name": "api", "type": "bearer",
                                                         "data": {"token": "b-secret-token"}}).json()
    assert admin.put(f"/tenants/{b}/variables/region", json={"value": "eu"}).status_code == 200
    b_key = new_key(admin, b, "owner")
    key_id = Client(api.url, b_key).get("/me").json()["id"]
    invitation = admin.post(f"/tenants/{b}/invitations", json={"email": "dora@example.com", "role": "viewer"}).json()
    values = {"tenant": b, "name": "manual", "node_id": "mark", "execution_id": run["execution_id"],
              "credential_id": cred["id"], "key_id": key_id, "user_id": carol_id, "version": 1,
              "invitation_id": invitation["id"]}

    alice_session = Client(api.url)
    assert alice_session.sign_in(alice).status_code == 201
    callers = {"key": Client(api.url, new_key(alice_session, a, "owner")), "session": alice_session}
    checked = 0
    for kind, caller in callers.items():
        for method, path, permission in _tenant_routes():
            url = _fill(path, values) + ("?from=1&to=1" if path.endswith("/diff") else "")
            r = caller.request(method, url, json=BODIES.get(method))
            expected = 404 if permission else 403  # admin-only routes refuse before looking at the tenant
            assert r.status_code == expected, f"{kind} {method} {url}: {r.status_code} {r.text[:200]}"
            assert "b-secret-token" not in r.text and run["execution_id"] not in r.text
            assert "dora@example.com" not in r.text
            checked += 1
        tenants = caller.get("/tenants").json()
        assert [t["slug"] for t in tenants] == [a]
    assert checked >= 2 * 30
    # and tenant B's things are all still there
    owner_b = Client(api.url, b_key)
    assert owner_b.get(f"/tenants/{b}/flows/manual").status_code == 200
    assert [c["name"] for c in owner_b.get(f"/tenants/{b}/credentials").json()] == ["api"]
    assert owner_b.get(f"/tenants/{b}/variables").json() == {"region": "eu"}


def test_each_role_is_refused_what_the_permission_table_refuses(api, admin):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=MANUAL_FLOW).status_code == 201
    run = admin.post(f"/tenants/{t}/flows/manual/run", json={}).json()
    values = {"tenant": t, "name": "manual", "node_id": "mark", "execution_id": run["execution_id"],
              "credential_id": "c_none", "key_id": "k_none", "user_id": "u_none", "version": 1,
              "invitation_id": "i_none"}
    for role in ROLES:
        caller = Client(api.url, new_key(admin, t, role))
        for method, path, permission in _tenant_routes():
            allowed = permission is not None and role_at_least(role, PERMISSIONS[permission])
            if method in ("DELETE", "PUT", "PATCH", "POST") and allowed:
                continue  # allowed writes are exercised by the other tests; here they would change the fixture
            url = _fill(path, values) + ("?from=1&to=1" if path.endswith("/diff") else "")
            r = caller.request(method, url, json=BODIES.get(method))
            if permission is None:
                problem(r, 403)
            elif allowed:
                assert r.status_code != 403, f"{role} {method} {url}: {r.text[:200]}"
            else:
                body = problem(r, 403)
                assert permission in body["detail"], body
    denied = Client(api.url).get(f"/tenants/{t}/audit", params={"action": "access.refused"})
    assert denied.status_code == 401
    refusals = admin.get(f"/tenants/{t}/audit", params={"action": "access.refused", "limit": 500}).json()["items"]
    assert refusals and all(e["outcome"] == "refused" for e in refusals)


def test_api_keys_are_shown_once_hashed_revocable_and_expire(api, admin):
    t = new_tenant(admin)
    r = admin.post(f"/tenants/{t}/api-keys", json={"name": "ci", "role": "editor"})
    key = r.json()["key"]
    assert key.startswith("ffk_") and len(key) >= 4 + 43
    listed = admin.get(f"/tenants/{t}/api-keys").json()
    assert listed[0]["name"] == "ci" and "key" not in listed[0] and key not in json.dumps(listed)
    with sqlite3.connect(api.data_dir / "flowfuse.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert key not in dump and key[4:] not in dump

    editor = Client(api.url, key)
    assert editor.get(f"/tenants/{t}/flows").status_code == 200
    problem(editor.post(f"/tenants/{t}/api-keys", json={"name": "x", "role": "viewer"}), 403)
    assert editor.get("/me").json()["tenants"] == [{"slug": t, "name": t, "role": "editor"}]

    assert admin.post(f"/tenants/{t}/api-keys/{listed[0]['id']}/revoke").json()["revoked_at"]
    assert "revoked" in problem(editor.get(f"/tenants/{t}/flows"), 401)["detail"]

    soon = new_key(admin, t, "viewer", expires_at=time.time() + 1.5)
    assert Client(api.url, soon).get(f"/tenants/{t}/flows").status_code == 200
    time.sleep(1.6)
    assert "expired" in problem(Client(api.url, soon).get(f"/tenants/{t}/flows"), 401)["detail"]
    problem(Client(api.url, "ffk_" + "x" * 43).get("/me"), 401)
    problem(Client(api.url, "not-a-key").get("/me"), 401)

    admin_key = new_key(admin, t, "admin")
    refused = problem(Client(api.url, admin_key).post(f"/tenants/{t}/api-keys", json={"name": "up", "role": "owner"}),
                      403)
    assert "higher" in refused["detail"]


def test_the_last_owner_stays(api, admin):
    t = new_tenant(admin)
    owner_id, owner_email = new_user(admin, t, "owner")
    body = problem(admin.put(f"/tenants/{t}/members/{owner_id}", json={"role": "admin"}), 409)
    assert "last owner" in body["detail"]
    problem(admin.delete(f"/tenants/{t}/members/{owner_id}"), 409)
    second_id, _ = new_user(admin, t, "owner")
    assert admin.put(f"/tenants/{t}/members/{owner_id}", json={"role": "admin"}).json()["role"] == "admin"
    # an admin cannot touch owners
    demoted = Client(api.url)
    demoted.sign_in(owner_email)
    problem(demoted.put(f"/tenants/{t}/members/{second_id}", json={"role": "viewer"}), 403)
    problem(admin.put(f"/tenants/{t}/members/{owner_id}", json={"role": "chief"}), 422)


def test_flows_versions_runs_and_executions(api, admin):
    t = new_tenant(admin)
    editor = Client(api.url, new_key(admin, t, "editor"))
    created = editor.post(f"/tenants/{t}/flows", json=HOOK_FLOW)
    assert created.status_code == 201 and created.json()["version"] == 1
    changed = json.loads(json.dumps(HOOK_FLOW))
    changed["nodes"][1]["params"]["fields"]["double"] = "{{ json.n * 3 }}"
    assert editor.put(f"/tenants/{t}/flows/orders", json=changed).json()["version"] == 2
    assert [v["version"] for v in editor.get(f"/tenants/{t}/flows/orders/versions").json()] == [2, 1]
    assert editor.get(f"/tenants/{t}/flows/orders/versions/1").json()["definition"] == HOOK_FLOW
    diff = editor.get(f"/tenants/{t}/flows/orders/diff", params={"from": 1, "to": 2}).json()["diff"]
    changed_lines = [line[0] + line[1:].strip() for line in diff.splitlines() if line[:1] in "+-" and "double" in line]
    assert changed_lines == ['-"double": "{{ json.n * 2 }}"', '+"double": "{{ json.n * 3 }}"'], diff
    restored = editor.post(f"/tenants/{t}/flows/orders/versions/1/restore").json()
    assert restored["version"] == 3 and restored["definition"] == HOOK_FLOW
    problem(editor.get(f"/tenants/{t}/flows/orders/versions/9"), 404)

    bad = {"name": "bad", "nodes": [{"id": "start", "type": "manual"}, {"id": "x", "type": "no_such_node"}],
           "edges": [{"from": "start", "to": "x"}]}
    invalid = problem(editor.post(f"/tenants/{t}/flows/validate", json=bad), 422)
    assert any(e["field"] == "nodes.x" and "no_such_node" in e["message"] for e in invalid["errors"])
    problem(editor.post(f"/tenants/{t}/flows", json=bad), 422)
    assert editor.get(f"/tenants/{t}/flows/bad").status_code == 404

    assert editor.post(f"/tenants/{t}/flows/orders/activate").json()["active"] is True
    hook = httpx.post(f"{api.url}/hooks/{t}/orders", json={"n": 5}, timeout=10)
    assert hook.json() == {"n": 5, "double": 10}

    operator = Client(api.url, new_key(admin, t, "operator"))
    assert operator.post(f"/tenants/{t}/flows", json=MANUAL_FLOW).status_code == 403
    assert editor.post(f"/tenants/{t}/flows", json=MANUAL_FLOW).status_code == 201
    ids = [operator.post(f"/tenants/{t}/flows/manual/run", json={"input": {"i": i}}).json()["execution_id"]
           for i in range(3)]
    done = poll(lambda: (r := operator.get(f"/tenants/{t}/executions/{ids[-1]}").json())["status"] == "succeeded" and r,
                what="the run to finish")
    assert [s["node"] for s in done["steps"]] == ["start", "mark"]
    assert done["output"] == [{"i": 2, "seen": True}]
    page1 = operator.get(f"/tenants/{t}/executions", params={"flow": "manual", "limit": 2}).json()
    page2 = operator.get(f"/tenants/{t}/executions", params={"flow": "manual", "limit": 2,
                                                             "before": page1["next"]}).json()
    assert [e["id"] for e in page1["items"] + page2["items"]] == sorted(ids, reverse=True)
    assert page2["next"] is None
    first = operator.get(f"/tenants/{t}/executions/{ids[0]}").json()["created_at"]
    last = operator.get(f"/tenants/{t}/executions/{ids[-1]}").json()["created_at"]
    window = operator.get(f"/tenants/{t}/executions", params={"flow": "manual", "since": first - 1,
                                                              "until": last + 1}).json()
    assert [e["id"] for e in window["items"]] == sorted(ids, reverse=True)
    assert operator.get(f"/tenants/{t}/executions", params={"until": first - 1}).json()["items"] == []
    assert operator.get(f"/tenants/{t}/executions", params={"since": last + 1}).json()["items"] == []
    problem(operator.get(f"/tenants/{t}/executions", params={"since": "inf"}), 400)
    problem(operator.post(f"/tenants/{t}/executions/{ids[-1]}/cancel"), 409)
    assert editor.post(f"/tenants/{t}/flows/orders/deactivate").json()["active"] is False
    assert httpx.post(f"{api.url}/hooks/{t}/orders", json={"n": 5}).status_code == 404
    assert editor.delete(f"/tenants/{t}/flows/orders").status_code == 204
    problem(editor.get(f"/tenants/{t}/flows/orders"), 404)


def test_bad_input_gets_a_problem_document(api, admin):
    t = new_tenant(admin)
    unknown = problem(admin.post(f"/tenants/{t}/api-keys", json={"name": "k", "role": "viewer", "colour": "red"}),
                      400)
    assert "colour" in json.dumps(unknown)
    problem(admin.post(f"/tenants/{t}/api-keys", json={"name": "k", "role": 7}), 400)
    problem(admin.post(f"/tenants/{t}/api-keys", content=b"{not json", headers={"content-type": "application/json"}),
            400)
    problem(admin.get("/tenants/no-such-tenant/flows"), 404)
    problem(admin.post("/tenants", json={"slug": "Bad Slug!"}), 422)
    problem(admin.post("/tenants", json={"slug": t}), 409)
    weak = problem(admin.post("/users", json={"email": "weak@example.com", "password": "short"}), 422)
    assert weak["errors"][0]["field"] == "password"


def test_credentials_are_write_only_and_everything_is_audited(api, admin):
    t = new_tenant(admin)
    editor = Client(api.url, new_key(admin, t, "editor"))
    secret = "s3cr3t-value-that-must-not-leak"
    made = editor.post(f"/tenants/{t}/credentials", json={"name": "crm", "type": "bearer", "data": {"token": secret}})
    assert made.status_code == 201 and secret not in made.text
    listed = editor.get(f"/tenants/{t}/credentials")
    assert [c["name"] for c in listed.json()] == ["crm"] and secret not in listed.text
    problem(editor.post(f"/tenants/{t}/credentials", json={"name": "x", "type": "nope", "data": {}}), 422)
    assert editor.delete(f"/tenants/{t}/credentials/{made.json()['id']}").status_code == 204

    Client(api.url).sign_in(ADMIN, "a wrong password!")
    entries = admin.get(f"/tenants/{t}/audit", params={"limit": 500}).json()["items"]
    actions = [e["action"] for e in entries]
    for expected in ("tenant.create", "api_key.create", "credential.set", "credential.delete"):
        assert expected in actions, actions
    assert secret not in json.dumps(entries)
    cred_entry = next(e for e in entries if e["action"] == "credential.set")
    assert cred_entry["actor_type"] == "api_key" and cred_entry["ip"] == "127.0.0.1"
    failed = admin.get("/audit", params={"action": "auth.sign_in_failed"}).json()["items"]
    assert failed and failed[0]["outcome"] == "refused"
    assert flowfuse("audit", "verify", "--data-dir", str(api.data_dir)).returncode == 0


def test_suspend_and_delete_a_tenant(api, admin):
    t = new_tenant(admin)
    owner = Client(api.url, new_key(admin, t, "owner"))
    assert owner.post(f"/tenants/{t}/flows", json=HOOK_FLOW).status_code == 201
    owner.post(f"/tenants/{t}/flows/orders/activate")
    assert httpx.post(f"{api.url}/hooks/{t}/orders", json={"n": 1}).status_code == 200
    problem(owner.patch(f"/tenants/{t}", json={"status": "suspended"}), 403)  # instance admins only
    assert owner.patch(f"/tenants/{t}", json={"name": "Renamed"}).json()["name"] == "Renamed"
    assert admin.patch(f"/tenants/{t}", json={"status": "suspended"}).json()["status"] == "suspended"
    assert poll(lambda: httpx.post(f"{api.url}/hooks/{t}/orders", json={"n": 1}).status_code == 404,
                what="the suspended tenant's webhook to stop")
    assert owner.get(f"/tenants/{t}/flows/orders").status_code == 200  # data kept
    admin.patch(f"/tenants/{t}", json={"status": "active"})
    tenant_id = admin.get(f"/tenants/{t}").json()["id"]
    assert admin.delete(f"/tenants/{t}").status_code == 204
    problem(admin.get(f"/tenants/{t}"), 404)
    problem(owner.get(f"/tenants/{t}/flows"), 401)  # its keys went with it
    with sqlite3.connect(api.data_dir / "runs.db") as conn:
        assert conn.execute("SELECT count(*) FROM executions WHERE tenant_id=?", (tenant_id,)).fetchone()[0] == 0
    deleted = admin.get("/audit", params={"action": "tenant.delete"}).json()["items"]
    assert deleted[0]["target_id"] == tenant_id and deleted[0]["details"]["executions"] >= 1


def test_openapi_document_lists_the_api(api):
    doc = httpx.get(f"{api.url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    assert "/api/v1/tenants/{tenant}/flows" in paths and "/api/v1/tenants/{tenant}/executions" in paths
    assert len(paths) >= 30


def test_api_docs_are_served_from_the_appliance(api):
    page = httpx.get(f"{api.url}/api/docs")
    assert page.status_code == 200 and "/static/vendor/redoc/redoc.standalone.js" in page.text
    assert not re.search(r"""(src|href)=["']https?://""", page.text), "the docs page must not load from the internet"
    script = httpx.get(f"{api.url}/static/vendor/redoc/redoc.standalone.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_the_readme_prints_the_permission_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for permission in PERMISSIONS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{permission}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert [r for r, c in zip(ROLES, cells) if c == "yes"] == roles_with(permission), row


def test_retry_runs_a_failed_execution_from_its_failed_step(api, admin, peer):
    t = new_tenant(admin)
    operator = Client(api.url, new_key(admin, t, "operator"))
    flaky = {"name": "flaky", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "first", "type": "http_request", "params": {"url": f"{peer.url}/first"}},
        {"id": "second", "type": "http_request", "params": {"url": f"{peer.url}/second"},
         "retry": {"max_attempts": 2, "backoff_s": 0.01}}],
        "edges": [{"from": "start", "to": "first"}, {"from": "first", "to": "second"}]}
    peer.behave["/second"] = lambda count, req: ((500, {"down": True}, 0) if count <= 2 else (200, {"ok": count}, 0))
    assert admin.post(f"/tenants/{t}/flows", json=flaky).status_code == 201
    problem(operator.post(f"/tenants/{t}/executions/nope/retry"), 404)
    eid = operator.post(f"/tenants/{t}/flows/flaky/run", json={}).json()["execution_id"]
    failed = poll(lambda: (r := operator.get(f"/tenants/{t}/executions/{eid}").json())["status"] == "failed" and r,
                  what="the execution to fail")
    assert failed["error"]["node"] == "second" and peer.counts["/second"] == 2
    problem(Client(api.url, new_key(admin, t, "viewer")).post(f"/tenants/{t}/executions/{eid}/retry"), 403)

    assert operator.post(f"/tenants/{t}/executions/{eid}/retry").json()["rerun"] == ["second"]
    done = poll(lambda: (r := operator.get(f"/tenants/{t}/executions/{eid}").json())["status"] == "succeeded" and r,
                what="the retried execution to finish")
    assert peer.counts["/first"] == 1, "a succeeded step ran again"
    assert peer.counts["/second"] == 3
    assert done["output"][0]["body"] == {"ok": 3}
    keys = [r["headers"].get("Idempotency-Key") for r in peer.requests if r["path"] == "/second"]
    assert len(set(keys)) == 3, keys  # every attempt, retried or not, has its own idempotency key
    problem(operator.post(f"/tenants/{t}/executions/{eid}/retry"), 409)  # it no longer failed


def test_credentials_can_be_changed_in_part_and_tested(api, admin, peer):
    t = new_tenant(admin)
    editor = Client(api.url, new_key(admin, t, "editor"))
    made = editor.post(f"/tenants/{t}/credentials", json={"name": "crm", "type": "header",
                                                          "data": {"name": "X-Api-Key", "value": "first-secret"}})
    cid = made.json()["id"]
    tried = editor.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": f"{peer.url}/check"}).json()
    assert tried == {"ok": True, "status": 200}
    assert peer.requests[-1]["headers"]["X-Api-Key"] == "first-secret"

    changed = editor.patch(f"/tenants/{t}/credentials/{cid}", json={"name": "crm2", "data": {"value": "second-secret"}})
    assert changed.json()["name"] == "crm2" and sorted(changed.json()["fields"]) == ["name", "value"]
    assert "second-secret" not in changed.text
    editor.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": f"{peer.url}/check"})
    assert peer.requests[-1]["headers"]["X-Api-Key"] == "second-secret"  # the name field kept its value

    peer.behave["/denied"] = lambda count, req: (401, {"no": True}, 0)
    assert editor.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": f"{peer.url}/denied"}).json() == \
        {"ok": False, "status": 401}
    unreachable = editor.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": "http://127.0.0.1:9/"}).json()
    assert unreachable["ok"] is False and "second-secret" not in json.dumps(unreachable)
    assert editor.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": "not a url"}).json()["ok"] is False
    problem(editor.patch(f"/tenants/{t}/credentials/c_missing", json={"name": "x"}), 404)
    problem(editor.patch(f"/tenants/{t}/credentials/{cid}", json={"data": {"colour": "red"}}), 422)
    viewer = Client(api.url, new_key(admin, t, "viewer"))
    problem(viewer.post(f"/tenants/{t}/credentials/{cid}/test", json={"url": f"{peer.url}/check"}), 403)


def test_roles_endpoint_prints_the_permission_table(api):
    viewer_table = httpx.get(f"{api.url}/api/v1/roles")
    assert viewer_table.status_code == 401
    admin = signed_in_admin(api)
    table = admin.get("/roles").json()
    assert table["roles"] == list(ROLES)
    assert table["permissions"]["flows.write"] == ["editor", "admin", "owner"]
    assert set(table["permissions"]) == set(PERMISSIONS)
