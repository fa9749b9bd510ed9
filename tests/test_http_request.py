"""The http_request node against real HTTP servers on 127.0.0.1.

`peer` (conftest) records what it received; a small local server here answers with redirects and
typed bodies, which the peer cannot send. Credentials go through the real vault and Runtime.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from appliance.commands import run_flow
from appliance.runtime import Runtime
from conftest import free_port


def request_flow(params: dict, *, node: dict | None = None, name: str = "http") -> dict:
    return {"name": name, "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "req", "type": "http_request", "params": params, **(node or {})},
    ], "edges": [{"from": "start", "to": "req"}]}


def call(params: dict, items: list[dict] | None = None, **node) -> dict:
    code, result = run_flow(request_flow(params, node=node), items if items is not None else [{}])
    assert code in (0, 1), result
    return result


def ok(params: dict, items: list[dict] | None = None, **node) -> list[dict]:
    result = call(params, items, **node)
    assert result["status"] == "succeeded", result.get("error")
    return result["output"]


def failed(params: dict, items: list[dict] | None = None, **node) -> str:
    result = call(params, items, **node)
    assert result["status"] == "failed", result
    assert result["error"]["node"] == "req"
    return result["error"]["message"]


class TypedServer:
    """Answers /redirect (302 to /target), /target, /text, /binary, /html with real content types."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.paths.append(self.path)
                path = self.path.split("?")[0]
                if path == "/redirect":
                    self._send(302, "text/plain", b"", {"Location": f"{server.url}/target"})
                elif path == "/target":
                    self._send(200, "application/json", b'{"arrived": true}')
                elif path == "/text":
                    self._send(200, "text/plain; charset=utf-8", "caf\u00e9 ok".encode())
                elif path == "/binary":
                    self._send(200, "image/png", bytes(range(256)))
                elif path == "/html":
                    self._send(200, "text/html", b"<html>not json</html>")
                else:
                    self._send(404, "text/plain", b"no such page")

            def _send(self, status, content_type, body, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def typed():
    server = TypedServer()
    yield server
    server.close()


@pytest.fixture
def runtime(settings):
    rt = Runtime(settings)
    yield rt
    rt.close()


def run_saved(runtime: Runtime, doc: dict, items: list[dict] | None = None):
    row = runtime.catalog.save_flow(runtime.tenant_id("default"), doc)
    execution_id, outcome = asyncio.run(runtime.run_inline(row, "manual", items if items is not None else [{}]))
    return execution_id, outcome


# -- methods, query, headers, bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_every_method_reaches_the_server(peer, method):
    [out] = ok({"method": method, "url": peer.url + "/thing"})
    [received] = peer.of("/thing")
    assert received["method"] == method
    assert out["status"] == 200
    assert out["body"] == {"path": "/thing", "count": 1}
    assert out["headers"]["content-type"] == "application/json"


def test_method_may_be_lower_case_or_an_expression(peer):
    ok({"method": "{{ json.verb }}", "url": peer.url + "/m"}, [{"verb": "put"}])
    assert peer.of("/m")[0]["method"] == "PUT"


def test_an_unknown_method_fails_with_the_choices(peer):
    message = failed({"method": "FETCH", "url": peer.url + "/m"})
    assert message.startswith("method must be one of GET, POST, PUT, PATCH, DELETE")
    assert peer.counts["/m"] == 0


def test_query_params_are_encoded_into_the_url(peer):
    ok({"url": peer.url + "/search", "query": {"q": "{{ json.term }}", "page": 2}}, [{"term": "red & blue"}])
    [received] = peer.of("/search")
    assert parse_qs(urlsplit(received["path"]).query) == {"q": ["red & blue"], "page": ["2"]}


def test_headers_are_sent_with_expressions_evaluated(peer):
    ok({"url": peer.url + "/h", "headers": {"X-Trace": "order-{{ json.id }}", "Accept": "application/json"}},
       [{"id": 9}])
    headers = peer.of("/h")[0]["headers"]
    assert headers["X-Trace"] == "order-9"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == "FlowFuse"


def test_json_body(peer):
    ok({"method": "POST", "url": peer.url + "/j", "body": {"id": "{{ json.id }}", "tags": ["a", "{{ json.tag }}"]}},
       [{"id": 3, "tag": "b"}])
    [received] = peer.of("/j")
    assert received["headers"]["Content-Type"] == "application/json"
    assert json.loads(received["body"]) == {"id": 3, "tags": ["a", "b"]}


def test_form_body(peer):
    ok({"method": "POST", "url": peer.url + "/form", "body_type": "form",
        "body": {"name": "{{ json.name }}", "n": 2}}, [{"name": "Ada Lovelace"}])
    [received] = peer.of("/form")
    assert received["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(received["body"]) == {"name": ["Ada Lovelace"], "n": ["2"]}


def test_a_form_body_must_be_an_object(peer):
    message = failed({"method": "POST", "url": peer.url + "/form", "body_type": "form", "body": "a=1"})
    assert message == "a form body must be an object of fields"


def test_raw_body(peer):
    ok({"method": "PUT", "url": peer.url + "/raw", "body_type": "raw", "body": "line {{ json.n }}\nend",
        "headers": {"Content-Type": "text/plain"}}, [{"n": 1}])
    [received] = peer.of("/raw")
    assert received["body"] == "line 1\nend"
    assert received["headers"]["Content-Type"] == "text/plain"


def test_a_get_sends_no_body(peer):
    ok({"method": "GET", "url": peer.url + "/g", "body": {"ignored": True}})
    [received] = peer.of("/g")
    assert received["body"] == ""
    assert "Content-Length" not in received["headers"] or received["headers"]["Content-Length"] == "0"


def test_one_request_per_item_with_its_own_values(peer):
    out = ok({"url": peer.url + "/items/{{ json.id }}"}, [{"id": 1}, {"id": 2}, {"id": 3}])
    assert [o["body"]["path"] for o in out] == ["/items/1", "/items/2", "/items/3"]
    assert [r["path"] for r in peer.requests] == ["/items/1", "/items/2", "/items/3"]


# -- responses --------------------------------------------------------------------------------------------------


def test_response_json_is_parsed(typed):
    [out] = ok({"url": typed.url + "/target"})
    assert out["body"] == {"arrived": True}


def test_response_text(typed):
    [out] = ok({"url": typed.url + "/text", "response": "text"})
    assert out["body"] == "caf\u00e9 ok"
    assert out["headers"]["content-type"] == "text/plain; charset=utf-8"


def test_response_binary_is_base64_with_its_content_type(typed):
    [out] = ok({"url": typed.url + "/binary", "response": "binary"})
    assert out["body"]["encoding"] == "base64"
    assert out["body"]["content_type"] == "image/png"
    assert base64.b64decode(out["body"]["data"]) == bytes(range(256))


def test_a_body_that_is_not_json_fails_saying_how_to_take_it_as_text(typed):
    message = failed({"url": typed.url + "/html"})
    assert "is not JSON (set response: text to take it as text)" in message
    assert "<html>not json</html>" in message


def test_follow_redirects_true_ends_at_the_target(typed):
    [out] = ok({"url": typed.url + "/redirect", "follow_redirects": True})
    assert out["status"] == 200
    assert out["body"] == {"arrived": True}
    assert typed.paths == ["/redirect", "/target"]


def test_follow_redirects_false_returns_the_redirect_itself(typed):
    [out] = ok({"url": typed.url + "/redirect", "follow_redirects": False, "response": "text"})
    assert out["status"] == 302
    assert out["headers"]["location"] == typed.url + "/target"
    assert out["body"] == ""
    assert typed.paths == ["/redirect"]


@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
def test_an_http_error_status_fails_the_node(peer, status):
    peer.behave["/err"] = lambda count, record: (status, {"error": "nope"}, 0)
    message = failed({"url": peer.url + "/err"})
    assert message == f"GET {peer.url}/err answered HTTP {status}: '{{\"error\": \"nope\"}}'"


def test_ignore_status_outputs_the_error_response(peer):
    peer.behave["/err"] = lambda count, record: (503, {"error": "busy"}, 0)
    [out] = ok({"url": peer.url + "/err", "ignore_status": True})
    assert out["status"] == 503
    assert out["body"] == {"error": "busy"}


def test_a_slow_server_times_out(peer):
    peer.behave["/slow"] = lambda count, record: (200, {}, 2.0)
    message = failed({"url": peer.url + "/slow", "timeout_s": 0.2})
    assert message == f"GET {peer.url}/slow timed out after 0.2 s"


def test_an_unreachable_server_fails_with_the_url():
    url = f"http://127.0.0.1:{free_port()}/down"
    message = failed({"url": url})
    assert message.startswith(f"GET {url} failed:")


def test_a_url_without_http_fails_clearly():
    message = failed({"url": "ftp://example.org/file"})
    assert message == "url 'ftp://example.org/file' must start with http:// or https://"


# -- idempotency key ----------------------------------------------------------------------------------------------


def keys_and_execution_id(peer, path: str, items: list[dict], **node) -> tuple[list[str], str]:
    """Run `id` (which records execution.id) then `req`; the keys `path` received, and the execution id."""
    doc = {"name": "idem", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "id", "type": "set", "params": {"fields": {"execution": "{{ execution.id }}"}}},
        {"id": "req", "type": "http_request", "params": {"url": peer.url + path}, **node},
    ], "edges": [{"from": "start", "to": "id"}, {"from": "id", "to": "req"}]}
    code, result = run_flow(doc, items)
    assert code == 0, result
    [execution_id] = {i["execution"] for s in result["steps"] if s["node"] == "id" for i in s["items"]}
    return [r["headers"]["Idempotency-Key"] for r in peer.of(path)], execution_id


def test_idempotency_key_is_execution_node_attempt(peer):
    keys, execution_id = keys_and_execution_id(peer, "/idem", [{}])
    assert keys == [f"{execution_id}:req:1"]


def test_idempotency_key_of_later_items_is_suffixed(peer):
    keys, execution_id = keys_and_execution_id(peer, "/idem", [{}, {}, {}])
    assert keys == [f"{execution_id}:req:1", f"{execution_id}:req:1#1", f"{execution_id}:req:1#2"]


def test_idempotency_key_counts_the_attempt(peer):
    peer.behave["/flaky"] = lambda count, record: (500 if count == 1 else 200, {"count": count}, 0)
    keys, execution_id = keys_and_execution_id(peer, "/flaky", [{}], retry={"max_attempts": 2, "backoff_s": 0})
    assert keys == [f"{execution_id}:req:1", f"{execution_id}:req:2"]


def test_idempotency_key_uses_the_real_execution_id(peer, runtime):
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/idem"}))
    assert outcome.status == "succeeded"
    assert peer.of("/idem")[0]["headers"]["Idempotency-Key"] == f"{execution_id}:req:1"


def test_a_given_idempotency_key_header_is_kept(peer):
    ok({"url": peer.url + "/idem", "headers": {"Idempotency-Key": "mine-{{ json.n }}"}}, [{"n": 1}])
    assert peer.of("/idem")[0]["headers"]["Idempotency-Key"] == "mine-1"


# -- credentials (real vault) ------------------------------------------------------------------------------------


def echo_headers(count, record):
    return 200, {"received": record["headers"]}, 0


def test_bearer_credential_is_sent_and_redacted_from_the_record(peer, runtime):
    secret = "tok-4f9a1c2e8b"
    runtime.vault.put(runtime.tenant_id("default"), "api", "bearer", {"token": secret})
    peer.behave["/echo"] = echo_headers
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/echo"}, node={"credential": "api"}))
    assert outcome.status == "succeeded", outcome.error
    assert peer.of("/echo")[0]["headers"]["Authorization"] == f"Bearer {secret}"
    shown = runtime.runs.show(execution_id)
    [step] = [s for s in shown["steps"] if s["node"] == "req"]
    assert step["items"][0]["body"]["received"]["Authorization"] == "Bearer [redacted]"
    assert secret not in json.dumps(shown)
    assert secret not in json.dumps(outcome.output)


def test_basic_credential_is_sent_and_neither_password_nor_header_is_recorded(peer, runtime):
    runtime.vault.put(runtime.tenant_id("default"), "site", "basic", {"username": "alice", "password": "pa55-w0rd!"})
    peer.behave["/echo"] = echo_headers
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/echo"}, node={"credential": "site"}))
    assert outcome.status == "succeeded", outcome.error
    token = base64.b64encode(b"alice:pa55-w0rd!").decode()
    assert peer.of("/echo")[0]["headers"]["Authorization"] == f"Basic {token}"
    recorded = json.dumps(runtime.runs.show(execution_id))
    assert "pa55-w0rd!" not in recorded
    assert token not in recorded  # the header's base64 carries the password too
    assert "Basic [redacted]" in recorded


def test_header_credential_is_sent_and_redacted(peer, runtime):
    runtime.vault.put(runtime.tenant_id("default"), "key", "header", {"name": "X-Api-Key", "value": "k-0123456789"})
    peer.behave["/echo"] = echo_headers
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/echo"}, node={"credential": "key"}))
    assert outcome.status == "succeeded", outcome.error
    assert peer.of("/echo")[0]["headers"]["X-Api-Key"] == "k-0123456789"
    assert "k-0123456789" not in json.dumps(runtime.runs.show(execution_id))


def test_a_secret_echoed_in_an_error_response_is_redacted_from_the_error(peer, runtime):
    secret = "tok-leaky-55aa"
    runtime.vault.put(runtime.tenant_id("default"), "api", "bearer", {"token": secret})
    peer.behave["/deny"] = lambda count, record: (401, {"invalid": record["headers"]["Authorization"]}, 0)
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/deny"}, node={"credential": "api"}))
    assert outcome.status == "failed"
    assert "answered HTTP 401" in outcome.error["message"]
    assert "Bearer [redacted]" in outcome.error["message"]
    shown = runtime.runs.show(execution_id)
    assert secret not in json.dumps(shown)
    assert secret not in json.dumps(outcome.error)


def test_a_missing_credential_fails_the_node_naming_it(peer, runtime):
    execution_id, outcome = run_saved(runtime, request_flow({"url": peer.url + "/x"}, node={"credential": "nope"}))
    assert outcome.status == "failed"
    assert outcome.error == {"node": "req", "message": "credential 'nope' does not exist; add it with "
                                                       "`flowfuse credentials set nope`"}
    assert peer.counts["/x"] == 0


def test_a_credential_of_a_type_that_cannot_authenticate_http(peer, runtime):
    runtime.vault.put(runtime.tenant_id("default"), "gen", "generic", {"anything": "value"})
    _, outcome = run_saved(runtime, request_flow({"url": peer.url + "/x"}, node={"credential": "gen"}))
    assert outcome.status == "failed"
    assert outcome.error["message"] == ("credential type 'generic' cannot authenticate HTTP requests by itself "
                                        "(use api_key, bearer, basic, header or an OAuth2 type, or "
                                        "register_scheme() for it)")


def test_credentials_need_a_data_directory(peer):
    message = failed({"url": peer.url + "/x"}, credential="api")
    assert message == "credential 'api' is not available without a data directory (pass --data-dir to `flowfuse run`)"
    assert peer.counts["/x"] == 0
