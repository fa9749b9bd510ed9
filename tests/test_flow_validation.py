"""Flow validation: every problem names the node it concerns and says what to fix.

These go through `compile_flow` with the registry the product ships, exactly as saving or running
a flow does, and look at `FlowInvalid.errors`.
"""

from __future__ import annotations

import pytest

from appliance.commands import run_flow
from connectors import default_registry
from engine import FlowInvalid, compile_flow

REGISTRY = default_registry()
START = {"id": "start", "type": "manual"}


def chain(*nodes: dict, name: str = "f", **extra) -> dict:
    """A flow: a manual trigger, then the nodes one after another."""
    ids = ["start", *(n["id"] for n in nodes)]
    return {"name": name, "nodes": [START, *nodes],
            "edges": [{"from": a, "to": b} for a, b in zip(ids, ids[1:])], **extra}


def errors(doc: dict) -> list[tuple[str | None, str]]:
    with pytest.raises(FlowInvalid) as caught:
        compile_flow(doc, REGISTRY)
    assert caught.value.errors, "FlowInvalid without errors"
    return [(e.node, e.message) for e in caught.value.errors]


def only_error(doc: dict) -> tuple[str | None, str]:
    found = errors(doc)
    assert len(found) == 1, found
    return found[0]


def test_a_valid_flow_compiles_in_a_stable_order():
    flow = compile_flow(chain({"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}), REGISTRY)
    assert flow.order == ["start", "a", "b"]
    assert flow.trigger.id == "start"


def test_unknown_node_type_names_the_node_and_lists_known_types():
    node, message = only_error(chain({"id": "x", "type": "no_such_thing"}))
    assert node == "x"
    assert "unknown node type 'no_such_thing'" in message
    assert "http_request" in message and "set" in message  # what the user could have meant


def test_missing_required_param_names_the_param():
    node, message = only_error(chain({"id": "req", "type": "http_request", "params": {}}))
    assert node == "req"
    assert "param 'url' is required" in message


def test_ill_typed_param_says_expected_and_given_type():
    node, message = only_error(chain({"id": "b", "type": "split_in_batches", "params": {"size": "ten"}}))
    assert node == "b"
    assert message == "param 'size' must be an integer, got a string"


def test_boolean_is_not_accepted_as_a_number():
    node, message = only_error(chain({"id": "w", "type": "wait", "params": {"seconds": True}}))
    assert (node, message) == ("w", "param 'seconds' must be a number, got a boolean")


def test_param_outside_its_choices_lists_the_choices():
    node, message = only_error(chain({"id": "r", "type": "http_request",
                                      "params": {"url": "http://x", "response": "xml"}}))
    assert node == "r"
    assert "param 'response' must be one of 'json', 'text', 'binary'" == message


def test_unknown_param_names_it_and_lists_the_real_ones():
    node, message = only_error(chain({"id": "s", "type": "set", "params": {"fields": {}, "keep": True}}))
    assert node == "s"
    assert "set has no param 'keep'" in message
    assert "fields, keep_others" in message


def test_unknown_node_key_is_reported():
    node, message = only_error(chain({"id": "n", "type": "noop", "retries": 3}))
    assert (node, message) == ("n", "unknown node key 'retries'")


def test_bad_expression_syntax_names_the_param_and_shows_the_text():
    node, message = only_error(chain({"id": "check", "type": "if", "params": {"condition": "{{ json.total > }}"}}))
    assert node == "check"
    assert message.startswith("param 'condition': bad expression syntax in {{ json.total > }}")


def test_bad_expression_nested_inside_an_object_param_is_found():
    node, message = only_error(chain({"id": "s", "type": "set",
                                      "params": {"fields": {"ok": "{{ json.a }}", "bad": "{{ json.( }}"}}}))
    assert node == "s"
    assert "param 'fields'" in message and "bad expression syntax" in message and "json.(" in message


def test_literal_only_param_refuses_an_expression():
    doc = {"name": "f", "nodes": [{"id": "hook", "type": "webhook", "params": {"path": "{{ json.p }}"}}], "edges": []}
    node, message = only_error(doc)
    assert (node, message) == ("hook", "param 'path' must be a literal value, not an expression")


def test_edge_to_a_missing_node_names_the_source_and_the_target():
    doc = chain({"id": "a", "type": "noop"})
    doc["edges"].append({"from": "a", "to": "ghost"})
    node, message = only_error(doc)
    assert node == "a"
    assert "goes to a node that does not exist: 'ghost'" in message


def test_edge_from_a_missing_node_names_it():
    doc = chain({"id": "a", "type": "noop"})
    doc["edges"].append({"from": "ghost", "to": "a"})
    node, message = only_error(doc)
    assert node == "ghost"
    assert "comes from a node that does not exist: 'ghost'" in message


def test_edge_from_an_output_the_node_does_not_have_lists_its_outputs():
    doc = chain({"id": "check", "type": "if", "params": {"condition": "{{ json.ok }}"}}, {"id": "n", "type": "noop"})
    doc["edges"][1]["output"] = "maybe"
    node, message = only_error(doc)
    assert node == "check"
    assert "has no output 'maybe'" in message
    assert "true, false" in message
    assert "error (with on_error: output)" in message  # how to get an error output


def test_error_output_is_allowed_with_on_error_output():
    doc = chain({"id": "r", "type": "http_request", "params": {"url": "http://x"}, "on_error": "output"},
                {"id": "n", "type": "noop"})
    doc["edges"][1]["output"] = "error"
    flow = compile_flow(doc, REGISTRY)
    assert flow.nodes["n"].inputs == [("r", "error")]


def test_an_edge_into_a_trigger_is_refused():
    doc = chain({"id": "a", "type": "noop"})
    doc["edges"].append({"from": "a", "to": "start"})
    node, message = only_error(doc)
    assert node == "start"
    assert "is a trigger and cannot receive an edge" in message


def test_cycle_is_reported_with_its_nodes():
    doc = chain({"id": "a", "type": "noop"}, {"id": "b", "type": "noop"})
    doc["edges"].append({"from": "b", "to": "a"})
    node, message = only_error(doc)
    assert node == "a"
    assert "is part of a cycle (a -> b)" in message
    assert "only a split_in_batches loop may lead back" in message


def test_a_split_in_batches_loop_back_edge_is_allowed():
    doc = {"name": "loop", "nodes": [
        START,
        {"id": "batches", "type": "split_in_batches", "params": {"size": 2}},
        {"id": "body", "type": "set", "params": {"fields": {"seen": True}}},
        {"id": "after", "type": "noop"},
    ], "edges": [
        {"from": "start", "to": "batches"},
        {"from": "batches", "output": "loop", "to": "body"},
        {"from": "body", "to": "batches"},
        {"from": "batches", "output": "done", "to": "after"},
    ]}
    flow = compile_flow(doc, REGISTRY)
    assert flow.nodes["batches"].body == ["body"]
    assert flow.nodes["batches"].loop_returns == [("body", "main")]
    assert flow.nodes["body"].loop_owner == "batches"


def test_a_node_fed_from_inside_and_outside_a_loop_is_refused():
    doc = {"name": "loop", "nodes": [
        START,
        {"id": "batches", "type": "split_in_batches"},
        {"id": "body", "type": "noop"},
    ], "edges": [
        {"from": "start", "to": "batches"},
        {"from": "batches", "output": "loop", "to": "body"},
        {"from": "start", "to": "body"},
        {"from": "body", "to": "batches"},
    ]}
    node, message = only_error(doc)
    assert node == "body"
    assert "inside the loop of 'batches'" in message and "from 'start' outside it" in message


def test_no_trigger_says_which_triggers_to_add():
    doc = {"name": "f", "nodes": [{"id": "a", "type": "noop"}], "edges": []}
    node, message = only_error(doc)
    assert node is None
    assert message == "the flow has no trigger; add a manual, webhook or schedule node"


def test_a_second_trigger_is_named_and_the_first_is_mentioned():
    doc = {"name": "f", "nodes": [START, {"id": "hook", "type": "webhook", "params": {"path": "in"}}], "edges": []}
    node, message = only_error(doc)
    assert node == "hook"
    assert "is a second trigger; a flow has exactly one (first: 'start')" == message


def test_a_node_nothing_leads_to_is_reported_as_not_connected():
    doc = chain({"id": "a", "type": "noop"})
    doc["nodes"].append({"id": "island", "type": "noop"})
    node, message = only_error(doc)
    assert (node, message) == ("island", "is not connected: no edge leads to it")


def test_duplicate_node_ids_are_reported():
    doc = chain({"id": "a", "type": "noop"})
    doc["nodes"].append({"id": "a", "type": "noop"})
    assert ("a", "two nodes have this id; ids must be unique") in errors(doc)


@pytest.mark.parametrize("cron", ["every monday", "61 * * * *", "* * *"])
def test_schedule_with_a_bad_cron_expression(cron):
    doc = {"name": "f", "nodes": [{"id": "tick", "type": "schedule", "params": {"cron": cron}}], "edges": []}
    node, message = only_error(doc)
    assert node == "tick"
    assert f"param 'cron' {cron!r} is not a valid cron expression" in message
    assert "*/5 * * * *" in message  # an example of a good one


def test_schedule_with_an_unknown_time_zone():
    doc = {"name": "f", "nodes": [{"id": "tick", "type": "schedule",
                                   "params": {"cron": "0 9 * * 1-5", "timezone": "Mars/Olympus"}}], "edges": []}
    node, message = only_error(doc)
    assert node == "tick"
    assert "param 'timezone' 'Mars/Olympus' is not a known time zone" in message


def test_schedule_with_a_good_cron_and_time_zone_compiles():
    doc = {"name": "f", "nodes": [{"id": "tick", "type": "schedule",
                                   "params": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}}], "edges": []}
    assert compile_flow(doc, REGISTRY).trigger.id == "tick"


@pytest.mark.parametrize("path", ["/orders", "orders/", "a//b", "../etc", "with space", "x" * 201, ""])
def test_webhook_with_a_bad_path(path):
    doc = {"name": "f", "nodes": [{"id": "hook", "type": "webhook", "params": {"path": path}}], "edges": []}
    node, message = only_error(doc)
    assert node == "hook"
    assert f"param 'path' {path!r} must be letters, digits and . _ ~ - /" in message
    assert "'orders/new'" in message


def test_webhook_with_a_good_nested_path_compiles():
    doc = {"name": "f", "nodes": [{"id": "hook", "type": "webhook",
                                   "params": {"path": "orders/new-v2", "method": "PUT"}}], "edges": []}
    assert compile_flow(doc, REGISTRY).trigger.raw_params["path"] == "orders/new-v2"


def test_webhook_method_must_be_an_http_method():
    doc = {"name": "f", "nodes": [{"id": "hook", "type": "webhook",
                                   "params": {"path": "in", "method": "FETCH"}}], "edges": []}
    node, message = only_error(doc)
    assert node == "hook" and message.startswith("param 'method' must be one of 'GET', 'POST'")


@pytest.mark.parametrize("rules, expected", [
    ([], "param 'rules' needs at least one rule"),
    (["{{ json.a }}"], "rules[0] must be an object with exactly 'condition' and 'output'"),
    ([{"condition": "{{ json.a }}"}], "rules[0] must be an object with exactly 'condition' and 'output'"),
    ([{"condition": True, "output": "a", "extra": 1}], "rules[0] must be an object with exactly 'condition' and 'output'"),
    ([{"condition": True, "output": "a"}, {"condition": True, "output": ""}], "rules[1].output must be an output name"),
])
def test_switch_rules_shape(rules, expected):
    node, message = only_error(chain({"id": "route", "type": "switch", "params": {"rules": rules}}))
    assert (node, message) == ("route", expected)


def test_switch_outputs_are_its_rule_outputs_and_fallback():
    doc = chain({"id": "route", "type": "switch", "params": {
        "rules": [{"condition": "{{ json.a }}", "output": "big"}], "fallback": "other"}}, {"id": "n", "type": "noop"})
    doc["edges"][1]["output"] = "small"
    node, message = only_error(doc)
    assert node == "route"
    assert "has no output 'small'" in message and "big, other" in message


def test_merge_join_without_a_key():
    node, message = only_error(chain({"id": "m", "type": "merge", "params": {"mode": "join"}}))
    assert node == "m"
    assert "param 'key' is required when mode is 'join'" in message


def test_merge_with_an_unknown_mode():
    node, message = only_error(chain({"id": "m", "type": "merge", "params": {"mode": "zip"}}))
    assert (node, message) == ("m", "param 'mode' must be one of 'append', 'join'")


@pytest.mark.parametrize("params", [{}, {"seconds": 1, "until": "2030-01-01T00:00:00Z"},
                                    {"seconds": 1, "resume": "webhook"}])
def test_wait_needs_exactly_one_mode(params):
    node, message = only_error(chain({"id": "pause", "type": "wait", "params": params}))
    assert node == "pause"
    assert message == "give exactly one of 'seconds', 'until' (an ISO date-time) or 'resume': 'webhook'"


def test_wait_resume_only_takes_webhook():
    node, message = only_error(chain({"id": "pause", "type": "wait", "params": {"resume": "email"}}))
    assert (node, message) == ("pause", "param 'resume' must be one of 'webhook'")


@pytest.mark.parametrize("retry, expected", [
    ({"max_attempts": 0}, "retry.max_attempts must be a whole number of at least 1"),
    ({"max_attempts": 2.5}, "retry.max_attempts must be a whole number of at least 1"),
    ({"max_attempts": True}, "retry.max_attempts must be a whole number of at least 1"),
    ({"backoff_s": -1}, "retry.backoff_s must be a number of seconds, 0 or more"),
    ({"backoff_s": "2"}, "retry.backoff_s must be a number of seconds, 0 or more"),
    ({"max_backoff_s": -5}, "retry.max_backoff_s must be a number of seconds, 0 or more"),
    ({"attempts": 3}, "retry has an unknown key 'attempts' (use max_attempts, backoff_s, max_backoff_s)"),
    (3, "retry must be an object with max_attempts, backoff_s, max_backoff_s"),
])
def test_retry_values(retry, expected):
    node, message = only_error(chain({"id": "call", "type": "noop", "retry": retry}))
    assert (node, message) == ("call", expected)


def test_retry_of_zero_backoff_is_allowed():
    flow = compile_flow(chain({"id": "call", "type": "noop",
                               "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0}}), REGISTRY)
    retry = flow.nodes["call"].retry
    assert (retry.max_attempts, retry.backoff_s, retry.max_backoff_s) == (3, 0.0, 0.0)


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
def test_node_timeout_must_be_positive_seconds(timeout):
    node, message = only_error(chain({"id": "call", "type": "noop", "timeout_s": timeout}))
    assert (node, message) == ("call", "timeout_s must be a number of seconds above 0")


def test_on_error_must_be_a_known_mode():
    node, message = only_error(chain({"id": "call", "type": "noop", "on_error": "ignore"}))
    assert (node, message) == ("call", "on_error must be one of fail, continue, output, got 'ignore'")


def test_flow_settings_are_checked():
    found = errors(chain({"id": "a", "type": "noop"}, settings={"timeout_s": 0, "error_flow": "", "retries": 1}))
    messages = [m for _, m in found]
    assert "settings.timeout_s must be a number of seconds above 0" in messages
    assert "settings.error_flow must be the name of a flow" in messages
    assert "unknown setting 'retries' (settings are error_flow, timeout_s)" in messages


def test_a_flow_needs_a_name_and_nodes():
    found = errors({"nodes": []})
    assert (None, 'the flow needs a "name" (a non-empty string)') in found
    assert (None, '"nodes" must be a non-empty list') in found


def test_every_problem_is_listed_at_once():
    """Problems in several nodes are all reported, including the checks a node type runs itself."""
    doc = chain({"id": "bad_type", "type": "set", "params": {"fields": 1}},
                {"id": "bad_wait", "type": "wait", "params": {}},
                {"id": "bad_retry", "type": "noop", "retry": {"max_attempts": 0}})
    found = dict(errors(doc))
    assert found == {
        "bad_type": "param 'fields' must be an object, got an integer",
        "bad_wait": "give exactly one of 'seconds', 'until' (an ISO date-time) or 'resume': 'webhook'",
        "bad_retry": "retry.max_attempts must be a whole number of at least 1",
    }


def test_flowfuse_run_reports_an_invalid_flow_with_node_and_message():
    code, result = run_flow(chain({"id": "x", "type": "nope"}), [{}])
    assert code == 2
    assert result["status"] == "invalid"
    assert result["errors"][0]["node"] == "x"
    assert "unknown node type 'nope'" in result["errors"][0]["message"]


def test_edges_to_a_node_of_unknown_type_do_not_add_misleading_errors():
    """The node exists: only its unknown type is reported, not 'an edge to a node that does not exist'."""
    found = errors(chain({"id": "x", "type": "no_such_thing"}, {"id": "after", "type": "noop"}))
    assert [node for node, _ in found] == ["x"]


def test_a_malformed_edge_is_an_error_not_a_crash():
    doc = chain({"id": "a", "type": "noop"})
    doc["edges"].append({"from": ["a"], "to": "a"})
    node, message = only_error(doc)
    assert node is None
    assert message.startswith('edges[1] needs "from" and "to" node ids')
