"""Debugging flows over a real `flowfuse serve`: the node catalogue, test runs of drafts streamed as
server-sent events, pinned data, partial runs, step mode, and who may do what."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from connectors import default_registry
from tests.api_helpers import Client, new_key, new_tenant, problem, signed_in_admin, start_with_admin
from tests.conftest import poll

#: Pins and step outputs above this many bytes of JSON are refused / truncated on this server.
OUTPUT_LIMIT = 20_000


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = start_with_admin(tmp_path_factory.mktemp("debug") / "data", "serve",
                           env={"FLOWFUSE_ENGINE_MAX_STEP_OUTPUT_BYTES": str(OUTPUT_LIMIT)})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(api):
    return signed_in_admin(api)


def fetch_flow(peer_url: str, name: str = "fetch") -> dict:
    """start -> fetch (an HTTP request to the peer) -> shape -> final."""
    return {"name": name, "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "fetch", "type": "http_request", "params": {"url": f"{peer_url}/data"}},
        {"id": "shape", "type": "set", "params": {"fields": {"count": "{{ json.body.count }}"}, "keep_others": False}},
        {"id": "final", "type": "set", "params": {"fields": {"done": True}}}],
        "edges": [{"from": "start", "to": "fetch"}, {"from": "fetch", "to": "shape"},
                  {"from": "shape", "to": "final"}]}


def stream(client: Client, tenant: str, execution_id: str, last_event_id: int | None = None) -> Iterator[dict]:
    """An execution's events as they arrive, as a browser's EventSource gets them: {event, data, id?}."""
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    current: dict = {}
    with client.stream("GET", f"/tenants/{tenant}/executions/{execution_id}/events", headers=headers,
                       timeout=httpx.Timeout(30)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "event" in current:
                    yield current
                current = {}
            elif not line.startswith(":"):  # a comment: the keep-alive
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value


def events(client: Client, tenant: str, execution_id: str, last_event_id: int | None = None) -> list[dict]:
    """Read an execution's event stream to its end."""
    return list(stream(client, tenant, execution_id, last_event_id))


def finished(client: Client, tenant: str, execution_id: str, status: str = "succeeded") -> dict:
    return poll(lambda: (r := client.get(f"/tenants/{tenant}/executions/{execution_id}").json())["status"] == status
                and r, what=lambda: f"execution {execution_id} {status}")


def test_node_types_list_every_registered_type_with_its_params(api, admin):
    problem(Client(api.url).get("/node-types"), 401)
    listed = {t["type"]: t for t in admin.get("/node-types").json()["node_types"]}
    registry = default_registry()
    assert sorted(listed) == registry.names()
    for name, spec in listed.items():
        assert set(spec["params"]) == set(registry.get(name).params), name
        assert spec["label"] and spec["category"] == registry.get(name).category
    assert {"Triggers", "Core", "Flow control", "HTTP"} <= {spec["category"] for spec in listed.values()}
    http = listed["http_request"]
    assert http["category"] == "HTTP" and http["credential"] is True and http["outputs"] == ["main"]
    assert http["params"]["url"]["required"] is True and http["params"]["body_type"]["choices"] == ["json", "form", "raw"]
    assert listed["switch"]["outputs"] is None and listed["switch"]["outputs_from"] == "rules"
    assert listed["if"]["outputs"] == ["true", "false"] and listed["merge"]["multi_input"] is True
    assert listed["webhook"]["trigger"] and listed["webhook"]["category"] == "Triggers"
    assert listed["webhook"]["params"]["path"]["expression"] is False
    assert listed["split_in_batches"]["category"] == "Flow control"

    credential_types = {c["name"]: c for c in admin.get("/credential-types").json()["credential_types"]}
    password = credential_types["basic"]["fields"]["password"]
    assert password["secret"] is True and password["required"] is True and password["label"]
    assert credential_types["basic"]["fields"]["username"]["secret"] is False
    assert credential_types["generic"]["other_fields"] is True and credential_types["bearer"]["other_fields"] is False


def test_a_draft_test_run_streams_its_steps_and_is_not_saved(api, admin, peer):
    t = new_tenant(admin)
    flow = fetch_flow(peer.url)
    assert admin.post(f"/tenants/{t}/flows", json=flow).status_code == 201
    versions = admin.get(f"/tenants/{t}/flows/fetch/versions").json()
    draft = {**flow, "nodes": [*flow["nodes"], {"id": "extra", "type": "set", "params": {"fields": {"x": 1}}}],
             "edges": [*flow["edges"], {"from": "final", "to": "extra"}]}
    draft.pop("name")  # a draft may leave the name out: the URL names the flow
    peer.behave["/data"] = lambda count, req: (200, {"count": 7}, 0.3)

    started = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"definition": draft, "input": {"n": 1}})
    assert started.status_code == 202, started.text
    eid = started.json()["execution_id"]
    assert started.json()["events"] == f"/api/v1/tenants/{t}/executions/{eid}/events"
    seen = events(admin, t, eid)

    steps = [e["data"] for e in seen if e["event"] == "step"]
    assert [s["node"] for s in steps] == ["start", "fetch", "shape", "final", "extra"]
    assert [s["seq"] for s in steps] == [0, 1, 2, 3, 4]
    assert [int(e["id"]) for e in seen if e["event"] == "step"] == [0, 1, 2, 3, 4]
    assert all(s["status"] == "succeeded" and s["items"] == 1 and s["attempt"] == 1 for s in steps)
    assert all(s["finished_at"] >= s["started_at"] and s["duration_ms"] >= 0 for s in steps)
    statuses = [e["data"]["status"] for e in seen if e["event"] == "execution"]
    assert statuses[-1] == "succeeded" and seen[-1]["event"] == "execution"
    assert peer.counts["/data"] == 1

    shown = admin.get(f"/tenants/{t}/executions/{eid}").json()
    assert shown["trigger"] == "test" and shown["test"]["draft"] is True
    assert shown["output"] == [{"count": 7, "done": True, "x": 1}]
    by_node = {s["node"]: s for s in shown["steps"]}
    assert by_node["start"]["input"] == [{"n": 1}]
    assert by_node["shape"]["input"] == by_node["fetch"]["items"]  # a node's input is its predecessor's output
    assert by_node["extra"]["input"] == [{"count": 7, "done": True}]
    assert admin.get(f"/tenants/{t}/flows/fetch/versions").json() == versions  # the draft is no version
    assert "extra" not in json.dumps(admin.get(f"/tenants/{t}/flows/fetch").json()["definition"])
    audited = admin.get(f"/tenants/{t}/audit", params={"action": "flow.test_run"}).json()["items"]
    assert [e["target_id"] for e in audited] == [eid]


def test_a_bad_draft_gets_422_naming_the_node(api, admin, peer):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    bad = fetch_flow(peer.url)
    bad["nodes"][2] = {"id": "shape", "type": "set", "params": {"colour": "red"}}
    body = problem(admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"definition": bad}), 422)
    assert any(e["field"] == "nodes.shape" and "colour" in e["message"] for e in body["errors"]), body
    renamed = {**fetch_flow(peer.url), "name": "other"}
    problem(admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"definition": renamed}), 422)
    problem(admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"start_at": "nowhere"}), 422)
    problem(admin.post(f"/tenants/{t}/flows/nothing/test-runs", json={}), 404)
    assert admin.get(f"/tenants/{t}/executions").json()["items"] == []
    assert peer.counts["/data"] == 0


def test_pinned_output_is_used_by_test_runs_only(api, admin, peer):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    assert admin.get(f"/tenants/{t}/flows/fetch/pins").json() == {"pins": {}}
    pinned = [{"body": {"count": 41}}, {"body": {"count": 42}}]
    r = admin.put(f"/tenants/{t}/flows/fetch/pins/fetch", json={"items": pinned})
    assert r.status_code == 200, r.text
    assert admin.get(f"/tenants/{t}/flows/fetch/pins").json() == {"pins": {"fetch": pinned}}

    eid = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={}).json()["execution_id"]
    shown = finished(admin, t, eid)
    assert peer.counts["/data"] == 0, "a pinned node ran"
    fetch = next(s for s in shown["steps"] if s["node"] == "fetch")
    assert fetch["pinned"] is True and fetch["items"] == pinned and fetch["status"] == "succeeded"
    assert [o["count"] for o in shown["output"]] == [41, 42]
    assert [e["data"].get("pinned") for e in events(admin, t, eid) if e["event"] == "step"] == \
        [None, True, None, None]

    run = admin.post(f"/tenants/{t}/flows/fetch/run", json={}).json()["execution_id"]  # production ignores pins
    shown = finished(admin, t, run)
    assert peer.counts["/data"] == 1
    assert "pinned" not in next(s for s in shown["steps"] if s["node"] == "fetch")
    assert shown["output"] == [{"count": 1, "done": True}]

    # pins belong to the flow: a new version keeps them; a node of a draft may be pinned too
    assert admin.put(f"/tenants/{t}/flows/fetch", json=fetch_flow(peer.url)).status_code == 200
    assert admin.put(f"/tenants/{t}/flows/fetch/pins/draft_node", json={"items": [{}]}).status_code == 200
    assert set(admin.get(f"/tenants/{t}/flows/fetch/pins").json()["pins"]) == {"fetch", "draft_node"}
    body = problem(admin.put(f"/tenants/{t}/flows/fetch/pins/bad*node", json={"items": []}), 404)
    assert "'bad*node'" in body["detail"]
    too_big = [{"text": "x" * 1000} for _ in range(OUTPUT_LIMIT // 1000 + 1)]
    body = problem(admin.put(f"/tenants/{t}/flows/fetch/pins/fetch", json={"items": too_big}), 413)
    assert str(OUTPUT_LIMIT) in body["detail"]
    problem(admin.put(f"/tenants/{t}/flows/fetch/pins/fetch", json={"items": [1, 2]}), 400)

    assert admin.delete(f"/tenants/{t}/flows/fetch/pins/fetch").status_code == 204
    problem(admin.delete(f"/tenants/{t}/flows/fetch/pins/fetch"), 404)
    assert admin.get(f"/tenants/{t}/flows/fetch/pins").json() == {"pins": {"draft_node": [{}]}}
    actions = [e["action"] for e in admin.get(f"/tenants/{t}/audit").json()["items"]]
    assert actions.count("flow.pin") == 2 and actions.count("flow.unpin") == 1

    # and they go with the flow
    assert admin.delete(f"/tenants/{t}/flows/fetch").status_code == 204
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    assert admin.get(f"/tenants/{t}/flows/fetch/pins").json() == {"pins": {}}


def test_a_partial_run_reuses_upstream_output(api, admin, peer):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    body = problem(admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"start_at": "shape"}), 422)
    assert body["detail"] == "node 'start' has no data to start from: pin its output or run the flow once"

    peer.behave["/data"] = lambda count, req: (200, {"count": count * 10}, 0)
    first = admin.post(f"/tenants/{t}/flows/fetch/run", json={"input": {"n": 1}}).json()["execution_id"]
    finished(admin, t, first)
    second = admin.post(f"/tenants/{t}/flows/fetch/run", json={"input": {"n": 2}}).json()["execution_id"]
    finished(admin, t, second)
    assert peer.counts["/data"] == 2

    draft = fetch_flow(peer.url)
    draft["nodes"][2]["params"]["fields"] = {"count": "{{ json.body.count + 1 }}"}  # the node being worked on
    eid = admin.post(f"/tenants/{t}/flows/fetch/test-runs",
                     json={"start_at": "shape", "definition": draft}).json()["execution_id"]
    shown = finished(admin, t, eid)
    assert peer.counts["/data"] == 2, "an upstream node ran again"
    steps = {s["node"]: s for s in shown["steps"]}
    assert steps["start"]["replayed"] and steps["fetch"]["replayed"]
    assert "replayed" not in steps["shape"] and "replayed" not in steps["final"]
    assert steps["fetch"]["items"][0]["body"] == {"count": 20}  # from the newest execution
    assert shown["output"] == [{"count": 21, "done": True}]

    named = admin.post(f"/tenants/{t}/flows/fetch/test-runs",
                       json={"start_at": "shape", "input_from": first}).json()["execution_id"]
    assert finished(admin, t, named)["output"] == [{"count": 10, "done": True}]
    only_final = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"start_at": "final"}).json()
    steps = finished(admin, t, only_final["execution_id"])["steps"]
    assert [(s["node"], bool(s.get("replayed"))) for s in steps] == \
        [("start", True), ("fetch", True), ("shape", True), ("final", False)]
    assert peer.counts["/data"] == 2
    problem(admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"input_from": "0000nothing"}), 422)


def test_step_mode_pauses_before_each_node_until_continued(api, admin, peer):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    eid = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"step_mode": True}).json()["execution_id"]

    for ran, next_node in ((["start"], "fetch"), (["start", "fetch"], "shape"), (["start", "fetch", "shape"], "final")):
        shown = poll(lambda node=next_node: (r := admin.get(f"/tenants/{t}/executions/{eid}").json())
                     .get("paused_at") == node and r, what=f"a pause before {next_node}")
        assert [s["node"] for s in shown["steps"]] == ran
        assert peer.counts["/data"] == (0 if next_node == "fetch" else 1)
        r = admin.post(f"/tenants/{t}/executions/{eid}/continue")
        assert r.status_code == 202 and r.json()["node"] == next_node, r.text
    shown = finished(admin, t, eid)
    assert [s["node"] for s in shown["steps"]] == ["start", "fetch", "shape", "final"] and "paused_at" not in shown
    assert peer.counts["/data"] == 1
    body = problem(admin.post(f"/tenants/{t}/executions/{eid}/continue"), 409)
    assert "not paused" in body["detail"]
    problem(admin.post(f"/tenants/{t}/executions/nope/continue"), 404)
    assert [e["action"] for e in admin.get(f"/tenants/{t}/audit", params={"action": "execution.continue"})
            .json()["items"]].count("execution.continue") == 3

    # live: one open stream shows each pause, and each step as it is committed after a continue
    live = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"step_mode": True}).json()["execution_id"]
    seen = []
    for event in stream(admin, t, live):
        seen.append(event)
        if event["event"] == "execution" and event["data"].get("paused_at"):
            assert admin.post(f"/tenants/{t}/executions/{live}/continue").status_code == 202
    shown = [e["data"].get("node") or e["data"].get("paused_at") or e["data"]["status"] for e in seen
             if e["event"] == "step" or e["data"]["status"] not in ("queued", "running", "waiting")
             or e["data"].get("paused_at")]  # queued, running: seen or not, depending on when the server looked
    assert shown == ["start", "fetch", "fetch", "shape", "shape", "final", "final", "succeeded"]
    assert [e["event"] for e in seen if e["data"].get("paused_at")] == ["execution"] * 3

    # a paused run can be cancelled like any waiting one
    other = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"step_mode": True}).json()["execution_id"]
    poll(lambda: admin.get(f"/tenants/{t}/executions/{other}").json().get("paused_at") == "fetch",
         what="the first pause")
    assert admin.post(f"/tenants/{t}/executions/{other}/cancel").status_code == 202
    seen = events(admin, t, other)
    assert seen[-1] == {"event": "execution", "data": {"status": "cancelled", "error": {"node": None,
                                                                                      "message": "cancelled"}}}
    problem(admin.post(f"/tenants/{t}/executions/{other}/continue"), 409)


def test_events_resume_after_last_event_id_without_duplicates(api, admin, peer):
    t = new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    eid = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={}).json()["execution_id"]
    whole = [e for e in events(admin, t, eid) if e["event"] == "step"]
    assert [int(e["id"]) for e in whole] == [0, 1, 2, 3]
    rest = events(admin, t, eid, last_event_id=1)
    assert [e["data"]["node"] for e in rest if e["event"] == "step"] == ["shape", "final"]
    assert rest[-1]["event"] == "execution" and rest[-1]["data"]["status"] == "succeeded"
    assert [e for e in events(admin, t, eid, last_event_id=3) if e["event"] == "step"] == []


def test_viewers_may_watch_but_not_debug_and_other_tenants_see_nothing(api, admin, peer):
    t, other = new_tenant(admin), new_tenant(admin)
    assert admin.post(f"/tenants/{t}/flows", json=fetch_flow(peer.url)).status_code == 201
    eid = admin.post(f"/tenants/{t}/flows/fetch/test-runs", json={"step_mode": True}).json()["execution_id"]
    poll(lambda: admin.get(f"/tenants/{t}/executions/{eid}").json().get("paused_at") == "fetch",
         what="the first pause")
    viewer = Client(api.url, new_key(admin, t, "viewer"))
    problem(viewer.post(f"/tenants/{t}/flows/fetch/test-runs", json={}), 403)
    problem(viewer.put(f"/tenants/{t}/flows/fetch/pins/fetch", json={"items": []}), 403)
    problem(viewer.delete(f"/tenants/{t}/flows/fetch/pins/fetch"), 403)
    problem(viewer.post(f"/tenants/{t}/executions/{eid}/continue"), 403)
    assert viewer.get(f"/tenants/{t}/flows/fetch/pins").status_code == 200
    assert viewer.get("/node-types").status_code == 200

    stranger = Client(api.url, new_key(admin, other, "owner"))
    for method, path in (("POST", f"/tenants/{t}/flows/fetch/test-runs"), ("GET", f"/tenants/{t}/flows/fetch/pins"),
                         ("PUT", f"/tenants/{t}/flows/fetch/pins/fetch"),
                         ("POST", f"/tenants/{t}/executions/{eid}/continue"),
                         ("GET", f"/tenants/{t}/executions/{eid}/events")):
        problem(stranger.request(method, path, json={"items": []} if method == "PUT" else {}), 404)
    # the tenant in the URL is the caller's own, the execution another tenant's: the same 404 as its detail
    detail = problem(stranger.get(f"/tenants/{other}/executions/{eid}"), 404)["detail"]
    assert problem(stranger.get(f"/tenants/{other}/executions/{eid}/events"), 404)["detail"] == detail
    problem(stranger.post(f"/tenants/{other}/executions/{eid}/continue"), 404)
    assert admin.get(f"/tenants/{t}/executions/{eid}").json()["status"] == "waiting"
    assert admin.post(f"/tenants/{t}/executions/{eid}/cancel").status_code == 202
