"""OpenAPI import against a real `flowfuse serve`: a real published document (the Swagger Petstore,
tests/data/openapi) and the appliance's own /api/openapi.json become per-tenant connectors whose
actions run inside flows against loopback HTTP servers that speak those documents' paths."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests.api_helpers import (
    PASSWORD,
    Client,
    new_key,
    new_tenant,
    new_user,
    problem,
    signed_in_admin,
    start_with_admin,
)
from tests.browser import sign_in
from tests.conftest import poll

DATA = Path(__file__).parent / "data" / "openapi"
PETSTORE = (DATA / "petstore.json").read_text()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_with_admin(tmp_path_factory.mktemp("openapi") / "data", "serve")
    yield server
    server.stop()


@pytest.fixture
def admin(srv):
    return signed_in_admin(srv)


class Api:
    """A loopback HTTP server that answers like the documented APIs: `routes[(method, path)]` is a
    function (request) -> (status, body); every request is recorded with its headers and query."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.routes: dict[tuple[str, str], Any] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                           "headers": {k.lower(): v for k, v in self.headers.items()},
                           "body": json.loads(raw) if raw and "json" in self.headers.get("content-type", "") else
                           raw.decode()}
                api.requests.append(request)
                route = api.routes.get((self.command, url.path))
                status, body = route(request) if route else (404, {"message": f"no route {url.path}"})
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def of(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def petstore():
    """The Petstore's paths under /v2, with its security: `api_key` header, OAuth2 (a bearer token)."""
    api = Api()

    def get_pet(request):
        if request["headers"].get("api_key") != "special-key":
            return 401, {"code": 401, "type": "error", "message": "api_key header missing or wrong"}
        return 200, {"id": int(request["path"].rsplit("/", 1)[1]), "name": "doggie", "photoUrls": [],
                     "status": "available"}

    def find_by_status(request):
        if request["headers"].get("authorization") != "Bearer pet-token":
            return 401, {"message": "no bearer token"}
        wanted = request["query"].get("status", [])
        pets = [{"id": 1, "name": "rex", "status": "available"}, {"id": 2, "name": "tom", "status": "sold"},
                {"id": 3, "name": "kit", "status": "pending"}]
        return 200, [p for p in pets if p["status"] in wanted]

    def add_pet(request):
        if request["headers"].get("authorization") != "Bearer pet-token":
            return 401, {"message": "no bearer token"}
        return 200, {**request["body"], "id": 99}

    for pet_id in range(1, 20):
        api.routes[("GET", f"/v2/pet/{pet_id}")] = get_pet
    api.routes[("GET", "/v2/pet/findByStatus")] = find_by_status
    api.routes[("POST", "/v2/pet")] = add_pet
    yield api
    api.close()


def import_spec(client: Client, tenant: str, name: str, spec: str | None = None, url: str | None = None):
    body = {"name": name, **({"spec": spec} if spec is not None else {}), **({"url": url} if url else {})}
    return client.post(f"/tenants/{tenant}/connectors/openapi", json=body)


def add_credential(client: Client, tenant: str, name: str, type_: str, data: dict[str, str]) -> None:
    r = client.post(f"/tenants/{tenant}/credentials", json={"name": name, "type": type_, "data": data})
    assert r.status_code in (200, 201), r.text


def run_flow(srv, client: Client, tenant: str, doc: dict, items: list[dict] | None = None) -> dict:
    """Save the flow through the API, run it (the worker executes it), and read the execution."""
    r = client.post(f"/tenants/{tenant}/flows", json=doc)
    assert r.status_code in (200, 201), r.text
    r = client.post(f"/tenants/{tenant}/flows/{doc['name']}/run", json={"input": items or [{}]})
    assert r.status_code == 202, r.text
    execution_id = r.json()["execution_id"]

    def finished():
        found = client.get(f"/tenants/{tenant}/executions/{execution_id}")
        assert found.status_code == 200, found.text
        return found.json() if found.json()["status"] in ("succeeded", "failed", "cancelled") else None
    return poll(finished, what=f"the end of execution {execution_id}")


def step(execution: dict, node_id: str) -> dict:
    return next(s for s in execution["steps"] if s["node"] == node_id)


def node_types(client: Client, tenant: str | None = None) -> dict[str, dict]:
    r = client.get("/node-types", params={"tenant": tenant} if tenant else None)
    assert r.status_code == 200, r.text
    return {t["type"]: t for t in r.json()["node_types"]}


# -- the published document ---------------------------------------------------------------------------------------
def test_every_petstore_operation_becomes_an_action_with_its_params(srv, admin):
    t = new_tenant(admin)
    r = import_spec(admin, t, "petstore", PETSTORE)
    assert r.status_code == 201, r.text
    made = r.json()
    doc = json.loads(PETSTORE)
    operation_ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert len(operation_ids) == 20
    assert {n["type"] for n in made["node_types"]} == {f"petstore.{o}" for o in operation_ids}

    types = node_types(admin, t)
    get_pet = types["petstore.getPetById"]
    assert get_pet["label"] == "Find pet by ID"
    assert get_pet["category"] == "petstore"
    assert "Returns a single pet" in get_pet["description"]
    assert get_pet["params"]["petId"]["kind"] == "integer" and get_pet["params"]["petId"]["required"]
    assert get_pet["params"]["base_url"]["default"] == "http://petstore.swagger.io/v2"
    assert get_pet["credential"] is True
    by_status = types["petstore.findPetsByStatus"]["params"]
    assert by_status["status"]["kind"] == "list" and by_status["status"]["required"]
    add_pet = types["petstore.addPet"]["params"]
    assert add_pet["name"]["kind"] == "string" and add_pet["name"]["required"]
    assert add_pet["photoUrls"]["kind"] == "list" and add_pet["photoUrls"]["required"]
    assert add_pet["category"]["kind"] == "object" and not add_pet["category"]["required"]
    assert add_pet["status"]["choices"] == ["available", "pending", "sold"]
    place_order = types["petstore.placeOrder"]["params"]
    assert place_order["complete"]["kind"] == "boolean" and place_order["quantity"]["kind"] == "integer"
    assert types["petstore.deletePet"]["params"]["api_key"]["kind"] == "string"  # a header parameter
    assert types["petstore.createUsersWithArrayInput"]["params"]["body"]["kind"] == "list"

    listed = admin.get(f"/tenants/{t}/connectors").json()["connectors"]
    assert [(c["name"], c["title"], len(c["node_types"])) for c in listed] == [("petstore", "Swagger Petstore", 20)]
    credential_types = {n["type"]: n["credential_types"] for n in listed[0]["node_types"]}
    assert credential_types["petstore.getPetById"] == ["api_key"]
    assert credential_types["petstore.addPet"] == ["bearer"]
    assert credential_types["petstore.getOrderById"] == []

    audit = admin.get(f"/tenants/{t}/audit", params={"action": "connector.import"}).json()
    entries = audit["items"] if isinstance(audit, dict) else audit
    assert any(e["target_id"] == "petstore" for e in entries)


def test_a_flow_runs_imported_actions_with_the_documents_auth(srv, admin, petstore):
    t = new_tenant(admin)
    assert import_spec(admin, t, "petstore", PETSTORE).status_code == 201
    add_credential(admin, t, "pet-key", "api_key", {"key": "special-key"})
    add_credential(admin, t, "pet-oauth", "bearer", {"token": "pet-token"})
    base = petstore.url + "/v2"
    doc = {"name": "pets", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "pet", "type": "petstore.getPetById", "credential": "pet-key",
         "params": {"petId": "{{ json.id }}", "base_url": base}},
        {"id": "sold", "type": "petstore.findPetsByStatus", "credential": "pet-oauth",
         "params": {"status": ["sold", "pending"], "base_url": base}},
        {"id": "add", "type": "petstore.addPet", "credential": "pet-oauth",
         "params": {"name": "{{ json.name }}", "photoUrls": [], "status": "available", "base_url": base}}],
        "edges": [{"from": "start", "to": "pet"}, {"from": "pet", "to": "add"}, {"from": "start", "to": "sold"}]}
    execution = run_flow(srv, admin, t, doc, [{"id": 7}, {"id": 8}])
    assert execution["status"] == "succeeded", execution

    # getPetById: one request per item, the petId in the path, the api_key header where the document says
    assert [i["id"] for i in step(execution, "pet")["items"]] == [7, 8]
    assert sorted(r["path"] for r in petstore.requests if r["path"].startswith("/v2/pet/") and
                  r["method"] == "GET" and "find" not in r["path"]) == ["/v2/pet/7", "/v2/pet/8"]
    assert all(r["headers"]["api_key"] == "special-key" for r in petstore.of("/v2/pet/7"))
    # findPetsByStatus: a list answer is one item per pet; the list param is a repeated query parameter
    assert [i["name"] for i in step(execution, "sold")["items"]] == ["tom", "kit"] * 2  # for each of 2 items
    assert len(petstore.of("/v2/pet/findByStatus")) == 2
    assert petstore.of("/v2/pet/findByStatus")[0]["query"] == {"status": ["sold", "pending"]}
    assert petstore.of("/v2/pet/findByStatus")[0]["headers"]["authorization"] == "Bearer pet-token"
    # addPet: the body built from the params (expressions evaluated per item)
    bodies = [r["body"] for r in petstore.of("/v2/pet")]
    assert bodies == [{"name": "doggie", "photoUrls": [], "status": "available"}] * 2
    assert [i["id"] for i in step(execution, "add")["items"]] == [99, 99]
    # the secret never reaches what the execution recorded
    assert "special-key" not in json.dumps(execution) and "pet-token" not in json.dumps(execution)


def test_a_wrong_key_fails_the_node_with_the_apis_message(srv, admin, petstore):
    t = new_tenant(admin)
    assert import_spec(admin, t, "petstore", PETSTORE).status_code == 201
    add_credential(admin, t, "bad-key", "api_key", {"key": "not-the-key-42"})
    doc = {"name": "pet", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "pet", "type": "petstore.getPetById", "credential": "bad-key",
         "params": {"petId": 3, "base_url": petstore.url + "/v2"}}],
        "edges": [{"from": "start", "to": "pet"}]}
    execution = run_flow(srv, admin, t, doc)
    assert execution["status"] == "failed"
    assert "HTTP 401" in step(execution, "pet")["error"]
    assert "api_key header missing or wrong" in step(execution, "pet")["error"]


def test_query_and_basic_security_schemes_are_applied(srv, admin, petstore):
    """The security-schemes document: an apiKey in the query and HTTP basic."""
    t = new_tenant(admin)
    assert import_spec(admin, t, "sec", (DATA / "security.json").read_text()).status_code == 201
    add_credential(admin, t, "q-key", "api_key", {"key": "k-123"})
    add_credential(admin, t, "login", "basic", {"username": "ann", "password": "s3cret"})
    petstore.routes[("GET", "/anything/apiKey")] = lambda r: (200, {"query": r["query"]})
    petstore.routes[("POST", "/anything/basic")] = lambda r: (200, {"ok": True})
    doc = {"name": "sec", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "query", "type": "sec.get_anything_apiKey", "credential": "q-key", "params": {"base_url": petstore.url}},
        {"id": "basic", "type": "sec.post_anything_basic", "credential": "login", "params": {"base_url": petstore.url}}],
        "edges": [{"from": "start", "to": "query"}, {"from": "start", "to": "basic"}]}
    execution = run_flow(srv, admin, t, doc)
    assert execution["status"] == "succeeded", execution
    assert petstore.of("/anything/apiKey")[0]["query"] == {"apiKey": ["k-123"]}
    assert petstore.of("/anything/basic")[0]["headers"]["authorization"] == \
        "Basic " + base64.b64encode(b"ann:s3cret").decode()


def test_the_yaml_31_document_imports_from_the_command_line(srv, admin):
    t = new_tenant(admin)
    result = srv.cli("connector", "from-openapi", str(DATA / "petstore-3.1.yaml"), "--name", "pets31", "--tenant", t)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["node_types"]) == 20
    # the running server sees it at once (another process wrote flowfuse.db)
    types = node_types(admin, t)
    assert types["pets31.getPetById"]["params"]["petId"]["kind"] == "integer"
    again = srv.cli("connector", "from-openapi", str(DATA / "petstore-3.1.yaml"), "--name", "pets31", "--tenant", t)
    assert again.returncode == 1 and "already has a connector named 'pets31'" in again.stderr
    broken = srv.cli("connector", "from-openapi", str(DATA / "README.md"), "--name", "readme", "--tenant", t)
    assert broken.returncode == 1 and "neither JSON nor YAML at line" in broken.stderr


# -- pagination -----------------------------------------------------------------------------------------------------
PAGED = {
    "openapi": "3.0.3", "info": {"title": "Paged", "version": "1"}, "servers": [{"url": "http://127.0.0.1:1"}],
    "paths": {
        "/events": {"get": {
            "operationId": "listEvents", "summary": "Events, by cursor",
            "x-pagination": {"style": "cursor", "param": "cursor", "cursor": "meta.next", "items": "data"},
            "parameters": [{"name": "cursor", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "a page"}}}},
        "/users": {"get": {
            "operationId": "listUsers",
            "parameters": [{"name": "page", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "a page", "content": {"application/json": {
                "schema": {"type": "array", "items": {"type": "object"}}}}}}}},
        "/orders": {"get": {
            "operationId": "listOrders",
            "responses": {"200": {"description": "a page", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"results": {"type": "array", "items": {"type": "object"}},
                                                  "next": {"type": "string", "nullable": True}}}}}}}}},
        "/plain": {"get": {"operationId": "plain", "responses": {"200": {"description": "no pages"}}}},
    },
}


def test_pagination_follows_the_pages(srv, admin, petstore):
    t = new_tenant(admin)
    assert import_spec(admin, t, "paged", json.dumps(PAGED)).status_code == 201
    types = node_types(admin, t)
    for name in ("paged.listEvents", "paged.listUsers", "paged.listOrders"):
        assert types[name]["params"]["paginate"]["kind"] == "boolean"
        assert types[name]["params"]["max_pages"]["default"] == 10
    assert "paginate" not in types["paged.plain"]["params"]

    events = {None: (["a", "b"], "c2"), "c2": (["c"], "c3"), "c3": (["d"], None)}
    petstore.routes[("GET", "/events")] = lambda r: (200, {
        "data": [{"event": e} for e in events[r["query"].get("cursor", [None])[0]][0]],
        "meta": {"next": events[r["query"].get("cursor", [None])[0]][1]}})
    users = {1: ["ann", "bob"], 2: ["cid"], 3: []}
    petstore.routes[("GET", "/users")] = lambda r: (200, [{"user": u} for u in users[int(r["query"]["page"][0])]])
    orders = {"1": (["o1"], petstore.url + "/orders?after=1"), "2": (["o2"], "/orders?after=2"), "3": (["o3"], None)}

    def list_orders(r):
        key = str(int(r["query"].get("after", ["0"])[0]) + 1)
        found, link = orders[key]
        return 200, {"results": [{"order": o} for o in found], "next": link}
    petstore.routes[("GET", "/orders")] = list_orders

    doc = {"name": "paged", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "events", "type": "paged.listEvents", "params": {"paginate": True, "base_url": petstore.url}},
        {"id": "first", "type": "paged.listEvents", "params": {"base_url": petstore.url}},
        {"id": "capped", "type": "paged.listEvents", "params": {"paginate": True, "max_pages": 2,
                                                                "base_url": petstore.url}},
        {"id": "users", "type": "paged.listUsers", "params": {"paginate": True, "base_url": petstore.url}},
        {"id": "orders", "type": "paged.listOrders", "params": {"paginate": True, "base_url": petstore.url}}],
        "edges": [{"from": "start", "to": n} for n in ("events", "first", "capped", "users", "orders")]}
    execution = run_flow(srv, admin, t, doc)
    assert execution["status"] == "succeeded", execution
    assert [i["event"] for i in step(execution, "events")["items"]] == ["a", "b", "c", "d"]
    assert step(execution, "first")["items"] == [{"data": [{"event": "a"}, {"event": "b"}], "meta": {"next": "c2"}}]
    assert [i["event"] for i in step(execution, "capped")["items"]] == ["a", "b", "c"]
    assert [i["user"] for i in step(execution, "users")["items"]] == ["ann", "bob", "cid"]
    assert [r["query"]["page"] for r in petstore.of("/users")] == [["1"], ["2"], ["3"]]
    assert [i["order"] for i in step(execution, "orders")["items"]] == ["o1", "o2", "o3"]


# -- the appliance's own API ------------------------------------------------------------------------------------------
def test_the_appliances_own_openapi_document_drives_its_api_from_a_flow(srv, admin):
    t = new_tenant(admin)
    r = import_spec(admin, t, "flowfuse", url=f"{srv.url}/api/openapi.json")
    assert r.status_code == 201, r.text
    assert r.json()["source"] == f"{srv.url}/api/openapi.json"
    types = node_types(admin, t)
    list_flows = next(v for k, v in types.items() if k.startswith("flowfuse.") and k.endswith("ListFlows"))
    assert list_flows["params"]["tenant"]["required"]
    assert list_flows["params"]["base_url"]["default"] == srv.url + "/"  # the relative server URL, resolved

    add_credential(admin, t, "self", "bearer", {"token": new_key(admin, t, "viewer")})
    doc = {"name": "list my flows", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "flows", "type": list_flows["type"], "credential": "self", "params": {"tenant": t}}],
        "edges": [{"from": "start", "to": "flows"}]}
    execution = run_flow(srv, admin, t, doc)
    assert execution["status"] == "succeeded", execution
    assert [i["name"] for i in step(execution, "flows")["items"]] == ["list my flows"]

    doc["nodes"][1]["credential"] = None  # without the key, the API refuses and the node says why
    doc["nodes"][1].pop("credential")
    execution = run_flow(srv, admin, t, doc)
    assert execution["status"] == "failed"
    assert "HTTP 401" in step(execution, "flows")["error"]


# -- bad documents --------------------------------------------------------------------------------------------------
def test_bad_documents_are_refused_with_a_message_naming_the_place(srv, admin):
    t = new_tenant(admin)
    body = problem(import_spec(admin, t, "x", json.dumps({"hello": "world"})), 422)
    assert "not an OpenAPI 3.0 or 3.1 document" in body["detail"]
    body = problem(import_spec(admin, t, "x", "just some words: [unclosed"), 422)
    assert "neither JSON nor YAML" in body["detail"]
    body = problem(import_spec(admin, t, "x", json.dumps({"swagger": "2.0", "paths": {}})), 422)
    assert "Swagger 2.0 is not supported" in body["detail"]

    dangling = json.loads(PETSTORE)
    dangling["paths"]["/store/order"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/Nowhere"}
    body = problem(import_spec(admin, t, "x", json.dumps(dangling)), 422)
    assert "paths./store/order.post.requestBody.content.application/json.schema.$ref" in body["detail"]
    assert "'#/components/schemas/Nowhere' points to nothing" in body["detail"]

    huge = json.loads(PETSTORE)
    huge["info"]["description"] = "x" * (10 * 1024 * 1024)
    body = problem(import_spec(admin, t, "x", json.dumps(huge)), 422)
    assert "at most 8,388,608" in body["detail"]

    body = problem(import_spec(admin, t, "Bad Name!", PETSTORE), 422)
    assert "connector name" in body["detail"]
    body = problem(import_spec(admin, t, "x", url=f"{srv.url}/no/such/document.json"), 422)
    assert "HTTP 40" in body["detail"]
    body = problem(import_spec(admin, t, "x", PETSTORE, url=f"{srv.url}/api/openapi.json"), 422)
    assert "not both" in body["detail"]
    installed = next(k.split(".")[0] for k in node_types(admin) if "." in k)  # e.g. slack (slack.post_message)
    body = problem(import_spec(admin, t, installed, PETSTORE), 409)
    assert f"the name {installed!r} belongs to the installed connector" in body["detail"]
    assert admin.get(f"/tenants/{t}/connectors").json()["connectors"] == []


# -- tenants, roles, deletion -------------------------------------------------------------------------------------
def test_another_tenant_cannot_see_or_use_an_imported_connector(srv, admin):
    a, b = new_tenant(admin), new_tenant(admin)
    assert import_spec(admin, a, "petstore", PETSTORE).status_code == 201
    _, b_editor = new_user(admin, b, "editor")
    bob = Client(srv.url)
    assert bob.sign_in(b_editor).status_code == 201

    assert not [k for k in node_types(bob, b) if k.startswith("petstore.")]
    assert not [k for k in node_types(bob) if k.startswith("petstore.")]  # nor in the global list
    assert bob.get(f"/tenants/{b}/connectors").json()["connectors"] == []
    problem(bob.get("/node-types", params={"tenant": a}), 404)
    problem(bob.get(f"/tenants/{a}/connectors"), 404)
    problem(bob.delete(f"/tenants/{a}/connectors/petstore"), 404)
    problem(bob.delete(f"/tenants/{b}/connectors/petstore"), 404)

    doc = {"name": "steal", "nodes": [{"id": "start", "type": "manual"},
                                      {"id": "pet", "type": "petstore.getPetById", "params": {"petId": 1}}],
           "edges": [{"from": "start", "to": "pet"}]}
    body = problem(bob.post(f"/tenants/{b}/flows", json=doc), 422)
    assert "unknown node type 'petstore.getPetById'" in body["errors"][0]["message"]
    assert admin.post(f"/tenants/{a}/flows", json=doc).status_code == 201  # tenant A may


def test_roles_and_deleting_a_connector(srv, admin):
    t = new_tenant(admin)
    _, viewer = new_user(admin, t, "viewer")
    vic = Client(srv.url)
    assert vic.sign_in(viewer).status_code == 201
    problem(import_spec(vic, t, "petstore", PETSTORE), 403)
    assert import_spec(admin, t, "petstore", PETSTORE).status_code == 201
    assert [c["name"] for c in vic.get(f"/tenants/{t}/connectors").json()["connectors"]] == ["petstore"]
    problem(vic.delete(f"/tenants/{t}/connectors/petstore"), 403)

    doc = {"name": "uses it", "nodes": [{"id": "start", "type": "manual"},
                                        {"id": "pet", "type": "petstore.getPetById", "params": {"petId": 1}}],
           "edges": [{"from": "start", "to": "pet"}]}
    assert admin.post(f"/tenants/{t}/flows", json=doc).status_code == 201
    body = problem(admin.delete(f"/tenants/{t}/connectors/petstore"), 409)
    assert "'uses it'" in body["detail"]
    assert admin.delete(f"/tenants/{t}/flows/uses it").status_code == 204
    assert admin.delete(f"/tenants/{t}/connectors/petstore").status_code == 204
    assert not [k for k in node_types(admin, t) if k.startswith("petstore.")]
    body = problem(admin.post(f"/tenants/{t}/flows", json=doc), 422)
    assert "unknown node type 'petstore.getPetById'" in body["errors"][0]["message"]
    audit = admin.get(f"/tenants/{t}/audit", params={"action": "connector.delete"}).json()
    entries = audit["items"] if isinstance(audit, dict) else audit
    assert [e["target_id"] for e in entries] == ["petstore"]


# -- the builder ------------------------------------------------------------------------------------------------------
def test_the_builder_palette_lists_the_imported_actions(page, srv, admin):
    t = new_tenant(admin)
    assert import_spec(admin, t, "petstore", PETSTORE).status_code == 201
    _, editor = new_user(admin, t, "editor")
    sign_in(page, srv.url, editor, PASSWORD)
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.goto(f"{srv.url}/t/{t}/flows/new?name=pets")
    expect(page.locator("#builder")).to_have_attribute("data-ready", "yes")
    page.get_by_label("Search nodes").fill("pet by id")
    item = page.locator('.palette-item[data-type="petstore.getPetById"]')
    expect(item).to_be_visible()
    expect(item).to_contain_text("Find pet by ID")


# -- the parser on its own: documents that must not hang or crash it ----------------------------------------------
def test_recursive_schemas_parse_and_yaml_alias_bombs_and_outside_refs_are_refused():
    from connectors import openapi

    recursive = {"openapi": "3.1.0", "info": {"title": "Tree", "version": "1"}, "paths": {"/nodes": {"post": {
        "operationId": "addNode", "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Node"}}}}, "responses": {"200": {"description": "ok"}}}}},
        "components": {"schemas": {"Node": {"type": "object", "required": ["label"], "properties": {
            "label": {"type": ["string", "null"]},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}}}}
    [add] = openapi.parse(json.dumps(recursive), "tree").node_types()
    assert (add.params["label"].kind, add.params["label"].required) == ("string", True)
    assert add.params["children"].kind == "list"
    assert add.params["base_url"].required  # no server URL in the document, none to resolve it against

    bomb = "openapi: 3.0.0\npaths: {}\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    with pytest.raises(openapi.SpecError, match="too large to import"):
        openapi.parse(bomb, "bomb")

    outside = dict(recursive, components={"schemas": {"Node": {"$ref": "other.yaml#/Node"}}})
    with pytest.raises(openapi.SpecError, match=r"components\.schemas\.Node\.\$ref: .* points outside this document"):
        openapi.parse(json.dumps(outside), "tree")
