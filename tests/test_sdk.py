"""The connector SDK: `connector new` writes a connector whose own test passes, `connectors docs`
documents every built-in node, discovery reports and skips broken plugins, and the shared HTTP
helper (auth, Retry-After, idempotency keys, API error messages) inside real flows."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import httpx
import pytest

from conftest import ROOT, Server, flowfuse, free_port
from connectors import default_registry
from connectors.sdk import NodeType, Param
from connectors.sdk.http import call
from connectors.sdk.testing import run_flow
from tests.api_helpers import ADMIN, PASSWORD, signed_in_admin


def test_connector_new_writes_a_connector_whose_test_passes(tmp_path):
    made = flowfuse("connector", "new", "acme-crm", "--dir", str(tmp_path / "acme"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "acme" / "acme_crm.py").exists() and (tmp_path / "acme" / "test_acme_crm.py").exists()
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_acme_crm.py"],
                            cwd=tmp_path / "acme", capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout

    again = flowfuse("connector", "new", "acme-crm", "--dir", str(tmp_path / "acme"))
    assert again.returncode == 1 and "exist already" in again.stderr
    bad = flowfuse("connector", "new", "json", "--dir", str(tmp_path))
    assert bad.returncode == 1 and "hide the Python module" in bad.stderr


def test_connectors_docs_lists_every_builtin_node_with_params_and_credential_types(tmp_path):
    out = tmp_path / "reference.md"
    made = flowfuse("connectors", "docs", "--out", str(out))
    assert made.returncode == 0, made.stderr
    page = out.read_text()
    registry = default_registry()
    for name in registry.names():
        assert f"(`{name}`)" in page, f"{name} is not documented"
    for name in registry.credential_type_names():
        assert f"### `{name}`" in page
    assert "| `url` | string | yes |" in page  # http_request's params table
    assert "- Trigger: webhook" in page
    assert "| `client_secret` | Client secret | yes | yes |" in page  # an OAuth2 type's fields
    printed = flowfuse("connectors", "docs")
    assert printed.returncode == 0 and printed.stdout == page


GOOD = '''
from connectors.sdk import NodeType, Param

def register(registry):
    registry.add(NodeType("plugin.shout", lambda ctx, items: [{**i, "text": str(i.get("text", "")).upper()}
                                                              for i in items],
                          category="Plugins", params={}))
'''
HALF = '''
from connectors.sdk import NodeType

def register(registry):
    registry.add(NodeType("plugin.half", lambda ctx, items: items))
    raise RuntimeError("cannot reach the licence server")
'''
SYNTAX = "def register(registry) ->:\n    pass\n"


def test_a_broken_plugin_is_listed_and_skipped_and_never_stops_start_up(tmp_path):
    data = tmp_path / "data"
    made = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN, env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    plugins = data / "plugins"
    plugins.mkdir()
    (plugins / "good.py").write_text(GOOD)
    (plugins / "half.py").write_text(HALF)
    (plugins / "typo.py").write_text(SYNTAX)
    (plugins / "nothing.py").write_text("x = 1\n")

    listed = flowfuse("connectors", "list", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    broken = {b["source"].rsplit("/", 1)[-1]: b["error"] for b in found["broken"]}
    assert set(broken) == {"half.py", "typo.py", "nothing.py"}
    assert "cannot reach the licence server" in broken["half.py"]
    assert "SyntaxError" in broken["typo.py"]
    assert "register" in broken["nothing.py"]
    types = {t for c in found["connectors"] for t in c["node_types"]}
    assert "plugin.shout" in types and "plugin.half" not in types  # what half.py added was taken back
    text = flowfuse("connectors", "list", "--data-dir", str(data))
    assert "BROKEN" in text.stdout and "half.py" in text.stdout

    srv = Server(data, free_port()).start("serve")  # start-up is not stopped by them
    try:
        palette = {t["type"] for t in signed_in_admin(srv).get("/node-types").json()["node_types"]}
        assert "plugin.shout" in palette and "plugin.half" not in palette
        srv.import_flow({"name": "shout", "nodes": [
            {"id": "hook", "type": "webhook", "params": {"path": "shout"}},
            {"id": "up", "type": "plugin.shout"}], "edges": [{"from": "hook", "to": "up"}]})
        answer = httpx.post(f"{srv.url}/hooks/default/shout", json={"text": "hello"})
        assert answer.status_code == 200 and answer.json() == {"text": "HELLO"}
        assert "half.py skipped" in srv.log.read_text()
    finally:
        srv.stop()


async def _call_node(ctx, items):
    out = []
    for item in items:
        p = ctx.params(item)
        response = await call(ctx, p["method"], p["url"], json=item, idempotency=p["idempotent"])
        out.append({"status": response.status_code, "body": response.json()})
    return out


def _register(registry):
    registry.add(NodeType("sdk.call", _call_node, credential_types=("api_key", "bearer", "basic"), params={
        "url": Param("string", required=True), "method": Param("string", default="POST"),
        "idempotent": Param("boolean", default=False)}))


def one_call(url: str, credential: tuple | None = None, **params) -> object:
    node = {"id": "call", "type": "sdk.call", "params": {"url": url, **params}}
    if credential:
        node["credential"] = "c"
    return run_flow({"name": "sdk", "nodes": [{"id": "start", "type": "manual"}, node],
                     "edges": [{"from": "start", "to": "call"}]}, [{"n": 1}], connectors=[_register],
                    credentials={"c": credential} if credential else None)


def test_call_waits_for_retry_after_then_succeeds_and_passes_the_idempotency_key(peer):
    peer.behave["/limited"] = lambda count, record: ((429, {"message": "slow down"}, 0) if count == 1
                                                     else (200, {"ok": count}, 0))
    outcome = one_call(f"{peer.url}/limited", idempotent=True)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == [{"status": 200, "body": {"ok": 2}}]
    first, second = peer.of("/limited")
    assert second["at"] - first["at"] >= 1.0  # no Retry-After header: waited 2^0 s
    keys = {r["headers"].get("Idempotency-Key") for r in (first, second)}
    assert len(keys) == 1 and next(iter(keys)).startswith("test-")  # the same key on the retry


def test_call_honours_a_retry_after_header_and_gives_up_past_its_retries():

    class Handler(http.server.BaseHTTPRequestHandler):
        hits: list = []

        def log_message(self, *args):
            pass

        def do_GET(self):
            Handler.hits.append(self.path)
            payload = json.dumps({"error": {"message": "rate limited"}}).encode()
            self.send_response(429)
            self.send_header("retry-after", "0")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        outcome = one_call(f"http://127.0.0.1:{server.server_address[1]}/x", method="GET")
    finally:
        server.shutdown()
        server.server_close()
    assert outcome.status == "failed"
    assert "HTTP 429 (still after 4 retries): rate limited" in outcome.error["message"]
    assert len(Handler.hits) == 5


@pytest.mark.parametrize("credential, check", [
    (("api_key", {"key": "k-123456789", "name": "X-Key"}), lambda r: r["headers"].get("X-Key") == "k-123456789"),
    (("api_key", {"key": "k-123456789", "name": "api_key", "in": "query"}),
     lambda r: r["path"].endswith("?api_key=k-123456789")),
    (("bearer", {"token": "tok-123456789"}), lambda r: r["headers"].get("Authorization") == "Bearer tok-123456789"),
    (("basic", {"username": "ada", "password": "pw-123456789"}),
     lambda r: r["headers"].get("Authorization", "").startswith("Basic ")),
])
def test_call_authenticates_with_each_credential_type_and_reports_the_api_message(peer, credential, check):
    outcome = one_call(f"{peer.url}/auth", credential)
    assert outcome.status == "succeeded", outcome.error
    assert check(peer.of("/auth")[-1])
    secret = next(v for k, v in credential[1].items() if k in ("key", "token", "password"))
    assert secret not in json.dumps(outcome.steps, default=str)  # redacted from what the run records

    peer.behave["/refuse"] = lambda count, record: (402, {"error": {"message": "Your card was declined."}}, 0)
    refused = one_call(f"{peer.url}/refuse", credential)
    assert refused.status == "failed"
    assert refused.error["message"].endswith("answered HTTP 402: Your card was declined.")


def test_the_sdk_package_keeps_the_old_imports_working():
    from connectors.sdk import CredentialType, Field, NodeContext, NodeError, Registry, StopExecution, Wait

    assert all((CredentialType, Field, NodeContext, NodeError, Registry, StopExecution, Wait))
    assert (ROOT / "connectors" / "sdk" / "__init__.py").exists()
