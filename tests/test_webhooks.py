"""Webhooks at /hooks/{tenant}/{path} against a real `flowfuse serve` over real SQLite files.

Flows are saved with the same code the CLI runs (in this process, to spare a CLI start per flow);
the CLI itself is used where the test is about what a person does with it (activate, list).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance import commands
from appliance.runtime import init_data_dir
from appliance.settings import load
from conftest import FAST_ENV, Server, free_port


def settings_for(data_dir: Path, **env: str):
    return load(env={**FAST_ENV, "FLOWFUSE_CONFIG": "", **env}, overrides={"storage.data_dir": str(data_dir)})


def install(data_dir: Path, doc: dict[str, Any], activate: bool = True) -> dict[str, Any]:
    """Save a flow as `flowfuse flow import [--activate]` does."""
    path = data_dir.parent / f"{doc['name']}.json"
    path.write_text(json.dumps(doc))
    return commands.import_flow(settings_for(data_dir), path, None, activate)


def show(data_dir: Path, execution_id: str) -> dict[str, Any]:
    """What `flowfuse executions show ID --json` prints."""
    return commands.show_execution(settings_for(data_dir), execution_id, None)


def wait_finished(data_dir: Path, execution_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = show(data_dir, execution_id)
        if found["status"] in ("succeeded", "failed", "cancelled"):
            return found
        assert time.monotonic() < deadline, f"execution {execution_id} is still {found['status']}"
        time.sleep(0.05)


def hook(path: str, **params: Any) -> dict[str, Any]:
    return {"id": "hook", "type": "webhook", "params": {"path": path, **params}}


def chain(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "nodes": list(nodes),
            "edges": [{"from": a["id"], "to": b["id"]} for a, b in zip(nodes, nodes[1:])]}


FLOWS = [
    chain("echo", hook("echo"), {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}),
    chain("created", hook("orders/new"),
          {"id": "answer", "type": "respond_to_webhook",
           "params": {"status": 201, "headers": {"x-order": "{{ json.id }}", "location": "/orders/{{ json.id }}"},
                      "body": {"ok": True, "order": "{{ json.id }}"}}}),
    chain("queued", hook("later", respond="immediately"),
          {"id": "calc", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}}),
    chain("lookup", hook("lookup", method="GET"), {"id": "pass", "type": "noop"}),
    chain("broken", hook("broken"), {"id": "check", "type": "stop_and_error",
                                     "params": {"message": "order {{ json.id }} rejected"}}),
    chain("whoami", hook("whoami"),
          {"id": "seen", "type": "set",
           "params": {"fields": {"headers": "{{ execution.request.headers }}"}, "keep_others": False}}),
    chain("whoami-later", hook("whoami-later", respond="immediately"),
          {"id": "seen", "type": "set",
           "params": {"fields": {"headers": "{{ execution.request.headers }}"}, "keep_others": False}}),
]


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    """One `flowfuse serve` with the flows above, shared by the tests that do not need their own."""
    data = tmp_path_factory.mktemp("hooks") / "data"
    init_data_dir(settings_for(data))
    for doc in FLOWS:
        install(data, doc)
    srv = Server(data, free_port()).start("serve")
    yield srv
    srv.stop()


def test_sync_webhook_answers_with_the_last_nodes_items(hooks):
    one = httpx.post(hooks.url + "/hooks/default/echo", json={"id": 1})
    assert one.status_code == 200
    assert one.headers["content-type"].startswith("application/json")
    assert one.json() == {"id": 1, "seen": True}

    shown = show(hooks.data_dir, one.headers["x-flowfuse-execution"])
    assert shown["status"] == "succeeded"
    assert shown["trigger"] == "webhook"
    assert shown["flow"] == "echo"
    assert [s["node"] for s in shown["steps"]] == ["hook", "mark"]
    assert shown["output"] == [{"id": 1, "seen": True}]

    several = httpx.post(hooks.url + "/hooks/default/echo", json=[{"id": 1}, {"id": 2}])
    assert several.status_code == 200
    assert several.json() == [{"id": 1, "seen": True}, {"id": 2, "seen": True}]
    assert several.headers["x-flowfuse-execution"] != one.headers["x-flowfuse-execution"]


def test_respond_to_webhook_decides_status_headers_and_body(hooks):
    r = httpx.post(hooks.url + "/hooks/default/orders/new", json={"id": "A-7", "total": 120})
    assert r.status_code == 201
    assert r.headers["x-order"] == "A-7"
    assert r.headers["location"] == "/orders/A-7"
    assert r.json() == {"ok": True, "order": "A-7"}
    assert show(hooks.data_dir, r.headers["x-flowfuse-execution"])["status"] == "succeeded"


def test_async_webhook_answers_202_once_queued_and_the_worker_runs_it(hooks):
    r = httpx.post(hooks.url + "/hooks/default/later", json={"n": 21})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued"
    execution_id = body["execution_id"]
    assert r.headers["x-flowfuse-execution"] == execution_id

    # durably recorded before the answer came back
    recorded = show(hooks.data_dir, execution_id)
    assert recorded["status"] in ("queued", "running", "succeeded")
    assert recorded["input"] == [{"n": 21}]

    done = wait_finished(hooks.data_dir, execution_id)
    assert done["status"] == "succeeded"
    assert done["output"] == [{"n": 21, "double": 42}]
    assert [s["node"] for s in done["steps"]] == ["hook", "calc"]


def test_get_query_parameters_become_the_item(hooks):
    r = httpx.get(hooks.url + "/hooks/default/lookup", params=[("q", "shoes"), ("size", "42"), ("tag", "a"),
                                                              ("tag", "b")])
    assert r.status_code == 200
    assert r.json() == {"q": "shoes", "size": "42", "tag": ["a", "b"]}


def test_form_encoded_and_text_bodies(hooks):
    form = httpx.post(hooks.url + "/hooks/default/echo", data={"name": "Ada", "role": ["x", "y"]})
    assert form.status_code == 200
    assert form.json() == {"name": "Ada", "role": ["x", "y"], "seen": True}

    text = httpx.post(hooks.url + "/hooks/default/echo", content="hello there",
                      headers={"content-type": "text/plain"})
    assert text.status_code == 200
    assert text.json() == {"body": "hello there", "seen": True}


def test_failed_sync_flow_answers_500_with_the_node_and_error(hooks):
    r = httpx.post(hooks.url + "/hooks/default/broken", json={"id": 7})
    assert r.status_code == 500
    body = r.json()
    assert body["status"] == "failed"
    assert body["node"] == "check"
    assert body["error"] == "order 7 rejected"
    execution_id = r.headers["x-flowfuse-execution"]
    assert body["execution_id"] == execution_id

    shown = show(hooks.data_dir, execution_id)
    assert shown["status"] == "failed"
    assert shown["error"]["node"] == "check"
    assert shown["error"]["message"] == "order 7 rejected"


def test_secret_request_headers_are_not_recorded(hooks):
    secrets = {"authorization": "Bearer tok-SECRET-1a2b", "cookie": "session=cookie-SECRET-3c4d"}
    r = httpx.post(hooks.url + "/hooks/default/whoami", json={"a": 1},
                   headers={**secrets, "x-trace": "trace-77"})
    assert r.status_code == 200
    seen = r.json()["headers"]
    assert seen["x-trace"] == "trace-77"
    assert "authorization" not in seen
    assert "cookie" not in seen

    queued = httpx.post(hooks.url + "/hooks/default/whoami-later", json={"a": 2},
                        headers={**secrets, "x-trace": "trace-78"})
    assert queued.status_code == 202
    done = wait_finished(hooks.data_dir, queued.json()["execution_id"])
    assert done["status"] == "succeeded"
    assert done["output"][0]["headers"]["x-trace"] == "trace-78"
    assert "authorization" not in done["output"][0]["headers"]

    # nothing of either secret anywhere in the data directory (databases, their WAL files, the queue)
    for path in hooks.data_dir.iterdir():
        if path.is_file():
            content = path.read_bytes()
            assert b"SECRET" not in content, f"a secret header was written to {path.name}"


def test_flow_activated_after_start_is_served_without_restart(hooks):
    install(hooks.data_dir, chain("late", hook("late"), {"id": "v", "type": "set",
                                                         "params": {"fields": {"version": 1}}}), activate=False)
    url = hooks.url + "/hooks/default/late"
    assert httpx.post(url, json={}).status_code == 404  # saved but not active

    activated = hooks.cli("flow", "activate", "late")
    assert activated.returncode == 0, activated.stderr
    assert json.loads(activated.stdout)["active"] is True
    r = httpx.post(url, json={})
    assert r.status_code == 200
    assert r.json() == {"version": 1}

    # a new version saved while active answers at once
    install(hooks.data_dir, chain("late", hook("late"), {"id": "v", "type": "set",
                                                         "params": {"fields": {"version": 2}}}))
    assert httpx.post(url, json={}).json() == {"version": 2}

    deactivated = hooks.cli("flow", "deactivate", "late")
    assert deactivated.returncode == 0, deactivated.stderr
    gone = httpx.post(url, json={})
    assert gone.status_code == 404
    assert "x-flowfuse-execution" not in gone.headers


def test_rejected_requests_answer_4xx_and_create_no_execution(tmp_path):
    data = tmp_path / "data"
    init_data_dir(settings_for(data))
    install(data, chain("strict", hook("strict"), {"id": "pass", "type": "noop"}))
    install(data, chain("dormant", hook("dormant"), {"id": "pass", "type": "noop"}), activate=False)
    install(data, chain("retired", hook("retired"), {"id": "pass", "type": "noop"}))
    commands.set_active(settings_for(data), "retired", None, False)  # as `flowfuse flow deactivate retired`
    srv = Server(data, free_port(), env={"FLOWFUSE_SERVER_MAX_BODY_BYTES": "1024"}).start("serve")
    try:
        base = srv.url + "/hooks/default/"
        with httpx.Client() as client:
            for url in (base + "nope", base + "strict/extra", srv.url + "/hooks/nobody/strict",
                        base + "dormant", base + "retired"):
                r = client.post(url, json={"a": 1})
                assert r.status_code == 404, url
                assert "error" in r.json()

            wrong = client.get(base + "strict")
            assert wrong.status_code == 405
            assert wrong.headers["allow"] == "POST"
            assert "POST" in wrong.json()["error"]

            for content_type in ("application/json", "application/vnd.api+json; charset=utf-8"):
                bad = client.post(base + "strict", content=b'{"a": 1,', headers={"content-type": content_type})
                assert bad.status_code == 400, content_type
                assert "not valid JSON" in bad.json()["error"]

            big = json.dumps({"pad": "x" * 1100})
            too_large = client.post(base + "strict", content=big, headers={"content-type": "application/json"})
            assert too_large.status_code == 413
            assert "1024" in too_large.json()["error"]

            def chunks():  # no content-length: the limit must hold while reading
                for _ in range(4):
                    yield b" " * 400
            streamed = client.post(base + "strict", content=chunks(), headers={"content-type": "application/json"})
            assert streamed.status_code == 413

        listed = srv.cli("executions", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []

        # a body of exactly the limit is accepted, and is the one execution there is
        exact = json.dumps({"pad": "x" * (1024 - len('{"pad": ""}'))})
        assert len(exact) == 1024
        ok = httpx.post(base + "strict", content=exact, headers={"content-type": "application/json"})
        assert ok.status_code == 200
        assert [e["id"] for e in srv.executions()] == [ok.headers["x-flowfuse-execution"]]
    finally:
        srv.stop()
