"""Connector triggers on a real `flowfuse serve`: a verified webhook trigger, a polling trigger whose
cursor survives a restart, and an event trigger. Their node types come from a plugin file copied
into the data directory's plugins folder, which also tests discovery of plugins."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

import httpx

from conftest import Server, flowfuse, free_port, poll
from tests.api_helpers import ADMIN, PASSWORD, signed_in_admin

PLUGIN = '''
import asyncio, hashlib, hmac, json, os

from connectors.sdk import CredentialType, Field, NodeType, Param, PollResult, Unverified
from connectors.sdk.http import call


def _verify(request):
    secret = request.credential["secret"].encode()
    expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-signature", "")):
        raise Unverified("signature does not match")


def _respond(request):
    body = json.loads(request.body or b"{}")
    if body.get("type") == "url_verification":
        return 200, {"x-handshake": "yes"}, {"challenge": body["challenge"]}
    return None


async def _poll(ctx):
    response = await call(ctx, "GET", ctx.params["feed_url"], params={"after": ctx.cursor or 0})
    items = response.json()["items"]
    return PollResult(items, items[-1]["id"] if items else ctx.cursor)


async def _listen(ctx):
    folder = ctx.params["folder"]
    while True:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name)) as handle:
                await ctx.emit([json.load(handle)], dedup_key=name)
        await asyncio.sleep(0.1)


def register(registry):
    registry.add_credential_type(CredentialType("test_signing", {"secret": Field("Signing secret")}))
    registry.add(NodeType("test.signed_webhook", None, trigger_kind="webhook", verify=_verify, respond=_respond,
                          credential_types=("test_signing",), category="Test",
                          params={"path": Param("string", required=True, expression=False)}))
    registry.add(NodeType("test.feed", None, trigger_kind="polling", poll=_poll, category="Test",
                          params={"feed_url": Param("string", required=True)}))
    registry.add(NodeType("test.folder", None, trigger_kind="event", listen=_listen, category="Test",
                          params={"folder": Param("string", required=True, expression=False)}))
'''


def serve_with_plugin(tmp_path: Path) -> Server:
    """A data directory (with an instance admin) whose plugins folder holds PLUGIN; not started yet."""
    data = tmp_path / "data"
    srv = Server(data, free_port())
    result = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN,
                      env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    (data / "plugins").mkdir()
    (data / "plugins" / "test_triggers_plugin.py").write_text(PLUGIN)
    return srv


def executions(server: Server, flow: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'runs.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, status, trigger, input FROM executions WHERE flow_name=? ORDER BY created_at",
                            (flow,)).fetchall()
    finally:
        conn.close()
    return [{"id": r[0], "status": r[1], "trigger": r[2], "input": json.loads(r[3])} for r in rows]


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_verified_webhook_trigger_refuses_a_bad_signature_and_runs_on_a_good_one(tmp_path):
    srv = serve_with_plugin(tmp_path)
    assert srv.cli("credentials", "set", "signing", "--type", "test_signing",
                   "--data", json.dumps({"secret": "whsec-0123456789"})).returncode == 0
    srv.start("serve")
    try:
        types = {t["type"] for t in signed_in_admin(srv).get("/node-types").json()["node_types"]}
        assert {"test.signed_webhook", "test.feed", "test.folder"} <= types  # the plugin is in the palette
        srv.import_flow({"name": "signed", "nodes": [
            {"id": "hook", "type": "test.signed_webhook", "credential": "signing", "params": {"path": "signed/in"}},
            {"id": "mark", "type": "set", "params": {"fields": {"verified": True}}},
        ], "edges": [{"from": "hook", "to": "mark"}]})
        url = f"{srv.url}/hooks/default/signed/in"
        body = json.dumps({"order": 7}).encode()

        bad = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                     "x-signature": sign("wrong-secret", body)})
        assert bad.status_code == 401
        assert bad.json() == {"error": "signature does not match"}
        unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert unsigned.status_code == 401
        assert executions(srv, "signed") == []  # refused requests start nothing

        good = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                      "x-signature": sign("whsec-0123456789", body)})
        assert good.status_code == 200, good.text
        assert good.json() == {"order": 7, "verified": True}

        challenge = json.dumps({"type": "url_verification", "challenge": "abc123"}).encode()
        handshake = httpx.post(url, content=challenge, headers={"content-type": "application/json",
                                                                "x-signature": sign("whsec-0123456789", challenge)})
        assert handshake.status_code == 200
        assert handshake.json() == {"challenge": "abc123"} and handshake.headers["x-handshake"] == "yes"
        ran = executions(srv, "signed")
        assert len(ran) == 1 and ran[0]["input"] == [{"order": 7}]  # the handshake started no execution
        assert "whsec-0123456789" not in srv.log.read_text()
    finally:
        srv.stop()


def test_polling_trigger_processes_each_item_once_across_a_restart(tmp_path, peer):
    feed = [{"id": 1, "title": "one"}, {"id": 2, "title": "two"}]

    def answer(count, record):
        after = int(httpx.URL(record["path"]).params.get("after", 0))
        return 200, {"items": [i for i in feed if i["id"] > after]}, 0
    peer.behave["/feed"] = answer
    srv = serve_with_plugin(tmp_path)
    srv.start("serve")
    flow = {"name": "feed", "nodes": [
        {"id": "poll", "type": "test.feed", "params": {"feed_url": f"{peer.url}/feed", "interval_s": 1}},
        {"id": "tell", "type": "http_request", "params": {"method": "POST", "url": f"{peer.url}/seen",
                                                          "body": "{{ json }}"}},
    ], "edges": [{"from": "poll", "to": "tell"}]}
    try:
        srv.import_flow(flow)
        first = poll(lambda: executions(srv, "feed"), 20, "the first poll's execution")
        assert first[0]["trigger"] == "polling"
        assert [i["id"] for i in first[0]["input"]] == [1, 2]  # one execution for what one poll found
        srv.wait_for(first[0]["id"])
        polls = len(peer.of("/feed"))
        poll(lambda: len(peer.of("/feed")) >= polls + 2, 20, "two more polls")
        assert len(executions(srv, "feed")) == 1  # polls that find nothing start nothing
    finally:
        srv.stop()

    feed.append({"id": 3, "title": "three"})
    srv = Server(srv.data_dir, free_port()).start("serve")
    try:
        polls = len(peer.of("/feed"))
        found = poll(lambda: [e for e in executions(srv, "feed") if e["input"][0]["id"] == 3], 20, "item 3")
        srv.wait_for(found[0]["id"])
        poll(lambda: len(peer.of("/feed")) >= polls + 3, 20, "two more polls after item 3")
        ids = [i["id"] for e in executions(srv, "feed") for i in e["input"]]
        assert ids == [1, 2, 3]  # nothing seen before the restart was processed again
        assert sorted(json.loads(r["body"])["id"] for r in peer.of("/seen")) == [1, 2, 3]
        assert peer.of("/feed")[-1]["path"].endswith("after=3")  # the stored cursor
    finally:
        srv.stop()


def test_event_trigger_emits_executions_until_the_flow_is_deactivated(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    srv = serve_with_plugin(tmp_path)
    srv.start("serve")
    try:
        srv.import_flow({"name": "events", "nodes": [
            {"id": "listen", "type": "test.folder", "params": {"folder": str(inbox)}},
            {"id": "mark", "type": "set", "params": {"fields": {"handled": True}}},
        ], "edges": [{"from": "listen", "to": "mark"}]})
        (inbox / "a.json").write_text(json.dumps({"event": "a"}))
        first = poll(lambda: executions(srv, "events"), 20, "the first event's execution")
        assert first[0]["trigger"] == "event" and first[0]["input"] == [{"event": "a"}]
        assert srv.wait_for(first[0]["id"])["output"] == [{"event": "a", "handled": True}]
        (inbox / "b.json").write_text(json.dumps({"event": "b"}))
        poll(lambda: len(executions(srv, "events")) == 2, 20, "the second event's execution")
        # the listener emits a.json and b.json again at every look: their dedup keys start nothing new
        time.sleep(0.5)
        assert [e["input"] for e in executions(srv, "events")] == [[{"event": "a"}], [{"event": "b"}]]

        assert srv.cli("flow", "deactivate", "events").returncode == 0
        poll(lambda: "trigger of flow events stopped" in srv.log.read_text(), 20, "the listener stopped")
        (inbox / "c.json").write_text(json.dumps({"event": "c"}))
        time.sleep(1.0)
        assert len(executions(srv, "events")) == 2
    finally:
        srv.stop()
