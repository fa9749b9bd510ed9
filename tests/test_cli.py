"""The `flowfuse` command line, run as a real process over real data directories.

Executions for the `executions` commands are made with the runtime the CLI itself uses (in this
process), which spares a server start; everything asserted is what the command prints.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import commands
from conftest import flowfuse

CALC = {"name": "calc", "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "double", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}},
], "edges": [{"from": "start", "to": "double"}]}

FAIL = {"name": "fail", "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "stop", "type": "stop_and_error", "params": {"message": "bad {{ json.n }}"}},
], "edges": [{"from": "start", "to": "stop"}]}


def orders(text: str) -> dict[str, Any]:
    return {"name": "orders", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "orders", "method": "POST"}},
        {"id": "note", "type": "set", "params": {"fields": {"note": text}}},
    ], "edges": [{"from": "hook", "to": "note"}], "settings": {"timeout_s": 30}}


def cli(settings, *args: str, input: str | None = None):
    return flowfuse(*args, "--data-dir", str(settings.data_dir), input=input)


def ok_json(result) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result, *fragments: str) -> str:
    """A failed command: exit status 1, nothing on stdout, one line on stderr naming the problem."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


# -- init ------------------------------------------------------------------------------------------------
def test_init_creates_the_data_directory_once(tmp_path):
    data = tmp_path / "srv" / "data"
    first = flowfuse("init", "--data-dir", str(data))
    made = ok_json(first)
    assert made["data_dir"] == str(data.resolve())
    assert made["migrations"]["flowfuse.db"] and made["migrations"]["runs.db"]
    for name in ("flowfuse.db", "runs.db", "flowfuse.key"):
        assert (data / name).is_file(), name
    assert stat.S_IMODE((data / "flowfuse.key").stat().st_mode) == 0o600
    key = (data / "flowfuse.key").read_bytes()

    again = ok_json(flowfuse("init", "--data-dir", str(data)))
    assert again["tenant"] == made["tenant"]  # the same tenant 'default', not a second one
    assert again["migrations"] == {"flowfuse.db": [], "runs.db": [], "audit.db": []}
    assert (data / "flowfuse.key").read_bytes() == key  # the master key is never replaced

    assert ok_json(flowfuse("flow", "list", "--data-dir", str(data))) == []


# -- run ---------------------------------------------------------------------------------------------------
def test_run_prints_steps_and_output_and_exits_0(tmp_path):
    result = flowfuse("run", str(write(tmp_path / "calc.json", CALC)), "--input", '[{"n": 1}, {"n": 2}]')
    out = ok_json(result)
    assert out["status"] == "succeeded"
    assert [(s["node"], s["status"]) for s in out["steps"]] == [("start", "succeeded"), ("double", "succeeded")]
    assert out["steps"][0]["items"] == [{"n": 1}, {"n": 2}]
    assert out["steps"][1]["items"] == [{"n": 1, "double": 2}, {"n": 2, "double": 4}]
    assert out["output"] == [{"n": 1, "double": 2}, {"n": 2, "double": 4}]

    single = ok_json(flowfuse("run", str(tmp_path / "calc.json"), "--input", '{"n": 5}'))
    assert single["output"] == [{"n": 5, "double": 10}]


def test_run_of_a_failing_flow_exits_1_with_the_error(tmp_path):
    result = flowfuse("run", str(write(tmp_path / "fail.json", FAIL)), "--input", '{"n": 3}')
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "failed"
    assert out["error"] == {"node": "stop", "message": "bad 3"}
    assert [(s["node"], s["status"]) for s in out["steps"]] == [("start", "succeeded"), ("stop", "failed")]
    assert out["steps"][1]["error"] == "bad 3"
    assert out["output"] == []


def test_run_of_an_invalid_flow_exits_2_with_the_validation_errors(tmp_path):
    broken = {"name": "broken", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "mystery", "type": "no_such_node"},
        {"id": "calc", "type": "set", "params": {}},
    ], "edges": [{"from": "start", "to": "calc"}, {"from": "calc", "to": "nowhere"}]}
    result = flowfuse("run", str(write(tmp_path / "broken.json", broken)))
    assert result.returncode == 2, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "invalid"
    errors = [(e["node"], e["message"]) for e in out["errors"]]
    assert any(node == "mystery" and "no_such_node" in message for node, message in errors), errors
    assert any(node == "calc" and "'fields' is required" in message for node, message in errors), errors
    assert any(node == "calc" and "'nowhere'" in message for node, message in errors), errors


# -- flows -------------------------------------------------------------------------------------------------
def test_flow_import_export_list_activate_deactivate(settings, tmp_path):
    v1 = write(tmp_path / "orders.json", orders("first"))
    first = ok_json(cli(settings, "flow", "import", str(v1)))
    assert first == {"name": "orders", "version": 1, "active": False, "trigger": "webhook",
                     "webhook": "POST /hooks/{tenant}/orders"}

    doc2 = orders("Größe ✓ second")
    second = ok_json(cli(settings, "flow", "import", str(write(tmp_path / "orders.json", doc2)), "--activate"))
    assert second["version"] == 2
    assert second["active"] is True

    exported = cli(settings, "flow", "export", "orders")
    assert ok_json(exported) == doc2
    # the same text a person would keep in git: indented, keys in their order, non-ASCII as is
    assert exported.stdout == json.dumps(doc2, indent=2, ensure_ascii=False) + "\n"

    ok_json(cli(settings, "flow", "import", str(write(tmp_path / "calc.json", CALC))))
    listed = ok_json(cli(settings, "flow", "list", "--tenant", "default"))
    assert [(f["name"], f["version"], f["active"], f["trigger"]) for f in listed] == [
        ("calc", 1, False, "manual"), ("orders", 2, True, "webhook")]

    assert ok_json(cli(settings, "flow", "deactivate", "orders"))["active"] is False
    assert ok_json(cli(settings, "flow", "activate", "orders"))["active"] is True


def test_flow_import_refuses_invalid_and_conflicting_flows(settings, tmp_path):
    invalid = orders("x")
    invalid["nodes"][1]["params"] = {"fields": "{{ json. }}"}
    result = cli(settings, "flow", "import", str(write(tmp_path / "invalid.json", invalid)))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "note" in result.stderr

    ok_json(cli(settings, "flow", "import", str(write(tmp_path / "orders.json", orders("a"))), "--activate"))
    rival = {**orders("b"), "name": "rival"}
    clash = cli(settings, "flow", "import", str(write(tmp_path / "rival.json", rival)), "--activate")
    one_line_error(clash, "'orders'", "already listens", "'orders'")
    assert [f["name"] for f in commands.list_flows(settings, None)] == ["orders"]  # nothing saved


# -- executions -------------------------------------------------------------------------------------------
@pytest.fixture
def history(settings):
    """Six executions in the order made: calc x2 succeeded, fail failed, calc queued, calc succeeded, calc queued."""
    made: list[tuple[str, str]] = []

    async def make():
        with commands.opened(settings) as rt:
            tid = rt.tenant_id(None)
            calc = rt.catalog.save_flow(tid, CALC)
            fail = rt.catalog.save_flow(tid, FAIL)
            for kind, n in (("ok", 1), ("ok", 2), ("fail", 3), ("queue", 4), ("ok", 5), ("queue", 6)):
                if kind == "queue":
                    made.append((rt.queue_execution(calc, "manual", [{"n": n}]).id, "queued"))
                else:
                    execution_id, outcome = await rt.run_inline(calc if kind == "ok" else fail, "manual",
                                                                [{"n": n}])
                    made.append((execution_id, outcome.status))
                time.sleep(0.003)  # ids order by the millisecond they were made in
    asyncio.run(make())
    assert [s for _, s in made] == ["succeeded", "succeeded", "failed", "queued", "succeeded", "queued"]
    return made


def test_executions_list_newest_first_with_filters_and_keyset_paging(settings, history):
    newest_first = [i for i, _ in reversed(history)]
    everything = ok_json(cli(settings, "executions", "list", "--json"))
    assert [e["id"] for e in everything] == newest_first
    assert [e["status"] for e in everything] == ["queued", "succeeded", "queued", "failed", "succeeded", "succeeded"]
    assert {e["flow"] for e in everything} == {"calc", "fail"}

    page1 = ok_json(cli(settings, "executions", "list", "--json", "--limit", "4"))
    page2 = ok_json(cli(settings, "executions", "list", "--json", "--limit", "4", "--before", page1[-1]["id"]))
    assert [e["id"] for e in page1] == newest_first[:4]
    assert [e["id"] for e in page2] == newest_first[4:]

    failed = ok_json(cli(settings, "executions", "list", "--json", "--flow", "fail"))
    assert [(e["id"], e["status"], e["error"]["message"]) for e in failed] == [(history[2][0], "failed", "bad 3")]
    queued = ok_json(cli(settings, "executions", "list", "--json", "--status", "queued", "--flow", "calc"))
    assert [e["id"] for e in queued] == [history[5][0], history[3][0]]

    text = cli(settings, "executions", "list")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines] == newest_first
    assert lines[3].split()[1:4] == ["failed", "manual", "fail"]
    assert lines[3].endswith("bad 3")


def test_executions_show_and_cancel(settings, history):
    succeeded, failed, queued = history[0][0], history[2][0], history[3][0]
    shown = ok_json(cli(settings, "executions", "show", succeeded, "--json"))
    assert shown["id"] == succeeded
    assert shown["status"] == "succeeded"
    assert shown["flow"] == "calc"
    assert shown["input"] == [{"n": 1}]
    assert shown["output"] == [{"n": 1, "double": 2}]
    assert [(s["node"], s["status"], s["items"]) for s in shown["steps"]] == [
        ("start", "succeeded", [{"n": 1}]), ("double", "succeeded", [{"n": 1, "double": 2}])]

    text = cli(settings, "executions", "show", failed)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == [failed, "fail", "failed", "(manual)"]
    assert lines[1] == "error at stop: bad 3"
    assert "stop" in lines[3] and "failed" in lines[3] and "bad 3" in lines[3]

    cancelled = cli(settings, "executions", "cancel", queued)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "cancelled (was queued)"
    assert commands.show_execution(settings, queued, None)["status"] == "cancelled"
    one_line_error(cli(settings, "executions", "cancel", queued), "already cancelled")
    one_line_error(cli(settings, "executions", "cancel", succeeded), "already succeeded")


# -- credentials ---------------------------------------------------------------------------------------------
def test_credentials_set_stores_them_encrypted_for_nodes_to_use(settings, tmp_path, peer):
    token = "tok-4e9f1c-PLAINTEXT"
    saved = cli(settings, "credentials", "set", "api", "--type", "bearer", "--data", json.dumps({"token": token}))
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.strip() == "credential 'api' saved"
    from_stdin = cli(settings, "credentials", "set", "basic-one", "--type", "basic",
                     input=json.dumps({"username": "ada", "password": "pw-PLAINTEXT-2"}))
    assert from_stdin.returncode == 0, from_stdin.stderr

    one_line_error(cli(settings, "credentials", "set", "x", "--type", "bearer", "--data", "{not json"),
                   "credential data must be a JSON object")
    one_line_error(cli(settings, "credentials", "set", "x", "--type", "bearer", "--data", "{}"), "token")

    for path in settings.data_dir.iterdir():
        if path.is_file():
            assert b"PLAINTEXT" not in path.read_bytes(), f"a credential is readable in {path.name}"

    # a node that names the credential sends it
    peer.behave["/who"] = lambda count, request: (200, {"auth": request["headers"].get("Authorization")}, 0)
    flow = {"name": "call", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "get", "type": "http_request", "credential": "api",
         "params": {"method": "GET", "url": peer.url + "/who"}},
    ], "edges": [{"from": "start", "to": "get"}]}

    async def call():
        with commands.opened(settings) as rt:
            row = rt.catalog.save_flow(rt.tenant_id(None), flow)
            return await rt.run_inline(row, "manual", [{}])
    _, outcome = asyncio.run(call())
    assert outcome.status == "succeeded", outcome.error
    assert peer.of("/who")[0]["headers"]["Authorization"] == f"Bearer {token}"


# -- errors ------------------------------------------------------------------------------------------------
def test_mistakes_get_a_one_line_error_and_exit_1(settings, tmp_path):
    one_line_error(cli(settings, "flow", "export", "nope"), "no flow named 'nope'", "flowfuse flow list")
    one_line_error(cli(settings, "executions", "list", "--flow", "nope"), "no flow named 'nope'")
    one_line_error(cli(settings, "executions", "show", "0123456789abcdef"), "no execution '0123456789abcdef'")
    one_line_error(cli(settings, "flow", "list", "--tenant", "nobody"), "no tenant 'nobody'")

    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"name": "x",\n  "nodes": [}\n')
    one_line_error(cli(settings, "flow", "import", str(malformed)), str(malformed), "not valid JSON", "line 2")
    one_line_error(cli(settings, "flow", "import", str(tmp_path / "absent.json")), "absent.json", "no such file")

    missing = tmp_path / "never-initialised"
    one_line_error(flowfuse("executions", "list", "--data-dir", str(missing)),
                   f"no data directory at {missing}", "flowfuse init")
    assert not missing.exists()  # reading commands do not create it
