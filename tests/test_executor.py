"""The durable executor: retries and back-off, time-outs, on_error, cancellation, replay, parking.

Flows run on the real Executor against real HTTP (`peer`), with the engine's MemoryStore or the
real SQLite-backed Runtime. Timing is only ever checked from below (at least this long apart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from appliance.runtime import Runtime
from connectors import default_registry
from engine import (
    CANCELLED, FAILED, SUCCEEDED, WAITING, ExecutionRef, Executor, Limits, MemoryStore, Run, backoff_delay,
    compile_flow,
)

REGISTRY = default_registry()


def flow_of(*nodes: dict, settings: dict | None = None, links: list[tuple] | None = None) -> dict:
    """A manual trigger, then `nodes` in a chain (or the given links)."""
    ids = ["start", *(n["id"] for n in nodes)]
    pairs = links if links is not None else list(zip(ids, ids[1:]))
    doc = {"name": "exec", "nodes": [{"id": "start", "type": "manual"}, *nodes],
           "edges": [{"from": p[0], "to": p[-1], **({"output": p[1]} if len(p) == 3 else {})} for p in pairs]}
    if settings:
        doc["settings"] = settings
    return doc


def http(node_id: str, url: str, **extra) -> dict:
    return {"id": node_id, "type": "http_request", "params": {"url": url}, **extra}


def new_run(doc: dict, items: list[dict] | None = None, execution_id: str = "exec-1", **kw) -> Run:
    return Run(ExecutionRef(execution_id, "tenant"), compile_flow(doc, REGISTRY), items if items is not None else [{}],
               time.time(), **kw)


def execute(doc_or_run, items=None, *, store: MemoryStore | None = None, limits: Limits | None = None):
    """Run to the end (or until parked) on a MemoryStore; returns (outcome, store)."""
    store = store if store is not None else MemoryStore()
    run = doc_or_run if isinstance(doc_or_run, Run) else new_run(doc_or_run, items)
    outcome = asyncio.run(Executor(store, None, limits or Limits()).run(run))
    return outcome, store


def attempts(store: MemoryStore, node: str, execution_id: str = "exec-1") -> list[tuple[int, str]]:
    return [(s.attempt, s.status) for s in store.steps[execution_id] if s.node == node]


def fail_first(n: int, status: int = 500):
    return lambda count, record: ((status, {"fail": count}, 0) if count <= n else (200, {"ok": count}, 0))


@pytest.fixture
def runtime(settings):
    rt = Runtime(settings)
    yield rt
    rt.close()


# -- backoff_delay ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base, cap, attempt, ceiling", [
    (1.0, 300.0, 1, 1.0), (1.0, 300.0, 2, 2.0), (1.0, 300.0, 4, 8.0), (2.0, 300.0, 3, 8.0),
    (1.0, 5.0, 4, 5.0), (10.0, 3.0, 1, 3.0), (1.0, 300.0, 30, 300.0),
])
def test_backoff_delay_is_between_half_the_ceiling_and_the_ceiling(base, cap, attempt, ceiling):
    delays = [backoff_delay(base, cap, attempt) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > 0  # jittered, so that retries of many runs spread out


def test_backoff_delay_never_exceeds_the_cap_at_any_attempt():
    for attempt in range(1, 80):
        assert backoff_delay(0.5, 30.0, attempt) <= 30.0


def test_backoff_delay_of_zero_base_is_zero():
    assert backoff_delay(0.0, 300.0, 5) == 0.0


# -- retries -------------------------------------------------------------------------------------------------------


def test_retry_until_success_records_each_failed_attempt_then_the_success(peer, runtime):
    peer.behave["/flaky"] = fail_first(2)
    doc = flow_of(http("req", peer.url + "/flaky", retry={"max_attempts": 3, "backoff_s": 0.02}))
    row = runtime.catalog.save_flow(runtime.tenant_id("default"), doc)
    execution_id, outcome = asyncio.run(runtime.run_inline(row, "manual", [{}]))
    assert outcome.status == SUCCEEDED
    assert peer.counts["/flaky"] == 3
    steps = [s for s in runtime.runs.show(execution_id)["steps"] if s["node"] == "req"]
    assert [(s["attempt"], s["status"]) for s in steps] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert all("answered HTTP 500" in s["error"] for s in steps[:2])
    assert "error" not in steps[2]
    assert steps[2]["items"][0]["body"] == {"ok": 3}
    assert [r["headers"]["Idempotency-Key"] for r in peer.of("/flaky")] == [
        f"{execution_id}:req:1", f"{execution_id}:req:2", f"{execution_id}:req:3"]


def test_consecutive_attempts_are_at_least_the_minimum_back_off_apart(peer):
    peer.behave["/flaky"] = fail_first(3)
    base = 0.1
    outcome, store = execute(flow_of(http("req", peer.url + "/flaky", retry={"max_attempts": 4, "backoff_s": base})))
    assert outcome.status == SUCCEEDED
    times = [r["at"] for r in peer.of("/flaky")]
    assert len(times) == 4
    for attempt, (earlier, later) in enumerate(zip(times, times[1:]), start=1):
        ceiling = base * 2 ** (attempt - 1)
        assert later - earlier >= ceiling / 2, f"attempt {attempt + 1} came too soon"
    assert attempts(store, "req") == [(1, FAILED), (2, FAILED), (3, FAILED), (4, SUCCEEDED)]


def test_the_back_off_cap_holds_in_a_real_run(peer):
    """base 100 s would park the run (over inline_wait_max_s); the 0.2 s cap keeps the retry inline."""
    peer.behave["/flaky"] = fail_first(2)
    doc = flow_of(http("req", peer.url + "/flaky",
                       retry={"max_attempts": 3, "backoff_s": 100, "max_backoff_s": 0.2}))
    outcome, _ = execute(doc, limits=Limits(inline_wait_max_s=1.0))
    assert outcome.status == SUCCEEDED
    times = [r["at"] for r in peer.of("/flaky")]
    assert all(later - earlier >= 0.1 for earlier, later in zip(times, times[1:]))


def test_after_max_attempts_the_execution_fails_naming_the_node(peer):
    peer.behave["/down"] = lambda count, record: (503, {"down": True}, 0)
    doc = flow_of(http("req", peer.url + "/down", retry={"max_attempts": 2, "backoff_s": 0}), {"id": "after", "type": "noop"})
    outcome, store = execute(doc)
    assert outcome.status == FAILED
    assert outcome.error["node"] == "req"
    assert "answered HTTP 503" in outcome.error["message"]
    assert peer.counts["/down"] == 2
    assert attempts(store, "req") == [(1, FAILED), (2, FAILED)]
    assert attempts(store, "after") == []
    assert store.finished["exec-1"].status == FAILED
    assert store.finished["exec-1"].error == outcome.error


def test_without_retry_a_node_runs_once(peer):
    peer.behave["/down"] = lambda count, record: (500, {}, 0)
    outcome, store = execute(flow_of(http("req", peer.url + "/down")))
    assert outcome.status == FAILED
    assert peer.counts["/down"] == 1
    assert attempts(store, "req") == [(1, FAILED)]


# -- on_error ------------------------------------------------------------------------------------------------------


def test_on_error_continue_passes_the_items_on_and_records_the_error(peer):
    peer.behave["/down"] = lambda count, record: (500, {}, 0)
    doc = flow_of(http("req", peer.url + "/down", on_error="continue"),
                  {"id": "after", "type": "set", "params": {"fields": {"after": True}}})
    outcome, store = execute(doc, [{"n": 1}, {"n": 2}])
    assert outcome.status == SUCCEEDED
    assert outcome.output == [{"n": 1, "after": True}, {"n": 2, "after": True}]
    [req] = [s for s in store.steps["exec-1"] if s.node == "req"]
    assert req.status == SUCCEEDED
    assert "answered HTTP 500" in req.error


def test_on_error_output_routes_items_to_the_error_output(peer):
    peer.behave["/down"] = lambda count, record: (502, {}, 0)
    doc = flow_of(http("req", peer.url + "/down", on_error="output"),
                  {"id": "ok", "type": "noop"},
                  {"id": "handle", "type": "set", "params": {"fields": {"handled": "{{ json.error.node }}"}}},
                  links=[("start", "req"), ("req", "ok"), ("req", "error", "handle")])
    outcome, store = execute(doc, [{"n": 1}])
    assert outcome.status == SUCCEEDED
    [item] = outcome.output
    assert item["n"] == 1 and item["handled"] == "req"
    assert item["error"]["node"] == "req"
    assert "answered HTTP 502" in item["error"]["message"]
    assert attempts(store, "ok") == []  # the main output got nothing


def test_on_error_output_retries_first(peer):
    peer.behave["/down"] = lambda count, record: (500, {}, 0)
    doc = flow_of(http("req", peer.url + "/down", on_error="output", retry={"max_attempts": 2, "backoff_s": 0}),
                  {"id": "handle", "type": "noop"}, links=[("start", "req"), ("req", "error", "handle")])
    outcome, store = execute(doc)
    assert outcome.status == SUCCEEDED
    assert peer.counts["/down"] == 2
    assert attempts(store, "req") == [(1, FAILED), (2, SUCCEEDED)]
    assert attempts(store, "handle") == [(1, SUCCEEDED)]


# -- time-outs -----------------------------------------------------------------------------------------------------


def test_node_timeout_fails_the_node_with_a_message(peer):
    peer.behave["/slow"] = lambda count, record: (200, {}, 2.0)
    outcome, store = execute(flow_of(http("req", peer.url + "/slow", timeout_s=0.3)))
    assert outcome.status == FAILED
    assert outcome.error == {"node": "req", "message": "timed out after 0.3 s"}
    [step] = [s for s in store.steps["exec-1"] if s.node == "req"]
    assert step.status == FAILED and step.error == "timed out after 0.3 s"
    assert step.ended_at - step.started_at >= 0.29  # (timer resolution)


def test_node_timeout_is_retried_like_any_failure(peer):
    # the second answer is immediate; the time-out is generous so that a loaded machine still makes it
    peer.behave["/slow"] = lambda count, record: (200, {"count": count}, 5.0 if count == 1 else 0)
    outcome, store = execute(flow_of(http("req", peer.url + "/slow", timeout_s=1.5,
                                          retry={"max_attempts": 2, "backoff_s": 0})))
    assert outcome.status == SUCCEEDED
    assert outcome.output[0]["body"] == {"count": 2}
    assert attempts(store, "req") == [(1, FAILED), (2, SUCCEEDED)]


def test_execution_timeout_stops_a_running_node_without_retries(peer):
    peer.behave["/slow"] = lambda count, record: (200, {}, 5.0)
    doc = flow_of(http("req", peer.url + "/slow", retry={"max_attempts": 3, "backoff_s": 0}),
                  settings={"timeout_s": 0.8})
    outcome, _ = execute(doc)
    assert outcome.status == FAILED
    assert outcome.error == {"node": "req", "message": "the execution timed out after 0.8 s"}
    assert peer.counts["/slow"] == 1


def test_execution_timeout_stops_before_the_next_node(peer):
    doc = flow_of({"id": "pause", "type": "wait", "params": {"seconds": 0.5}}, http("req", peer.url + "/x"),
                  settings={"timeout_s": 0.3})
    outcome, _ = execute(doc)
    assert outcome.status == FAILED
    assert outcome.error == {"node": "req", "message": "the execution timed out after 0.3 s"}
    assert peer.counts["/x"] == 0


# -- cancellation --------------------------------------------------------------------------------------------------


def test_cancelling_a_run_ends_it_cancelled():
    doc = flow_of({"id": "pause", "type": "wait", "params": {"seconds": 30}}, {"id": "after", "type": "noop"})
    store = MemoryStore()
    run = new_run(doc)

    async def scenario():
        task = asyncio.create_task(Executor(store, None, Limits(inline_wait_max_s=60)).run(run))
        while not store.steps.get("exec-1"):  # the trigger's step is committed before the wait starts
            await asyncio.sleep(0.01)
        run.cancel_requested = True
        task.cancel()
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.status == CANCELLED
    assert outcome.error == {"node": None, "message": "cancelled"}
    assert store.finished["exec-1"].status == CANCELLED
    assert attempts(store, "after") == []


def test_cancelling_through_the_runtime_records_cancelled(runtime, peer):
    peer.behave["/slow"] = lambda count, record: (200, {}, 10.0)
    row = runtime.catalog.save_flow(runtime.tenant_id("default"), flow_of(http("req", peer.url + "/slow")))

    async def scenario():
        task = asyncio.create_task(runtime.run_inline(row, "manual", [{}]))
        while peer.counts["/slow"] == 0:
            await asyncio.sleep(0.01)
        [execution_id] = list(runtime.active)
        assert await asyncio.to_thread(runtime.cancel, execution_id) == "running"
        return await task

    execution_id, outcome = asyncio.run(scenario())
    assert outcome.status == CANCELLED
    shown = runtime.runs.show(execution_id)
    assert shown["status"] == "cancelled"
    assert shown["finished_at"] is not None


# -- resume and replay ---------------------------------------------------------------------------------------------


async def crash_while(peer, path: str, run: Run, store: MemoryStore, executor: Executor, requests: int = 1) -> None:
    """Run until `path` has received `requests` requests, then stop the task as a dying process would."""
    task = asyncio.create_task(executor.run(run))
    while peer.counts[path] < requests:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    task.cancel()  # cancel_requested stays False: this is the process going away, not a user's cancel
    with pytest.raises(asyncio.CancelledError):
        await task


def test_resume_replays_committed_steps_and_reruns_the_in_flight_node(peer):
    peer.behave["/b"] = lambda count, record: (200, {"b": count}, 5.0 if count == 1 else 0)
    doc = flow_of(http("a", peer.url + "/a"), http("b", peer.url + "/b"), http("c", peer.url + "/c"))
    store = MemoryStore()
    first = new_run(doc, [{"order": 1}])
    asyncio.run(crash_while(peer, "/b", first, store, Executor(store)))

    committed = list(store.steps["exec-1"])
    assert [s.node for s in committed] == ["start", "a"]  # b was in flight: nothing committed for it
    assert "exec-1" not in store.finished

    resumed = Run(first.ref, first.flow, first.trigger_items, first.started_at, steps=committed)
    outcome = asyncio.run(Executor(store).run(resumed))
    assert outcome.status == SUCCEEDED
    assert (peer.counts["/a"], peer.counts["/b"], peer.counts["/c"]) == (1, 2, 1)
    assert outcome.output[0]["body"] == {"path": "/c", "count": 1}
    assert [s.key for s in outcome.steps] == ["start", "a", "b", "c"]
    # the replayed request carries the key of the one that was in flight
    assert [r["headers"]["Idempotency-Key"] for r in peer.of("/b")] == ["exec-1:b:1", "exec-1:b:1"]
    assert [s.node for s in store.steps["exec-1"]] == ["start", "a", "b", "c"]


def test_resume_reruns_an_in_flight_retry_with_the_same_attempt_number(peer):
    # attempt 1 fails; attempt 2 is in flight when the process dies; the resumed run sends attempt 2 again
    peer.behave["/b"] = lambda count, record: ((500, {}, 0) if count == 1 else (200, {"b": count}, 5.0 if count == 2 else 0))
    doc = flow_of(http("b", peer.url + "/b", retry={"max_attempts": 3, "backoff_s": 0.01}))
    store = MemoryStore()
    first = new_run(doc)
    asyncio.run(crash_while(peer, "/b", first, store, Executor(store), requests=2))
    assert attempts(store, "b") == [(1, FAILED)]

    resumed = Run(first.ref, first.flow, first.trigger_items, first.started_at, steps=list(store.steps["exec-1"]))
    outcome = asyncio.run(Executor(store).run(resumed))
    assert outcome.status == SUCCEEDED
    assert [r["headers"]["Idempotency-Key"] for r in peer.of("/b")] == ["exec-1:b:1", "exec-1:b:2", "exec-1:b:2"]
    assert attempts(store, "b") == [(1, FAILED), (2, SUCCEEDED)]


def test_a_finished_execution_replays_without_calling_anything(peer):
    doc = flow_of(http("a", peer.url + "/a"), {"id": "s", "type": "set", "params": {"fields": {"x": 1}}})
    outcome, store = execute(doc)
    assert outcome.status == SUCCEEDED
    run = new_run(doc)
    again = asyncio.run(Executor(MemoryStore()).run(dataclasses.replace(run, steps=list(store.steps["exec-1"]))))
    assert again.status == SUCCEEDED
    assert again.output == outcome.output
    assert peer.counts["/a"] == 1


def test_resume_inside_a_loop_skips_finished_batches(peer):
    peer.behave["/item"] = lambda count, record: (200, {"n": count}, 5.0 if count == 2 else 0)
    doc = flow_of({"id": "batches", "type": "split_in_batches", "params": {"size": 1}},
                  http("req", peer.url + "/item"), {"id": "after", "type": "noop"},
                  links=[("start", "batches"), ("batches", "loop", "req"), ("req", "batches"),
                         ("batches", "done", "after")])
    store = MemoryStore()
    first = new_run(doc, [{"i": 0}, {"i": 1}, {"i": 2}])
    asyncio.run(crash_while(peer, "/item", first, store, Executor(store), requests=2))
    assert [s.key for s in store.steps["exec-1"]] == ["start", "batches#0/req"]

    resumed = Run(first.ref, first.flow, first.trigger_items, first.started_at, steps=list(store.steps["exec-1"]))
    outcome = asyncio.run(Executor(store).run(resumed))
    assert outcome.status == SUCCEEDED
    assert peer.counts["/item"] == 4  # batch 0 once, batch 1 twice (in flight, then again), batch 2 once
    assert [r["headers"]["Idempotency-Key"] for r in peer.of("/item")] == [
        "exec-1:batches#0/req:1", "exec-1:batches#1/req:1", "exec-1:batches#1/req:1", "exec-1:batches#2/req:1"]
    assert len(outcome.output) == 3


# -- parking -------------------------------------------------------------------------------------------------------


def test_a_long_back_off_parks_the_run_instead_of_sleeping(peer):
    peer.behave["/flaky"] = fail_first(1)
    doc = flow_of(http("req", peer.url + "/flaky", retry={"max_attempts": 2, "backoff_s": 10}))
    store = MemoryStore()
    run = new_run(doc)
    limits = Limits(inline_wait_max_s=0.5)
    before = time.time()
    outcome, _ = execute(run, store=store, limits=limits)

    assert outcome.status == WAITING
    assert outcome.resume_at is not None and outcome.resume_at >= before + 5  # at least half the 10 s ceiling
    [step] = [s for s in store.steps["exec-1"] if s.node == "req"]
    assert (step.attempt, step.status) == (1, FAILED)
    assert step.resume_at == outcome.resume_at
    assert store.finished["exec-1"].status == WAITING
    assert store.finished["exec-1"].resume_at == outcome.resume_at
    assert peer.counts["/flaky"] == 1

    # woken too early (a duplicate queue message): it parks again, sending nothing
    early = Run(run.ref, run.flow, run.trigger_items, run.started_at, steps=list(store.steps["exec-1"]))
    again, _ = execute(early, store=MemoryStore(), limits=limits)
    assert again.status == WAITING and again.resume_at == outcome.resume_at
    assert peer.counts["/flaky"] == 1

    # once resume_at has passed, attempt 2 runs
    due = [dataclasses.replace(s, resume_at=time.time() - 1) if s.node == "req" else s for s in store.steps["exec-1"]]
    resumed = Run(run.ref, run.flow, run.trigger_items, run.started_at, steps=due)
    final, store2 = execute(resumed, limits=limits)
    assert final.status == SUCCEEDED
    assert peer.counts["/flaky"] == 2
    assert peer.of("/flaky")[1]["headers"]["Idempotency-Key"] == "exec-1:req:2"
    assert attempts(store2, "req") == [(2, SUCCEEDED)]


def test_a_parked_retry_is_recorded_as_waiting_in_the_runtime(peer, runtime):
    peer.behave["/down"] = lambda count, record: (500, {}, 0)
    doc = flow_of(http("req", peer.url + "/down", retry={"max_attempts": 2, "backoff_s": 60}))
    row = runtime.catalog.save_flow(runtime.tenant_id("default"), doc)
    execution_id, outcome = asyncio.run(runtime.run_inline(row, "manual", [{}]))
    assert outcome.status == WAITING
    shown = runtime.runs.show(execution_id)
    assert shown["status"] == "waiting"
    [step] = [s for s in shown["steps"] if s["node"] == "req"]
    assert step["status"] == "failed" and step["attempt"] == 1
    row_resume_at = runtime.runs_db.one("SELECT resume_at FROM executions WHERE id=?", (execution_id,))["resume_at"]
    assert row_resume_at == outcome.resume_at


def test_a_long_wait_parks_and_continues_once_due(peer):
    doc = flow_of({"id": "pause", "type": "wait", "params": {"seconds": 3600}}, http("req", peer.url + "/after"))
    store = MemoryStore()
    run = new_run(doc, [{"n": 1}])
    before = time.time()
    outcome, _ = execute(run, store=store, limits=Limits(inline_wait_max_s=1))
    assert outcome.status == WAITING
    assert outcome.resume_at >= before + 3600
    [step] = [s for s in store.steps["exec-1"] if s.node == "pause"]
    assert step.status == WAITING
    assert peer.counts["/after"] == 0

    due = [dataclasses.replace(s, resume_at=time.time() - 1) if s.node == "pause" else s for s in store.steps["exec-1"]]
    final, _ = execute(Run(run.ref, run.flow, run.trigger_items, run.started_at, steps=due))
    assert final.status == SUCCEEDED
    assert peer.counts["/after"] == 1


# -- what a node returns ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("returned, message", [
    ([{"a": 1}, 7], "produced an item that is not an object: '7'"),
    ({"main": {"a": 1}}, "returned dict; expected a list of items"),
    ("text", "returned str; expected a list of items"),
    ([{"when": object()}], "produced a value that is not JSON"),
])
def test_a_node_that_returns_something_other_than_items_fails_its_step_saying_what(returned, message):
    from engine import NodeType
    registry = default_registry()
    registry.add(NodeType("odd", lambda ctx, items: returned))
    run = Run(ExecutionRef("exec-1", "tenant"), compile_flow(flow_of({"id": "odd", "type": "odd"}), registry), [{}],
              time.time())
    outcome, store = execute(run)
    assert outcome.status == FAILED and outcome.error["node"] == "odd"
    assert message in outcome.error["message"], outcome.error
    assert attempts(store, "odd") == [(1, FAILED)]


def test_a_node_may_return_items_or_items_per_output_and_later_nodes_see_them_as_json():
    from engine import NodeType
    registry = default_registry()
    registry.add(NodeType("two", lambda ctx, items: {"main": [{"n": 1, "t": (1, 2)}], "other": []},
                          outputs=("main", "other")))
    doc = flow_of({"id": "two", "type": "two"}, {"id": "after", "type": "set",
                                                  "params": {"fields": {"k": "{{ json.t }}"}}})
    outcome, _ = execute(Run(ExecutionRef("exec-1", "tenant"), compile_flow(doc, registry), [{}], time.time()))
    assert outcome.status == SUCCEEDED
    assert outcome.output == [{"n": 1, "t": [1, 2], "k": [1, 2]}]  # the tuple became a JSON array, as on replay


def test_a_trigger_that_receives_no_items_is_recorded_and_the_branch_stops_after_it():
    doc = flow_of({"id": "tag", "type": "set", "params": {"fields": {"a": 1}}})
    outcome, store = execute(doc, items=[])
    assert outcome.status == SUCCEEDED
    assert [(s.node, s.input_count) for s in store.steps["exec-1"]] == [("start", 0)]
    assert outcome.output == []
