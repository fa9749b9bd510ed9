'''`flowfuse connector new NAME`: a working connector module and its test, ready to change.

The module is a small but complete connector: one action that sends each item to an HTTP API
with an `api_key` credential through `connectors.sdk.http.call`. The test starts a loopback HTTP
server that speaks the API's format (refusing a wrong key with its error message) and runs the
connector inside a real flow through the engine, so it passes as generated and keeps passing as
the connector grows. docs/connectors/write-a-connector.md walks through both files.
'''

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ScaffoldError(ValueError):
    pass


def module_name(name: str) -> str:
    """The connector's module (and node type prefix) name: lower case, underscores for - and spaces."""
    found = re.sub(r"[\s-]+", "_", name.strip()).lower()
    if not NAME.match(found) or keyword.iskeyword(found):
        raise ScaffoldError(f"connector name {name!r} must start with a letter and have only letters, digits, - and _ "
                            "(up to 40), e.g. 'acme_crm'")
    if found in sys.stdlib_module_names or found in ("connectors", "engine", "appliance", "web", "tests", "httpx"):
        raise ScaffoldError(f"connector name {name!r} would hide the Python module {found!r}; choose another name")
    return found


MODULE = '''"""{title}: a FlowFuse connector (made by `flowfuse connector new {name}`).

Install it by copying this file to <data_dir>/plugins/ and restarting FlowFuse (or ship it in a
package with an entry point in the group `flowfuse.connectors`). See
docs/connectors/write-a-connector.md.
"""

from __future__ import annotations

from connectors.sdk import NodeError, NodeType, Param, Registry
from connectors.sdk.http import call


def register(registry: Registry) -> None:
    registry.add(NodeType(
        "{name}_send", _send, label="{title}: send item", category="{title}", credential_types=("api_key",),
        params={{
            "base_url": Param("string", required=True, description="the API's base URL, e.g. https://api.example.com"),
            "path": Param("string", default="/items", description="where each item is POSTed"),
            "body": Param("any", description="what to send (default: the item itself)"),
        }},
        description="Sends each item to the {title} API and outputs its answer."))


async def _send(ctx, items: list[dict]) -> list[dict]:
    out = []
    for i, item in enumerate(items):
        p = ctx.params(item)
        if not str(p["base_url"]).startswith(("http://", "https://")):
            raise NodeError(f"base_url must start with http:// or https://, got {{p['base_url']!r}}")
        url = str(p["base_url"]).rstrip("/") + "/" + str(p["path"]).lstrip("/")
        response = await call(ctx, "POST", url, json=item if p["body"] is None else p["body"])
        out.append({{"status": response.status_code, "body": response.json()}})
    return out
'''

TEST = '''"""Tests of the {name} connector: it runs inside a real flow through the FlowFuse engine,
against a loopback HTTP server that speaks the API's format. Run: pytest {test_file}"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import {name}
from connectors.sdk.testing import run_flow

KEY = "test-key-0123456789"


class _Api(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")
        if self.headers.get("x-api-key") != KEY:
            status, answer = 401, {{"error": {{"message": "invalid API key"}}}}
        else:
            _Api.seen.append({{"path": self.path, "body": body}})
            status, answer = 201, {{"id": len(_Api.seen), "received": body}}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Api.seen = []
    yield f"http://127.0.0.1:{{server.server_address[1]}}"
    server.shutdown()
    server.server_close()


def flow(api_url: str) -> dict:
    return {{"name": "{name}-test", "nodes": [
        {{"id": "start", "type": "manual"}},
        {{"id": "send", "type": "{name}_send", "credential": "api", "params": {{"base_url": api_url}}}},
    ], "edges": [{{"from": "start", "to": "send"}}]}}


def test_sends_each_item_and_outputs_the_answer(api):
    outcome = run_flow(flow(api), [{{"name": "Ada"}}, {{"name": "Grace"}}], connectors=[{name}],
                       credentials={{"api": ("api_key", {{"key": KEY, "name": "X-API-Key"}})}})
    assert outcome.status == "succeeded", outcome.error
    assert [o["body"]["received"] for o in outcome.output] == [{{"name": "Ada"}}, {{"name": "Grace"}}]
    assert [s["path"] for s in _Api.seen] == ["/items", "/items"]


def test_a_wrong_key_fails_with_the_api_message(api):
    outcome = run_flow(flow(api), [{{"name": "Ada"}}], connectors=[{name}],
                       credentials={{"api": ("api_key", {{"key": "wrong-key-000", "name": "X-API-Key"}})}})
    assert outcome.status == "failed"
    assert "HTTP 401" in outcome.error["message"] and "invalid API key" in outcome.error["message"]
    assert _Api.seen == []
'''


def write(name: str, directory: Path, force: bool = False) -> list[Path]:
    """Write `<name>.py` and `test_<name>.py` into `directory`; refuses to overwrite unless `force`."""
    module = module_name(name)
    title = module.replace("_", " ").title()
    directory.mkdir(parents=True, exist_ok=True)
    files = {directory / f"{module}.py": MODULE.format(name=module, title=title),
             directory / f"test_{module}.py": TEST.format(name=module, test_file=f"test_{module}.py")}
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise ScaffoldError(f"{', '.join(existing)} exist already; choose another name or directory (or --force)")
    for path, text in files.items():
        path.write_text(text)
    return list(files)


__all__ = ["ScaffoldError", "module_name", "write"]
