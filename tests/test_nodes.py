"""Each core node, run in a real flow: `run_flow` (what `flowfuse run` does) or the real Runtime
(SQLite data directory) for the nodes that need the server: respond_to_webhook, execute_flow.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.commands import run_flow
from appliance.runtime import Runtime

START = {"id": "start", "type": "manual"}


def edges(*pairs) -> list[dict]:
    """Edges from ("a", "b") or ("a", "output", "b")."""
    out = []
    for p in pairs:
        out.append({"from": p[0], "to": p[-1], **({"output": p[1]} if len(p) == 3 else {})})
    return out


def run(nodes: list[dict], links: list[tuple], items: list[dict], name: str = "f") -> dict:
    code, result = run_flow({"name": name, "nodes": [START, *nodes], "edges": edges(*links)}, items)
    assert code in (0, 1), result
    return result


def succeeded(nodes: list[dict], links: list[tuple], items: list[dict]) -> dict:
    result = run(nodes, links, items)
    assert result["status"] == "succeeded", result
    return result


def step(result: dict, key: str) -> dict:
    found = [s for s in result["steps"] if s["key"] == key]
    assert found, f"no step {key!r} in {[s['key'] for s in result['steps']]}"
    return found[-1]


def ran(result: dict) -> list[str]:
    return [s["key"] for s in result["steps"]]


@pytest.fixture
def runtime(settings):
    rt = Runtime(settings)
    yield rt
    rt.close()


def run_saved(runtime: Runtime, doc: dict, items: list[dict], trigger: str = "manual"):
    tid = runtime.tenant_id("default")
    row = runtime.catalog.save_flow(tid, doc)
    return asyncio.run(runtime.run_inline(row, trigger, items))


# -- triggers and simple nodes ------------------------------------------------------------------------------


def test_manual_trigger_passes_its_items_on():
    result = succeeded([{"id": "n", "type": "noop"}], [("start", "n")], [{"a": 1}, {"a": 2}])
    assert step(result, "start")["items"] == [{"a": 1}, {"a": 2}]
    assert result["output"] == [{"a": 1}, {"a": 2}]


def test_noop_passes_items_unchanged_and_records_the_input_count():
    result = succeeded([{"id": "n", "type": "noop"}], [("start", "n")], [{"x": [1, {"y": None}]}])
    assert step(result, "n")["items"] == [{"x": [1, {"y": None}]}]
    assert step(result, "n")["input_count"] == 1


def test_set_keeps_other_fields_by_default():
    result = succeeded([{"id": "s", "type": "set", "params": {"fields": {"total": "{{ json.n * 2 }}", "fixed": "x"}}}],
                       [("start", "s")], [{"n": 2, "keep": True}])
    assert result["output"] == [{"n": 2, "keep": True, "total": 4, "fixed": "x"}]


def test_set_overwrites_an_existing_field():
    result = succeeded([{"id": "s", "type": "set", "params": {"fields": {"n": "{{ json.n + 1 }}"}}}],
                       [("start", "s")], [{"n": 1}])
    assert result["output"] == [{"n": 2}]


def test_set_with_keep_others_false_outputs_only_the_fields():
    result = succeeded([{"id": "s", "type": "set",
                         "params": {"fields": {"total": "{{ json.n * 2 }}"}, "keep_others": False}}],
                       [("start", "s")], [{"n": 2, "drop": "me"}, {"n": 5}])
    assert result["output"] == [{"total": 4}, {"total": 10}]


def test_filter_keeps_matching_items():
    result = succeeded([{"id": "f", "type": "filter", "params": {"condition": "{{ json.n > 1 }}"}}],
                       [("start", "f")], [{"n": 1}, {"n": 2}, {"n": 3}])
    assert result["output"] == [{"n": 2}, {"n": 3}]


def test_if_sends_items_to_true_and_false():
    nodes = [{"id": "big", "type": "if", "params": {"condition": "{{ json.total > 100 }}"}},
             {"id": "yes", "type": "set", "params": {"fields": {"branch": "true"}}},
             {"id": "no", "type": "set", "params": {"fields": {"branch": "false"}}}]
    result = succeeded(nodes, [("start", "big"), ("big", "true", "yes"), ("big", "false", "no")],
                       [{"total": 150}, {"total": 50}, {"total": 101}])
    assert step(result, "big")["outputs"] == {"true": 2, "false": 1}
    assert step(result, "yes")["items"] == [{"total": 150, "branch": "true"}, {"total": 101, "branch": "true"}]
    assert step(result, "no")["items"] == [{"total": 50, "branch": "false"}]


def test_a_branch_that_receives_no_items_stops_there():
    nodes = [{"id": "big", "type": "if", "params": {"condition": "{{ json.total > 100 }}"}},
             {"id": "notify", "type": "set", "params": {"fields": {"sent": True}}},
             {"id": "after_notify", "type": "noop"},
             {"id": "other", "type": "noop"}]
    result = succeeded(nodes, [("start", "big"), ("big", "true", "notify"), ("notify", "after_notify"),
                               ("big", "false", "other")], [{"total": 5}])
    assert step(result, "big")["outputs"] == {"true": 0, "false": 1}
    assert "notify" not in ran(result) and "after_notify" not in ran(result)
    assert ran(result) == ["start", "big", "other"]
    assert result["output"] == [{"total": 5}]


def test_a_filter_that_drops_everything_stops_the_branch():
    nodes = [{"id": "f", "type": "filter", "params": {"condition": "{{ false }}"}},
             {"id": "after", "type": "set", "params": {"fields": {"x": 1}}}]
    result = succeeded(nodes, [("start", "f"), ("f", "after")], [{"n": 1}])
    assert ran(result) == ["start", "f"]
    assert result["output"] == []


# -- switch -------------------------------------------------------------------------------------------------

SWITCH = {"id": "route", "type": "switch", "params": {"rules": [
    {"condition": "{{ json.n >= 100 }}", "output": "huge"},
    {"condition": "{{ json.n >= 10 }}", "output": "big"},
    {"condition": "{{ json.n >= 0 }}", "output": "small"},
], "fallback": "negative"}}


def switch_flow(switch: dict) -> tuple[list[dict], list[tuple]]:
    outputs = [r["output"] for r in switch["params"]["rules"]]
    if switch["params"].get("fallback"):
        outputs.append(switch["params"]["fallback"])
    nodes = [switch, *({"id": f"to_{o}", "type": "noop"} for o in dict.fromkeys(outputs))]
    links = [("start", "route"), *((("route", o, f"to_{o}")) for o in dict.fromkeys(outputs))]
    return nodes, links


def test_switch_routes_each_item_to_the_first_matching_rule():
    nodes, links = switch_flow(SWITCH)
    result = succeeded(nodes, links, [{"n": 500}, {"n": 50}, {"n": 5}, {"n": -5}, {"n": 10}])
    # 500 matches all three rules, 50 two of them: the first match wins
    assert step(result, "to_huge")["items"] == [{"n": 500}]
    assert step(result, "to_big")["items"] == [{"n": 50}, {"n": 10}]
    assert step(result, "to_small")["items"] == [{"n": 5}]
    assert step(result, "to_negative")["items"] == [{"n": -5}]
    assert step(result, "route")["outputs"] == {"huge": 1, "big": 2, "small": 1, "negative": 1}


def test_switch_without_fallback_drops_unmatched_items():
    switch = {"id": "route", "type": "switch", "params": {"rules": [
        {"condition": "{{ json.kind == 'a' }}", "output": "a"}, {"condition": "{{ json.kind == 'b' }}", "output": "b"}]}}
    nodes, links = switch_flow(switch)
    result = succeeded(nodes, links, [{"kind": "a"}, {"kind": "c"}, {"kind": "b"}])
    assert step(result, "route")["outputs"] == {"a": 1, "b": 1}
    assert result["output"] == [{"kind": "a"}, {"kind": "b"}]


def test_switch_rules_sharing_an_output_merge_into_it():
    switch = {"id": "route", "type": "switch", "params": {"rules": [
        {"condition": "{{ json.n == 1 }}", "output": "odd"}, {"condition": "{{ json.n == 2 }}", "output": "even"},
        {"condition": "{{ json.n == 3 }}", "output": "odd"}]}}
    nodes, links = switch_flow(switch)
    result = succeeded(nodes, links, [{"n": 1}, {"n": 2}, {"n": 3}])
    assert step(result, "to_odd")["items"] == [{"n": 1}, {"n": 3}]
    assert step(result, "to_even")["items"] == [{"n": 2}]


# -- merge --------------------------------------------------------------------------------------------------


def test_merge_append_puts_the_inputs_one_after_the_other():
    nodes = [{"id": "left", "type": "set", "params": {"fields": {"side": "left"}}},
             {"id": "right", "type": "set", "params": {"fields": {"side": "right"}}},
             {"id": "both", "type": "merge", "params": {"mode": "append"}}]
    result = succeeded(nodes, [("start", "left"), ("start", "right"), ("left", "both"), ("right", "both")],
                       [{"n": 1}, {"n": 2}])
    assert result["output"] == [{"n": 1, "side": "left"}, {"n": 2, "side": "left"},
                                {"n": 1, "side": "right"}, {"n": 2, "side": "right"}]
    assert step(result, "both")["input_count"] == 4


def test_merge_waits_for_both_inputs():
    nodes = [{"id": "fast", "type": "set", "params": {"fields": {"side": "fast"}}},
             {"id": "slow", "type": "wait", "params": {"seconds": 0.2}},
             {"id": "both", "type": "merge"}]
    result = succeeded(nodes, [("start", "fast"), ("start", "slow"), ("fast", "both"), ("slow", "both")], [{"n": 1}])
    assert result["output"] == [{"n": 1, "side": "fast"}, {"n": 1}]
    assert step(result, "both")["started_at"] >= step(result, "slow")["ended_at"]
    assert ran(result).count("both") == 1


def test_merge_join_combines_items_with_the_same_key():
    nodes = [{"id": "orders", "type": "filter", "params": {"condition": "{{ json.kind == 'order' }}"}},
             {"id": "customers", "type": "filter", "params": {"condition": "{{ json.kind == 'customer' }}"}},
             {"id": "join", "type": "merge", "params": {"mode": "join", "key": "customer_id"}}]
    items = [{"kind": "order", "customer_id": 1, "total": 10}, {"kind": "order", "customer_id": 2, "total": 20},
             {"kind": "order", "customer_id": 9, "total": 90}, {"kind": "order", "total": 0},
             {"kind": "customer", "customer_id": 1, "name": "Ada"}, {"kind": "customer", "customer_id": 2, "name": "Bob"}]
    result = succeeded(nodes, [("start", "orders"), ("start", "customers"), ("orders", "join"), ("customers", "join")],
                       items)
    # the right input's fields win on a clash; orders without a matching customer (or without the key) drop out
    assert result["output"] == [{"kind": "customer", "customer_id": 1, "total": 10, "name": "Ada"},
                                {"kind": "customer", "customer_id": 2, "total": 20, "name": "Bob"}]


def test_merge_join_needs_two_inputs():
    nodes = [{"id": "join", "type": "merge", "params": {"mode": "join", "key": "id"}}]
    result = run(nodes, [("start", "join")], [{"id": 1}])
    assert result["status"] == "failed"
    assert result["error"] == {"node": "join", "message": "join needs exactly two inputs, got 1"}


# -- split_in_batches ---------------------------------------------------------------------------------------

LOOP_NODES = [
    {"id": "batches", "type": "split_in_batches", "params": {"size": 2}},
    {"id": "body", "type": "set", "params": {"fields": {
        "batch": "{{ items|map(attribute='n')|list }}", "doubled": "{{ json.n * 2 }}"}}},
    {"id": "after", "type": "noop"},
]
LOOP_LINKS = [("start", "batches"), ("batches", "loop", "body"), ("body", "batches"), ("batches", "done", "after")]


def test_split_in_batches_runs_the_body_once_per_batch_of_size():
    result = succeeded(LOOP_NODES, LOOP_LINKS, [{"n": i} for i in range(5)])
    body_steps = [s for s in result["steps"] if s["node"] == "body"]
    assert [s["key"] for s in body_steps] == ["batches#0/body", "batches#1/body", "batches#2/body"]
    assert [s["input_count"] for s in body_steps] == [2, 2, 1]
    assert [s["items"][0]["batch"] for s in body_steps] == [[0, 1], [2, 3], [4]]


def test_split_in_batches_done_gets_what_the_body_returned():
    result = succeeded(LOOP_NODES, LOOP_LINKS, [{"n": i} for i in range(5)])
    expected = [{"n": i, "batch": b, "doubled": i * 2} for i, b in
                [(0, [0, 1]), (1, [0, 1]), (2, [2, 3]), (3, [2, 3]), (4, [4])]]
    assert step(result, "batches")["outputs"] == {"done": 5}
    assert step(result, "after")["items"] == expected
    assert result["output"] == expected
    assert ran(result)[-2:] == ["batches", "after"]


def test_split_in_batches_body_of_several_nodes_with_a_filter():
    nodes = [{"id": "batches", "type": "split_in_batches", "params": {"size": 3}},
             {"id": "keep_even", "type": "filter", "params": {"condition": "{{ json.n % 2 == 0 }}"}},
             {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}},
             {"id": "after", "type": "noop"}]
    links = [("start", "batches"), ("batches", "loop", "keep_even"), ("keep_even", "mark"), ("mark", "batches"),
             ("batches", "done", "after")]
    result = succeeded(nodes, links, [{"n": i} for i in range(7)])
    assert result["output"] == [{"n": n, "seen": True} for n in (0, 2, 4, 6)]
    assert len([s for s in result["steps"] if s["node"] == "keep_even"]) == 3  # batches 0-2, 3-5, 6


def test_split_in_batches_without_a_return_passes_its_items_to_done():
    nodes = [{"id": "batches", "type": "split_in_batches", "params": {"size": 2}},
             {"id": "body", "type": "noop"},
             {"id": "after", "type": "set", "params": {"fields": {"after": True}}}]
    links = [("start", "batches"), ("batches", "loop", "body"), ("batches", "done", "after")]
    result = succeeded(nodes, links, [{"n": 1}, {"n": 2}, {"n": 3}])
    assert step(result, "after")["items"] == [{"n": 1, "after": True}, {"n": 2, "after": True},
                                              {"n": 3, "after": True}]
    assert len([s for s in result["steps"] if s["node"] == "body"]) == 2


# -- stop_and_error, wait -----------------------------------------------------------------------------------


def test_stop_and_error_fails_the_execution_with_its_message_and_is_not_retried():
    nodes = [{"id": "stop", "type": "stop_and_error", "params": {"message": "order {{ json.id }} is invalid"},
              "retry": {"max_attempts": 3, "backoff_s": 0}},
             {"id": "after", "type": "noop"}]
    result = run(nodes, [("start", "stop"), ("stop", "after")], [{"id": 7}])
    assert result["status"] == "failed"
    assert result["error"] == {"node": "stop", "message": "order 7 is invalid"}
    assert step(result, "stop")["status"] == "failed"
    assert step(result, "stop")["attempt"] == 1
    assert "after" not in ran(result)


def test_wait_seconds_sleeps_then_continues():
    nodes = [{"id": "pause", "type": "wait", "params": {"seconds": 0.3}}, {"id": "after", "type": "noop"}]
    started = time.monotonic()
    result = succeeded(nodes, [("start", "pause"), ("pause", "after")], [{"n": 1}])
    assert time.monotonic() - started >= 0.3
    assert step(result, "pause")["ended_at"] - step(result, "pause")["started_at"] >= 0.29
    assert result["output"] == [{"n": 1}]


def test_wait_seconds_from_an_expression():
    nodes = [{"id": "pause", "type": "wait", "params": {"seconds": "{{ json.delay }}"}}]
    started = time.monotonic()
    result = succeeded(nodes, [("start", "pause")], [{"delay": 0.2}])
    assert time.monotonic() - started >= 0.2
    assert result["output"] == [{"delay": 0.2}]


def test_wait_until_a_time_in_the_past_continues_at_once():
    nodes = [{"id": "pause", "type": "wait", "params": {"until": "2001-02-03T04:05:06Z"}},
             {"id": "after", "type": "set", "params": {"fields": {"went_on": True}}}]
    result = succeeded(nodes, [("start", "pause"), ("pause", "after")], [{"n": 1}])
    assert result["output"] == [{"n": 1, "went_on": True}]
    assert step(result, "pause")["status"] == "succeeded"


def test_wait_until_that_is_not_a_date_fails_with_an_example():
    nodes = [{"id": "pause", "type": "wait", "params": {"until": "next tuesday"}}]
    result = run(nodes, [("start", "pause")], [{}])
    assert result["status"] == "failed"
    assert result["error"]["node"] == "pause"
    assert "'until' must be an ISO date-time such as 2030-01-31T09:00:00Z, got 'next tuesday'" in \
        result["error"]["message"]


def test_wait_with_negative_seconds_fails():
    result = run([{"id": "pause", "type": "wait", "params": {"seconds": -1}}], [("start", "pause")], [{}])
    assert result["error"] == {"node": "pause", "message": "seconds must be 0 or more, got -1"}


def test_wait_for_the_resume_url_needs_the_server():
    result = run([{"id": "pause", "type": "wait", "params": {"resume": "webhook"}}], [("start", "pause")], [{}])
    assert result["status"] == "failed"
    assert "needs the server" in result["error"]["message"]


# -- respond_to_webhook (real runtime) -----------------------------------------------------------------------


def test_respond_to_webhook_sets_status_headers_and_body(runtime):
    doc = {"name": "answer", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "answer"}},
        {"id": "reply", "type": "respond_to_webhook", "params": {
            "status": 201, "headers": {"X-Order": "{{ json.id }}"}, "body": {"ok": True, "id": "{{ json.id }}"}}},
    ], "edges": edges(("hook", "reply"))}
    execution_id, outcome = run_saved(runtime, doc, [{"id": 42}], trigger="webhook")
    assert outcome.status == "succeeded"
    assert outcome.response == {"status": 201, "headers": {"X-Order": "42"}, "body": {"ok": True, "id": 42}}
    assert runtime.runs.show(execution_id)["status"] == "succeeded"


def test_respond_to_webhook_body_defaults_to_the_items(runtime):
    doc = {"name": "echo", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "echo"}},
        {"id": "reply", "type": "respond_to_webhook"},
    ], "edges": edges(("hook", "reply"))}
    _, one = run_saved(runtime, doc, [{"a": 1}], trigger="webhook")
    assert one.response == {"status": 200, "headers": {}, "body": {"a": 1}}
    _, many = run_saved(runtime, doc, [{"a": 1}, {"a": 2}], trigger="webhook")
    assert many.response["body"] == [{"a": 1}, {"a": 2}]


def test_respond_to_webhook_refuses_a_status_that_is_not_http(runtime):
    doc = {"name": "bad", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "bad"}},
        {"id": "reply", "type": "respond_to_webhook", "params": {"status": "{{ json.code }}"}},
    ], "edges": edges(("hook", "reply"))}
    execution_id, outcome = run_saved(runtime, doc, [{"code": 700}], trigger="webhook")
    assert outcome.status == "failed"
    assert outcome.error == {"node": "reply", "message": "status must be an HTTP status between 100 and 599, got 700"}
    assert runtime.runs.show(execution_id)["error"] == outcome.error


# -- execute_flow (real runtime, flows in the catalogue) -------------------------------------------------------

CHILD = {"name": "price", "nodes": [
    {"id": "in", "type": "manual"},
    {"id": "calc", "type": "set", "params": {"fields": {"gross": "{{ json.net * 1.2 }}"}}},
    {"id": "check", "type": "if", "params": {"condition": "{{ json.net >= 0 }}"}},
    {"id": "bad", "type": "stop_and_error", "params": {"message": "negative price {{ json.net }}"}},
    {"id": "ok", "type": "noop"},
], "edges": edges(("in", "calc"), ("calc", "check"), ("check", "true", "ok"), ("check", "false", "bad"))}


def parent(flow: str, **params) -> dict:
    return {"name": "parent", "nodes": [
        START,
        {"id": "call", "type": "execute_flow", "params": {"flow": flow, **params}},
        {"id": "after", "type": "set", "params": {"fields": {"back": True}}},
    ], "edges": edges(("start", "call"), ("call", "after"))}


def test_execute_flow_returns_the_sub_flows_output(runtime):
    runtime.catalog.save_flow(runtime.tenant_id("default"), CHILD)
    execution_id, outcome = run_saved(runtime, parent("price"), [{"net": 10}, {"net": 20}])
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == [{"net": 10, "gross": 12.0, "back": True}, {"net": 20, "gross": 24.0, "back": True}]
    children = [e for e in runtime.runs.list(runtime.tenant_id("default")) if e["parent_id"] == execution_id]
    assert len(children) == 1
    assert children[0]["flow"] == "price" and children[0]["status"] == "succeeded"
    assert children[0]["trigger"] == "subflow"


def test_execute_flow_input_param_replaces_the_items(runtime):
    runtime.catalog.save_flow(runtime.tenant_id("default"), CHILD)
    _, outcome = run_saved(runtime, parent("price", input={"net": "{{ json.amount }}"}), [{"amount": 5}])
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == [{"net": 5, "gross": 6.0, "back": True}]


def test_execute_flow_fails_clearly_when_the_sub_flow_fails(runtime):
    runtime.catalog.save_flow(runtime.tenant_id("default"), CHILD)
    execution_id, outcome = run_saved(runtime, parent("price"), [{"net": -1}])
    assert outcome.status == "failed"
    assert outcome.error["node"] == "call"
    message = outcome.error["message"]
    [child] = [e for e in runtime.runs.list(runtime.tenant_id("default")) if e["parent_id"] == execution_id]
    assert message == f"sub-flow 'price' (execution {child['id']}) failed: negative price -1"
    assert child["status"] == "failed"
    assert child["error"] == {"node": "bad", "message": "negative price -1"}
    assert "after" not in [s["node"] for s in runtime.runs.show(execution_id)["steps"]]


def test_execute_flow_fails_clearly_when_the_sub_flow_does_not_exist(runtime):
    execution_id, outcome = run_saved(runtime, parent("ghost"), [{"net": 1}])
    assert outcome.status == "failed"
    assert outcome.error["node"] == "call"
    assert "no flow named 'ghost'" in outcome.error["message"]
    assert runtime.runs.show(execution_id)["error"] == outcome.error


def test_execute_flow_without_the_server_says_so():
    result = run([{"id": "call", "type": "execute_flow", "params": {"flow": "other"}}], [("start", "call")], [{}])
    assert result["status"] == "failed"
    assert result["error"]["node"] == "call"
    assert result["error"]["message"] == ("calling another flow needs a data directory with that flow: "
                                          "import it and pass --data-dir to `flowfuse run`")
