"""Durability: a process killed with SIGKILL in the middle of an execution loses nothing.

A flow of five HTTP calls runs against a counting peer; the third call is slow. While it is in
flight the process running the execution is killed with `kill -9`. Another process resumes the
execution from its last committed step: the calls that had completed are not sent again, the
call that was in flight is sent again with the same Idempotency-Key, and the rest run once.

The process killed is the worker under `flowfuse serve` (which starts a new one), a worker run
on its own (replaced by hand), the web process running a synchronous webhook (the worker takes
the execution over), and the worker inside a sub-flow; `flowfuse serve` stopped with SIGTERM and
started again resumes both a running and a parked execution.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from conftest import Server, flowfuse, free_port, poll, status

STEPS = ["s1", "s2", "s3", "s4", "s5"]
SLOW = "s3"


def five_calls(name: str, peer, respond: str = "immediately") -> dict:
    nodes = [{"id": "hook", "type": "webhook", "params": {"path": name, "respond": respond}}]
    nodes += [{"id": s, "type": "http_request", "params": {"url": f"{peer.url}/{name}/{s}"}} for s in STEPS]
    ids = [n["id"] for n in nodes]
    return {"name": name, "nodes": nodes, "edges": [{"from": a, "to": b} for a, b in zip(ids, ids[1:])]}


def slow_step(peer, name: str, delay: float = 1.5) -> None:
    peer.behave[f"/{name}/{SLOW}"] = lambda count, req: (200, {"step": SLOW, "count": count}, delay)






def wait_until_slow_step_in_flight(peer, name: str) -> None:
    """Return as soon as the peer has answered s1 and s2 and is holding the slow s3."""
    poll(lambda: peer.counts[f"/{name}/{SLOW}"] == 1, 30, "the slow step")
    assert peer.counts[f"/{name}/s1"] == 1
    assert peer.counts[f"/{name}/s2"] == 1
    assert peer.counts[f"/{name}/s4"] == 0


def assert_resumed_from_last_committed_step(peer, name: str, execution_id: str, killed_at: float, shown: dict):
    assert shown["status"] == "succeeded", shown
    counts = {s: peer.counts[f"/{name}/{s}"] for s in STEPS}
    assert counts == {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}
    first, second = peer.of(f"/{name}/{SLOW}")
    assert first["at"] < killed_at < second["at"]
    key = f"{execution_id}:{SLOW}:1"
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"] == key
    for s in ("s1", "s2", "s4", "s5"):
        assert peer.of(f"/{name}/{s}")[0]["headers"]["Idempotency-Key"] == f"{execution_id}:{s}:1"
    # each node has one committed step; the replayed ones were not recorded again
    assert [(s["node"], s["status"], s["attempt"]) for s in shown["steps"]] == \
        [("hook", "succeeded", 1)] + [(s, "succeeded", 1) for s in STEPS]
    assert shown["output"][0]["body"] == {"path": f"/{name}/s5", "count": 1}


def test_worker_killed_mid_execution_is_restarted_by_serve_and_resumes(server, peer):
    name = "crash-serve"
    slow_step(peer, name)
    server.import_flow(five_calls(name, peer))
    worker = server.children()["worker"]
    r = httpx.post(f"{server.url}/hooks/default/{name}", json={"order": 1}, timeout=10)
    assert r.status_code == 202
    execution_id = r.json()["execution_id"]

    wait_until_slow_step_in_flight(peer, name)
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    assert status(server.data_dir, execution_id) == "running"

    poll(lambda: server.children().get("worker") not in (None, worker), 30, "a new worker started by serve")
    poll(lambda: status(server.data_dir, execution_id) == "succeeded", 40, "the resumed execution's success")
    shown = server.execution(execution_id)
    assert_resumed_from_last_committed_step(peer, name, execution_id, killed_at, shown)
    # the server goes on taking work
    r = httpx.post(f"{server.url}/hooks/default/{name}", json={"order": 2}, timeout=10)
    assert r.status_code == 202
    assert server.wait_for(r.json()["execution_id"], timeout=30)["status"] == "succeeded"


def test_separate_worker_killed_and_replaced_resumes_without_the_supervisor(tmp_path, peer):
    name = "crash-apart"
    slow_step(peer, name)
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    port = free_port()
    env = {"FLOWFUSE_SERVER_PORT": str(port)}
    web = Server(data, port, env=env)
    first = Server(data, port, env=env)
    second = Server(data, free_port(), env=env)  # its own port only names its log file
    try:
        web.start("web")
        first.start("worker")
        web.import_flow(five_calls(name, peer))
        r = httpx.post(f"{web.url}/hooks/default/{name}", json={"order": 1}, timeout=10)
        assert r.status_code == 202
        execution_id = r.json()["execution_id"]

        wait_until_slow_step_in_flight(peer, name)
        os.kill(first.proc.pid, signal.SIGKILL)
        killed_at = time.time()
        first.proc.wait(timeout=10)
        assert first.proc.returncode == -signal.SIGKILL
        assert status(data, execution_id) == "running"  # until a worker runs again
        assert peer.counts[f"/{name}/{SLOW}"] == 1

        second.start("worker")
        poll(lambda: status(data, execution_id) == "succeeded", 40, "the resumed execution's success")
        shown = web.execution(execution_id)
        assert_resumed_from_last_committed_step(peer, name, execution_id, killed_at, shown)
    finally:
        for srv in (second, first, web):
            srv.stop()


def test_web_killed_during_a_sync_webhook_execution_is_resumed_by_the_worker(server, peer):
    name = "crash-sync"
    slow_step(peer, name)
    server.import_flow(five_calls(name, peer, respond="when_done"))
    web = server.children()["web"]
    answers: list = []

    def call() -> None:
        try:
            answers.append(httpx.post(f"{server.url}/hooks/default/{name}", json={"order": 1}, timeout=30))
        except httpx.HTTPError as exc:
            answers.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until_slow_step_in_flight(peer, name)
    os.kill(web, signal.SIGKILL)
    killed_at = time.time()
    caller.join(timeout=30)
    assert len(answers) == 1 and isinstance(answers[0], httpx.HTTPError)  # the caller lost its connection

    listed = poll(lambda: server.executions("--flow", name), 30, "the recorded execution")
    assert len(listed) == 1
    execution_id = listed[0]["id"]
    poll(lambda: status(server.data_dir, execution_id) == "succeeded", 40, "the resumed execution's success")
    shown = server.execution(execution_id)
    assert shown["trigger"] == "webhook"
    assert_resumed_from_last_committed_step(peer, name, execution_id, killed_at, shown)

    # serve started the web process again
    poll(lambda: server.children().get("web") not in (None, web), 30, "a new web process")
    server.wait_ready()
    r = httpx.post(f"{server.url}/hooks/default/{name}", json={"order": 2}, timeout=30)
    assert r.status_code == 200
    assert r.json()["body"] == {"path": f"/{name}/s5", "count": 2}


def test_serve_restart_resumes_running_and_parked_executions(server, peer):
    """`flowfuse serve` stopped (SIGTERM) and started again on the same data directory."""
    name = "restart"
    slow_step(peer, name)
    server.import_flow(five_calls(name, peer))
    server.import_flow({"name": "parked", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "parked", "respond": "immediately"}},
        {"id": "pause", "type": "wait", "params": {"seconds": 2}},
        {"id": "ping", "type": "http_request", "params": {"url": peer.url + "/parked/ping"}},
    ], "edges": [{"from": "hook", "to": "pause"}, {"from": "pause", "to": "ping"}]})
    parked_at = time.time()
    parked = httpx.post(f"{server.url}/hooks/default/parked", json={}, timeout=10).json()["execution_id"]
    running = httpx.post(f"{server.url}/hooks/default/{name}", json={}, timeout=10).json()["execution_id"]
    poll(lambda: status(server.data_dir, parked) == "waiting", 30, "the parked execution")
    wait_until_slow_step_in_flight(peer, name)
    server.stop()
    stopped_at = time.time()
    assert status(server.data_dir, running) == "running"
    assert status(server.data_dir, parked) == "waiting"
    assert peer.counts["/parked/ping"] == 0

    server.start("serve")
    poll(lambda: status(server.data_dir, running) == "succeeded", 40, "the interrupted execution's success")
    poll(lambda: status(server.data_dir, parked) == "succeeded", 40, "the parked execution's success")
    shown = server.execution(running)
    counts = {s: peer.counts[f"/{name}/{s}"] for s in STEPS}
    assert counts == {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}
    first, second = peer.of(f"/{name}/{SLOW}")
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"] == f"{running}:{SLOW}:1"
    assert second["at"] > stopped_at
    assert [s["node"] for s in shown["steps"]] == ["hook", *STEPS]
    assert peer.counts["/parked/ping"] == 1
    assert peer.of("/parked/ping")[0]["at"] >= parked_at + 2


def test_worker_killed_inside_a_subflow_resumes_parent_and_child(server, peer):
    name = "crash-child"
    slow_step(peer, name)
    child = five_calls(name, peer)
    child["nodes"][0] = {"id": "hook", "type": "manual"}
    server.import_flow(child, activate=False)
    server.import_flow({"name": "crash-parent", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "crash-parent", "respond": "immediately"}},
        {"id": "call", "type": "execute_flow", "params": {"flow": name}},
        {"id": "after", "type": "http_request", "params": {"url": peer.url + "/crash-parent/after"}},
    ], "edges": [{"from": "hook", "to": "call"}, {"from": "call", "to": "after"}]})
    worker = server.children()["worker"]
    r = httpx.post(f"{server.url}/hooks/default/crash-parent", json={"order": 1}, timeout=10)
    assert r.status_code == 202
    parent_id = r.json()["execution_id"]

    wait_until_slow_step_in_flight(peer, name)
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()

    poll(lambda: status(server.data_dir, parent_id) in ("succeeded", "failed"), 40, "the parent's end")
    parent = server.execution(parent_id)
    assert parent["status"] == "succeeded", parent["error"]
    children = server.executions("--flow", name)
    assert len(children) == 1
    shown = server.execution(children[0]["id"])
    assert shown["parent_id"] == parent_id
    assert_resumed_from_last_committed_step(peer, name, shown["id"], killed_at, shown)
    assert peer.counts["/crash-parent/after"] == 1
    assert parent["output"][0]["body"] == {"path": "/crash-parent/after", "count": 1}
