"""The worker through a real `flowfuse serve`: asynchronous webhooks, parked waits and retries,
resume URLs, error flows, sub-flows and cancellation.

The tests share one server (see the `server` fixture below). Every flow is imported with the CLI
and started over HTTP on 127.0.0.1; what the tests check is what a user sees: HTTP answers,
`flowfuse executions show/list/cancel`, and the requests that arrived at a real peer server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import threading
import time

import httpx
import pytest

from appliance.runtime import Runtime
from conftest import Server, flowfuse, free_port, poll, status


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `flowfuse serve` for this module's tests (each uses its own flows and paths): starting a
    server per test would cost more than the tests themselves."""
    data = tmp_path_factory.mktemp("worker") / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port()).start("serve")
    yield srv
    srv.stop()


def hook(path: str, respond: str = "immediately") -> dict:
    return {"id": "hook", "type": "webhook", "params": {"path": path, "respond": respond}}


def chain(*nodes: dict) -> list[dict]:
    return [{"from": a["id"], "to": b["id"]} for a, b in zip(nodes, nodes[1:])]


def start(server, path: str, body: dict | None = None) -> str:
    """POST to an asynchronous webhook; it answers 202 with the id of the queued execution."""
    r = httpx.post(f"{server.url}/hooks/default/{path}", json=body or {}, timeout=10)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    assert r.headers["x-flowfuse-execution"] == r.json()["execution_id"]
    return r.json()["execution_id"]






def wait_status(server, execution_id: str, wanted: str, timeout: float = 20) -> None:
    poll(lambda: status(server.data_dir, execution_id) == wanted, timeout,
         lambda: f"status {wanted!r} of {execution_id} (now {status(server.data_dir, execution_id)!r})")


def finished(server, execution_id: str, timeout: float = 30) -> dict:
    """Wait until the execution has ended, then show it with the CLI."""
    poll(lambda: status(server.data_dir, execution_id) in ("succeeded", "failed", "cancelled"), timeout,
         lambda: f"the end of {execution_id} (now {status(server.data_dir, execution_id)!r})")
    return server.execution(execution_id)


def step(shown: dict, node: str) -> list[dict]:
    return [s for s in shown["steps"] if s["node"] == node]


# -- asynchronous webhooks ---------------------------------------------------------------------------


def test_async_webhooks_answer_202_and_the_worker_runs_every_one(server, peer):
    server.import_flow({"name": "ingest", "nodes": [
        hook("ingest"),
        {"id": "forward", "type": "http_request",
         "params": {"method": "POST", "url": peer.url + "/ingest", "body": "{{ json }}"}},
    ], "edges": [{"from": "hook", "to": "forward"}]})
    ids = [start(server, "ingest", {"n": n}) for n in range(10)]
    assert len(set(ids)) == 10
    poll(lambda: all(status(server.data_dir, i) in ("succeeded", "failed") for i in ids), 30, "the end of all executions")
    assert sorted(json.loads(r["body"])["n"] for r in peer.of("/ingest")) == list(range(10))
    listed = server.executions("--flow", "ingest")
    assert sorted(e["id"] for e in listed) == sorted(ids)
    assert {(e["status"], e["trigger"]) for e in listed} == {("succeeded", "webhook")}
    shown = server.execution(ids[3])
    assert shown["input"] == [{"n": 3}]
    response = step(shown, "forward")[0]["items"][0]
    assert response["status"] == 200
    assert response["body"]["path"] == "/ingest"


# -- wait nodes ----------------------------------------------------------------------------------------


def test_wait_longer_than_inline_max_parks_the_execution_and_resumes_it(server, peer):
    server.import_flow({"name": "later", "nodes": [
        hook("later"),
        {"id": "pause", "type": "wait", "params": {"seconds": 2.5}},
        {"id": "ping", "type": "http_request", "params": {"url": peer.url + "/after-wait"}},
    ], "edges": [{"from": "hook", "to": "pause"}, {"from": "pause", "to": "ping"}]})
    posted = time.time()
    execution_id = start(server, "later", {"order": 7})
    wait_status(server, execution_id, "waiting")
    assert peer.counts["/after-wait"] == 0
    shown = finished(server, execution_id)
    assert shown["status"] == "succeeded"
    assert peer.counts["/after-wait"] == 1
    assert peer.of("/after-wait")[0]["at"] - posted >= 2.5
    assert shown["finished_at"] - shown["created_at"] >= 2.5
    assert step(shown, "pause")[-1]["status"] == "succeeded"
    assert step(shown, "pause")[-1]["items"] == [{"order": 7}]


def test_wait_until_an_iso_time(server, peer):
    server.import_flow({"name": "until", "nodes": [
        hook("until"),
        {"id": "pause", "type": "wait", "params": {"until": "{{ json.at }}"}},
        {"id": "ping", "type": "http_request", "params": {"url": peer.url + "/at"}},
    ], "edges": [{"from": "hook", "to": "pause"}, {"from": "pause", "to": "ping"}]})
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2.5)
    execution_id = start(server, "until", {"at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    wait_status(server, execution_id, "waiting")
    shown = finished(server, execution_id)
    assert shown["status"] == "succeeded"
    assert peer.of("/at")[0]["at"] >= at.timestamp()
    assert shown["finished_at"] >= at.timestamp()


def test_wait_for_the_resume_url(server, peer):
    server.import_flow({"name": "approval", "nodes": [
        hook("approval"),
        {"id": "ask", "type": "http_request", "params": {
            "method": "POST", "url": peer.url + "/ask",
            "body": {"order": "{{ json.order }}", "resume_url": "{{ execution.resume_url }}"}}},
        {"id": "decision", "type": "wait", "params": {"resume": "webhook"}},
        {"id": "result", "type": "set", "params": {"fields": {"approved_by": "{{ json.by }}"}}},
    ], "edges": chain(hook("approval"), {"id": "ask"}, {"id": "decision"}, {"id": "result"})})
    execution_id = start(server, "approval", {"order": 42})
    poll(lambda: peer.counts["/ask"] == 1, what="the request for approval")
    asked = json.loads(peer.of("/ask")[0]["body"])
    assert asked["order"] == 42
    resume_url = asked["resume_url"]
    assert resume_url.startswith(f"{server.url}/hooks/default/_resume/{execution_id}/"), resume_url
    wait_status(server, execution_id, "waiting")
    time.sleep(0.5)
    assert status(server.data_dir, execution_id) == "waiting"  # nothing resumes it but its URL

    wrong = httpx.post(resume_url.rsplit("/", 1)[0] + "/not-the-token", json={"by": "mallory"})
    assert wrong.status_code == 404
    assert status(server.data_dir, execution_id) == "waiting"

    r = httpx.post(resume_url, json={"by": "alice", "ok": True})
    assert r.status_code == 202
    assert r.json() == {"execution_id": execution_id, "status": "resumed"}
    shown = finished(server, execution_id)
    assert shown["status"] == "succeeded"
    assert step(shown, "decision")[-1]["items"] == [{"by": "alice", "ok": True}]
    assert shown["output"] == [{"by": "alice", "ok": True, "approved_by": "alice"}]
    assert peer.counts["/ask"] == 1  # the step before the wait was not run again

    again = httpx.post(resume_url, json={"by": "bob"})
    assert again.status_code == 409
    assert server.execution(execution_id)["output"] == shown["output"]


def test_a_resume_url_resumes_once_and_asks_early_callers_to_retry(server, peer):
    peer.behave["/slow-ask"] = lambda count, req: (200, {"ok": True}, 1.5)  # still running while it is called
    server.import_flow({"name": "race", "nodes": [
        hook("race"),
        {"id": "ask", "type": "http_request", "params": {
            "method": "POST", "url": peer.url + "/slow-ask", "body": {"resume_url": "{{ execution.resume_url }}"}}},
        {"id": "decision", "type": "wait", "params": {"resume": "webhook"}},
    ], "edges": chain(hook("race"), {"id": "ask"}, {"id": "decision"})})
    execution_id = start(server, "race", {})
    poll(lambda: peer.counts["/slow-ask"] == 1, what="the request for approval")
    resume_url = json.loads(peer.of("/slow-ask")[0]["body"])["resume_url"]
    early = httpx.post(resume_url, json={"by": "eager"})
    assert early.status_code == 409 and early.headers["retry-after"] == "1" and "try again" in early.json()["error"]

    wait_status(server, execution_id, "waiting")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda who: httpx.post(resume_url, json={"by": who}), ["a", "b", "c", "d"]))
    assert sorted(r.status_code for r in answers) == [202, 409, 409, 409]
    winner = next(r for r in answers if r.status_code == 202).request.content
    shown = finished(server, execution_id)
    assert step(shown, "decision")[-1]["items"] == [json.loads(winner)]


# -- retries -------------------------------------------------------------------------------------------------


def test_retry_with_a_long_backoff_parks_and_resumes(server, peer):
    peer.behave["/flaky"] = lambda count, req: (503, {"error": "busy"}, 0) if count <= 2 else (200, {"ok": count}, 0)
    server.import_flow({"name": "retrying", "nodes": [
        hook("retrying"),
        {"id": "call", "type": "http_request", "params": {"url": peer.url + "/flaky"},
         "retry": {"max_attempts": 4, "backoff_s": 2.4, "max_backoff_s": 2.4}},
    ], "edges": [{"from": "hook", "to": "call"}]})
    execution_id = start(server, "retrying")
    poll(lambda: peer.counts["/flaky"] >= 1, what="the first attempt")
    wait_status(server, execution_id, "waiting")  # back-off of at least 1.2 s > inline max of 1 s
    shown = finished(server, execution_id)
    assert shown["status"] == "succeeded"
    assert peer.counts["/flaky"] == 3
    calls = peer.of("/flaky")
    for before, after in zip(calls, calls[1:]):
        assert after["at"] - before["at"] >= 1.2  # equal jitter: at least half of backoff_s
    keys = [c["headers"]["Idempotency-Key"] for c in calls]
    assert keys == [f"{execution_id}:call:{n}" for n in (1, 2, 3)]
    attempts = [(s["attempt"], s["status"]) for s in step(shown, "call")]
    assert attempts == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert "503" in step(shown, "call")[0]["error"]
    assert shown["output"][0]["body"] == {"ok": 3}


# -- error flows and sub-flows ----------------------------------------------------------------------------


def test_error_flow_runs_with_the_failed_execution(server, peer):
    server.import_flow({"name": "on failure", "nodes": [
        {"id": "failed", "type": "error_trigger"},
        {"id": "alert", "type": "http_request",
         "params": {"method": "POST", "url": peer.url + "/alert", "body": "{{ json.execution }}"}},
    ], "edges": [{"from": "failed", "to": "alert"}]})
    server.import_flow({"name": "fragile", "settings": {"error_flow": "on failure"}, "nodes": [
        hook("fragile"),
        {"id": "check", "type": "stop_and_error", "params": {"message": "order {{ json.order }} is invalid"}},
    ], "edges": [{"from": "hook", "to": "check"}]})
    execution_id = start(server, "fragile", {"order": 13})
    failed = finished(server, execution_id)
    assert failed["status"] == "failed"
    assert failed["error"] == {"node": "check", "message": "order 13 is invalid"}

    poll(lambda: peer.counts["/alert"] == 1, what="the error flow's alert")
    alert = json.loads(peer.of("/alert")[0]["body"])
    assert alert["id"] == execution_id
    assert alert["flow"] == "fragile"
    assert alert["error"] == {"node": "check", "message": "order 13 is invalid"}

    handlers = server.executions("--flow", "on failure")
    assert len(handlers) == 1
    handler = finished(server, handlers[0]["id"])
    assert handler["status"] == "succeeded"
    assert handler["trigger"] == "error"
    assert handler["parent_id"] == execution_id
    assert handler["input"][0]["execution"]["error"]["message"] == "order 13 is invalid"

    # a synchronous webhook fails in the web process: its error flow still runs, in the worker
    server.import_flow({"name": "fragile sync", "settings": {"error_flow": "on failure"}, "nodes": [
        hook("fragile-sync", respond="when_done"),
        {"id": "check", "type": "stop_and_error", "params": {"message": "refused"}},
    ], "edges": [{"from": "hook", "to": "check"}]})
    r = httpx.post(server.url + "/hooks/default/fragile-sync", json={}, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"] == "refused"
    poll(lambda: peer.counts["/alert"] == 2, what="the error flow's second alert")
    alert = json.loads(peer.of("/alert")[1]["body"])
    assert (alert["id"], alert["flow"], alert["error"]) == (
        r.headers["x-flowfuse-execution"], "fragile sync", {"node": "check", "message": "refused"})


def test_error_flow_is_not_started_when_the_execution_succeeds(server, peer):
    server.import_flow({"name": "on failure 2", "nodes": [
        {"id": "failed", "type": "error_trigger"},
        {"id": "alert", "type": "http_request", "params": {"url": peer.url + "/alert2"}},
    ], "edges": [{"from": "failed", "to": "alert"}]})
    server.import_flow({"name": "sturdy", "settings": {"error_flow": "on failure 2"}, "nodes": [
        hook("sturdy"), {"id": "ok", "type": "noop"},
    ], "edges": [{"from": "hook", "to": "ok"}]})
    assert finished(server, start(server, "sturdy"))["status"] == "succeeded"
    assert server.executions("--flow", "on failure 2") == []
    assert peer.counts["/alert2"] == 0


def test_subflow_output_is_used_by_the_caller_and_the_child_is_recorded(server, peer):
    server.import_flow({"name": "price", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "lookup", "type": "http_request", "params": {"url": peer.url + "/price/{{ json.sku }}"}},
        {"id": "calc", "type": "set", "params": {
            "fields": {"sku": "{{ nodes['start'].json.sku }}", "total": "{{ json.body.count * 10 }}"},
            "keep_others": False}},
    ], "edges": [{"from": "start", "to": "lookup"}, {"from": "lookup", "to": "calc"}]}, activate=False)
    server.import_flow({"name": "checkout", "nodes": [
        hook("checkout", respond="when_done"),
        {"id": "price", "type": "execute_flow", "params": {"flow": "price", "input": {"sku": "{{ json.sku }}"}}},
        {"id": "reply", "type": "set", "params": {"fields": {"message": "{{ json.sku }} costs {{ json.total }}"}}},
    ], "edges": [{"from": "hook", "to": "price"}, {"from": "price", "to": "reply"}]})
    r = httpx.post(server.url + "/hooks/default/checkout", json={"sku": "A1"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"sku": "A1", "total": 10, "message": "A1 costs 10"}
    parent_id = r.headers["x-flowfuse-execution"]

    children = server.executions("--flow", "price")
    assert len(children) == 1
    child = server.execution(children[0]["id"])
    assert child["status"] == "succeeded"
    assert child["trigger"] == "subflow"
    assert child["parent_id"] == parent_id
    assert child["input"] == [{"sku": "A1"}]
    assert child["output"] == [{"sku": "A1", "total": 10}]
    assert [s["node"] for s in server.execution(parent_id)["steps"]] == ["hook", "price", "reply"]


def test_subflow_called_from_a_queued_execution(server, peer):
    server.import_flow({"name": "enrich", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "tag", "type": "set", "params": {"fields": {"enriched": True}}},
    ], "edges": [{"from": "start", "to": "tag"}]}, activate=False)
    server.import_flow({"name": "pipeline", "nodes": [
        hook("pipeline"),
        {"id": "call", "type": "execute_flow", "params": {"flow": "enrich"}},
        {"id": "send", "type": "http_request",
         "params": {"method": "POST", "url": peer.url + "/enriched", "body": "{{ json }}"}},
    ], "edges": chain(hook("pipeline"), {"id": "call"}, {"id": "send"})})
    execution_id = start(server, "pipeline", {"id": 5})
    assert finished(server, execution_id)["status"] == "succeeded"
    assert json.loads(peer.of("/enriched")[0]["body"]) == {"id": 5, "enriched": True}
    children = server.executions("--flow", "enrich")
    assert [(c["parent_id"], c["status"]) for c in children] == [(execution_id, "succeeded")]


def test_failing_subflow_fails_the_caller_with_its_message(server):
    server.import_flow({"name": "strict", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "boom", "type": "stop_and_error", "params": {"message": "no stock"}},
    ], "edges": [{"from": "start", "to": "boom"}]}, activate=False)
    server.import_flow({"name": "caller", "nodes": [
        hook("caller"), {"id": "call", "type": "execute_flow", "params": {"flow": "strict"}},
    ], "edges": [{"from": "hook", "to": "call"}]})
    shown = finished(server, start(server, "caller"))
    assert shown["status"] == "failed"
    assert shown["error"]["node"] == "call"
    assert "no stock" in shown["error"]["message"]
    child = server.executions("--flow", "strict")
    assert [(c["status"], c["parent_id"]) for c in child] == [("failed", shown["id"])]


# -- cancellation ----------------------------------------------------------------------------------------------


def test_cancel_a_waiting_execution(server, peer):
    server.import_flow({"name": "parked", "nodes": [
        hook("parked"),
        {"id": "pause", "type": "wait", "params": {"seconds": 8}},  # long enough for a slow CLI to cancel it first
        {"id": "ping", "type": "http_request", "params": {"url": peer.url + "/never"}},
    ], "edges": chain(hook("parked"), {"id": "pause"}, {"id": "ping"})})
    posted = time.monotonic()
    execution_id = start(server, "parked")
    wait_status(server, execution_id, "waiting")
    result = server.cli("executions", "cancel", execution_id)
    assert result.returncode == 0, result.stderr
    assert "was waiting" in result.stdout
    shown = server.execution(execution_id)
    assert shown["status"] == "cancelled"
    time.sleep(max(0.0, posted + 9 - time.monotonic()))  # past the wait's end: its resume must not revive it
    assert server.execution(execution_id)["status"] == "cancelled"
    assert peer.counts["/never"] == 0

    again = server.cli("executions", "cancel", execution_id)
    assert again.returncode == 1
    assert "already cancelled" in again.stderr


def test_cancel_a_running_execution(server, peer):
    peer.behave["/slow"] = lambda count, req: (200, {"done": True}, 10)
    server.import_flow({"name": "long call", "nodes": [
        hook("long-call"),
        {"id": "slow", "type": "http_request", "params": {"url": peer.url + "/slow"}},
        {"id": "next", "type": "http_request", "params": {"url": peer.url + "/next"}},
    ], "edges": chain(hook("long-call"), {"id": "slow"}, {"id": "next"})})
    execution_id = start(server, "long-call")
    poll(lambda: peer.counts["/slow"] == 1, what="the slow request")
    assert status(server.data_dir, execution_id) == "running"
    result = server.cli("executions", "cancel", execution_id)
    assert result.returncode == 0, result.stderr
    assert "was running" in result.stdout
    shown = finished(server, execution_id, timeout=15)
    assert shown["status"] == "cancelled"
    assert shown["finished_at"] < peer.of("/slow")[0]["at"] + 10  # it did not wait for the slow answer
    assert shown["error"]["message"] == "cancelled"
    assert peer.counts["/next"] == 0
    assert [s["node"] for s in shown["steps"]] == ["hook"]


def test_async_webhooks_are_queued_durably_while_no_worker_runs(tmp_path, peer):
    """`flowfuse web` alone answers 202 and records the executions; a worker started later drains them."""
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    port = free_port()
    web = Server(data, port)
    worker = Server(data, port, env={"FLOWFUSE_SERVER_PORT": str(port)})
    try:
        web.start("web")
        web.import_flow({"name": "backlog", "nodes": [
            hook("backlog"),
            {"id": "send", "type": "http_request",
             "params": {"method": "POST", "url": peer.url + "/backlog", "body": "{{ json }}"}},
        ], "edges": [{"from": "hook", "to": "send"}]})
        ids = [start(web, "backlog", {"n": n}) for n in range(20)]
        time.sleep(1)
        assert [status(web.data_dir, i) for i in ids] == ["queued"] * 20
        assert peer.counts["/backlog"] == 0

        worker.start("worker")
        poll(lambda: all(status(web.data_dir, i) == "succeeded" for i in ids), 30, "the backlog drained")
        # each ran once, although the worker queues every 'queued' execution again when it starts
        assert sorted(json.loads(r["body"])["n"] for r in peer.of("/backlog")) == list(range(20))
        assert {e["status"] for e in web.executions("--flow", "backlog")} == {"succeeded"}
    finally:
        worker.stop()
        web.stop()


def test_cancel_a_sync_webhook_execution_running_in_the_web_process(server, peer):
    peer.behave["/slow-sync"] = lambda count, req: (200, {"done": True}, 20)  # far longer than a slow CLI takes
    server.import_flow({"name": "long sync call", "nodes": [
        hook("long-sync-call", respond="when_done"),
        {"id": "slow", "type": "http_request", "params": {"url": peer.url + "/slow-sync"}},
        {"id": "next", "type": "http_request", "params": {"url": peer.url + "/next-sync"}},
    ], "edges": chain(hook("long-sync-call"), {"id": "slow"}, {"id": "next"})})
    answers: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answers.append(
        httpx.post(server.url + "/hooks/default/long-sync-call", json={}, timeout=30)), daemon=True)
    caller.start()
    poll(lambda: peer.counts["/slow-sync"] == 1, what="the slow request")
    listed = server.executions("--flow", "long sync call")
    assert [e["status"] for e in listed] == ["running"]
    result = server.cli("executions", "cancel", listed[0]["id"])
    assert result.returncode == 0, result.stderr
    assert "was running" in result.stdout
    shown = finished(server, listed[0]["id"], timeout=15)
    assert shown["status"] == "cancelled"
    assert shown["finished_at"] < peer.of("/slow-sync")[0]["at"] + 20  # it did not wait for the slow answer
    caller.join(timeout=30)
    assert answers[0].status_code == 409
    assert answers[0].json() == {"execution_id": listed[0]["id"], "status": "cancelled"}
    assert peer.counts["/next-sync"] == 0


def test_duplicate_queue_messages_run_an_execution_once(settings, peer):
    """Messages for one execution can arrive more than once (start-up and orphan recovery queue again
    what may still be queued); the claim makes the second a no-op, even while the first is claiming."""
    runtime = Runtime(settings, role="worker")
    try:
        flow = runtime.catalog.save_flow(runtime.tenant_id(None), {"name": "once", "nodes": [
            {"id": "start", "type": "manual"},
            {"id": "call", "type": "http_request", "params": {"url": peer.url + "/once"}},
        ], "edges": [{"from": "start", "to": "call"}]}, activate=True)
        ids = [runtime.queue_execution(flow, "manual", [{"n": n}]).id for n in range(30)]

        async def deliver(execution_id: str, delay: float):
            await asyncio.sleep(delay)
            return await runtime.run_execution(execution_id)

        async def main():
            runtime.use_loop(asyncio.get_running_loop())
            # a dozen copies of each message, half a millisecond apart: some land while the first claims
            return await asyncio.gather(*[deliver(i, k * 0.0005) for i in ids for k in range(12)])

        outcomes = asyncio.run(main())
    finally:
        runtime.close()
    assert sum(o is not None for o in outcomes) == 30
    assert {o.status for o in outcomes if o is not None} == {"succeeded"}
    assert peer.counts["/once"] == 30
    assert len({r["headers"]["Idempotency-Key"] for r in peer.of("/once")}) == 30
