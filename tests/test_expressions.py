"""Expressions in node params: native types, the names in scope, and hostile input.

Most cases run through a real flow (`run_flow`, what `flowfuse run` does): a `set` node whose
field holds the expression. A hostile expression must fail that node with a message that says
what was refused, quickly, without escaping the sandbox or exhausting memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from appliance.commands import run_flow
from appliance.runtime import Runtime
from engine import ExpressionError, compile_value


def set_flow(value, *, keep_others: bool = True) -> dict:
    return {"name": "expr", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "calc", "type": "set", "params": {"fields": {"v": value}, "keep_others": keep_others}},
    ], "edges": [{"from": "start", "to": "calc"}]}


def evaluate(value, items=None):
    """The value the `set` node computes for each item, through a real run."""
    code, result = run_flow(set_flow(value, keep_others=False), items if items is not None else [{"n": 41}])
    assert code == 0, result
    return [item["v"] for item in result["output"]]


def failure(value, items=None) -> str:
    """Run a flow whose node evaluates `value`; it must fail at that node. Returns the message."""
    code, result = run_flow(set_flow(value), items if items is not None else [{"n": 1}])
    assert code == 1, result
    assert result["status"] == "failed"
    assert result["error"]["node"] == "calc"
    failed = [s for s in result["steps"] if s["node"] == "calc"]
    assert failed and failed[-1]["status"] == "failed"
    assert failed[-1]["error"] == result["error"]["message"]
    return result["error"]["message"]


# -- native types and rendering --------------------------------------------------------------------------


def test_a_whole_expression_keeps_its_native_type():
    assert evaluate("{{ json.n + 1 }}") == [42]
    assert type(evaluate("{{ json.n + 1 }}")[0]) is int
    assert evaluate("{{ json.n / 2 }}") == [20.5]
    assert evaluate("{{ json.n > 40 }}") == [True]
    assert evaluate("{{ [json.n, 'a', none] }}") == [[41, "a", None]]
    assert evaluate("{{ {'n': json.n, 'nested': {'list': [1, 2]}} }}") == [{"n": 41, "nested": {"list": [1, 2]}}]
    assert evaluate("{{ none }}") == [None]


def test_a_dict_literal_with_nested_braces_is_still_one_expression():
    assert evaluate("{{ {'a': {'b': json.n}} }}") == [{"a": {"b": 41}}]
    assert evaluate("{{ '}}' }}") == ["}}"]
    assert evaluate("{{ json.n }}{{ json.n }}") == ["4141"]


def test_a_field_of_the_data_wins_over_a_dict_method_of_the_same_name():
    assert evaluate("{{ json.items|length }}", [{"items": [1, 2, 3]}]) == [3]
    assert evaluate("{{ json.keys }}", [{"keys": "k"}]) == ["k"]
    assert evaluate("{{ json.get('n', 0) }}") == [41]


def test_surrounding_whitespace_still_counts_as_a_whole_expression():
    assert evaluate("  {{ json.n * 2 }}\n") == [82]


def test_a_mixed_template_renders_to_a_string():
    assert evaluate("Order {{ json.id }}: {{ json.total }} EUR", [{"id": 7, "total": 12.5}]) == ["Order 7: 12.5 EUR"]
    assert evaluate("{{ json.a }}{{ json.b }}", [{"a": 1, "b": 2}]) == ["12"]


def test_each_item_gets_its_own_value():
    assert evaluate("{{ json.n * 10 }}", [{"n": 1}, {"n": 2}, {"n": 3}]) == [10, 20, 30]


def test_expressions_inside_nested_objects_and_lists_are_evaluated():
    code, result = run_flow({"name": "nested", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "calc", "type": "set", "params": {"keep_others": False, "fields": {
            "order": {"id": "{{ json.id }}", "tags": ["fixed", "{{ json.tag }}"], "label": "#{{ json.id }}"}}}},
    ], "edges": [{"from": "start", "to": "calc"}]}, [{"id": 5, "tag": "new"}])
    assert code == 0, result
    assert result["output"] == [{"order": {"id": 5, "tags": ["fixed", "new"], "label": "#5"}}]


def test_tojson_gives_a_plain_string():
    assert evaluate("{{ json|tojson }}", [{"a": [1, 2]}]) == ['{"a": [1, 2]}']


def test_filters_work():
    assert evaluate("{{ json.name|upper }}", [{"name": "ada"}]) == ["ADA"]
    assert evaluate("{{ json.tags|join(', ') }}", [{"tags": ["a", "b"]}]) == ["a, b"]
    assert evaluate("{{ json.s|replace('-', '+') }}", [{"s": "a-b-c"}]) == ["a+b+c"]
    assert evaluate("{{ '%05d'|format(json.n) }}") == ["00041"]
    assert evaluate("{{ '%-6s|' % json.s }}", [{"s": "ab"}]) == ["ab    |"]
    assert evaluate("{{ '{:>5}'.format(json.n) }}") == ["   41"]
    assert evaluate("{{ 2 ** 10 }}") == [1024]
    assert evaluate("{{ range(3)|list }}") == [[0, 1, 2]]


def test_statements_and_comments_are_plain_text():
    assert evaluate("{% for i in range(3) %}x{% endfor %}") == ["{% for i in range(3) %}x{% endfor %}"]
    assert evaluate("{# note #}{{ json.n }}") == ["{# note #}41"]
    assert evaluate("{% set x = 1 %}") == ["{% set x = 1 %}"]


def test_a_missing_field_fails_the_node_naming_the_field():
    message = failure("{{ json.total * 2 }}", [{"amount": 3}])
    assert "has no attribute 'total'" in message
    assert "{{ json.total * 2 }}" in message


def test_a_runtime_error_in_an_expression_fails_the_node_with_the_error():
    message = failure("{{ json.n / 0 }}")
    assert message.startswith("ZeroDivisionError")
    assert "{{ json.n / 0 }}" in message


def test_an_expression_of_the_wrong_type_for_its_param_fails_clearly():
    code, result = run_flow({"name": "f", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "batches", "type": "split_in_batches", "params": {"size": "{{ json.size }}"}},
        {"id": "body", "type": "noop"},
    ], "edges": [{"from": "start", "to": "batches"}, {"from": "batches", "output": "loop", "to": "body"}]},
        [{"size": "two"}])
    assert code == 1
    assert result["error"] == {"node": "batches",
                               "message": "param 'size' must be an integer, got a string (from '{{ json.size }}')"}


def test_an_expression_error_in_a_loop_size_fails_that_node():
    code, result = run_flow({"name": "f", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "batches", "type": "split_in_batches", "params": {"size": "{{ json.missing }}"}},
        {"id": "body", "type": "noop"},
    ], "edges": [{"from": "start", "to": "batches"}, {"from": "batches", "output": "loop", "to": "body"}]}, [{}])
    assert code == 1
    assert result["error"]["node"] == "batches"
    assert "has no attribute 'missing'" in result["error"]["message"]


# -- names in scope --------------------------------------------------------------------------------------


def test_items_is_every_input_item():
    assert evaluate("{{ items|length }}", [{"n": 1}, {"n": 2}]) == [2, 2]
    assert evaluate("{{ items|map(attribute='n')|sum }}", [{"n": 1}, {"n": 2}]) == [3, 3]


def test_nodes_gives_another_nodes_first_item_and_all_items():
    code, result = run_flow({"name": "f", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "price", "type": "set", "params": {"fields": {"net": "{{ json.n * 100 }}"}}},
        {"id": "report", "type": "set", "params": {"keep_others": False, "fields": {
            "first_net": "{{ nodes['price'].json.net }}",
            "count": "{{ nodes['price'].items|length }}",
            "all": "{{ nodes['price'].items|map(attribute='net')|list }}",
            "trigger": "{{ nodes['start'].json.n }}",
            "dotted": "{{ nodes.price.json.net }}",
        }}},
    ], "edges": [{"from": "start", "to": "price"}, {"from": "price", "to": "report"}]}, [{"n": 1}, {"n": 2}])
    assert code == 0, result
    assert result["output"][0] == {"first_net": 100, "count": 2, "all": [100, 200], "trigger": 1, "dotted": 100}


def test_nodes_of_a_node_that_has_not_run_is_an_error_naming_it():
    message = failure("{{ nodes['later'].json }}")
    assert "later" in message


def test_execution_id_trigger_and_flow_name():
    [value] = evaluate("{{ execution.id }}|{{ execution.trigger }}|{{ execution.flow }}")
    execution_id, trigger, flow = value.split("|")
    assert execution_id.startswith("local-") and len(execution_id) > len("local-")
    assert (trigger, flow) == ("manual", "expr")
    [other] = evaluate("{{ execution.id }}")
    assert other != execution_id  # every run has its own id


def test_now_is_the_current_time_in_utc():
    before = dt.datetime.now(dt.timezone.utc)
    [value] = evaluate("{{ now().isoformat() }}")
    after = dt.datetime.now(dt.timezone.utc)
    when = dt.datetime.fromisoformat(value)
    assert when.utcoffset() == dt.timedelta(0)
    assert before <= when <= after
    assert evaluate("{{ now().year >= 2024 }}") == [True]


def test_vars_and_execution_id_through_the_real_runtime(settings):
    runtime = Runtime(settings)
    try:
        tid = runtime.tenant_id("default")
        runtime.catalog.set_variable(tid, "region", "eu-west")
        runtime.catalog.set_variable(tid, "limits", {"max": 5})
        row = runtime.catalog.save_flow(tid, {"name": "vars", "nodes": [
            {"id": "start", "type": "manual"},
            {"id": "calc", "type": "set", "params": {"fields": {
                "where": "{{ vars.region }}", "max": "{{ vars.limits.max }}", "run": "{{ execution.id }}"}}},
        ], "edges": [{"from": "start", "to": "calc"}]})
        execution_id, outcome = asyncio.run(runtime.run_inline(row, "manual", [{"n": 1}]))
        assert outcome.status == "succeeded"
        assert outcome.output == [{"n": 1, "where": "eu-west", "max": 5, "run": execution_id}]
        assert runtime.runs.show(execution_id)["output"] == outcome.output
    finally:
        runtime.close()


def test_credentials_are_not_in_scope():
    message = failure("{{ credential }}")
    assert "'credential' is undefined" in message


# -- hostile expressions ---------------------------------------------------------------------------------

HOSTILE = [
    # attribute walks out of the sandbox
    ("{{ json.__class__.__mro__ }}", "access to attribute '__class__' of 'dict' object is unsafe"),
    ("{{ ().__class__.__bases__[0].__subclasses__() }}", "access to attribute '__class__' of 'tuple' object is unsafe"),
    ("{{ json.get.__globals__ }}", "no attribute '__globals__'"),
    ("{{ json['__class__'] }}", "access to attribute '__class__' of 'dict' object is unsafe"),
    ("x{{ self._TemplateReference__context }}", "attribute '_TemplateReference__context'"),
    ("{{ json.update({'n': 2}) }}", "access to attribute 'update' of 'dict' object is unsafe"),
    # allocation
    ("{{ 'a' * 10**9 }}", "repetition would build more than 1000000 elements"),
    ("{{ [1] * 10**7 }}", "repetition would build more than 1000000 elements"),
    ("{{ ['a' * 999999] * 999 }}", "repetition would build more than 1000000 elements"),
    ("{{ 10 ** (10 ** 10) }}", "exponent 10000000000 is larger than 1000"),
    ("{{ 10**10**10**10**10 }}", "the result of ** would be too large"),
    ("{{ 9**9**9**9**9 }}", "the result of ** would be too large"),
    ("{{ range(10**9)|list }}", "argument 1000000000 is larger than 1000000"),
    ("{{ 'x'|center(10**9) }}", "argument 1000000000 is larger than 1000000"),
    ("{{ 'x'.ljust(999999999) }}", "argument 999999999 is larger than 1000000"),
    ("{{ '{:>999999999}'.format(1) }}", "format width is too large"),
    ("{{ '{:>{}}'.format(1, '999999999') }}", "format width is too large"),
    ("{{ '{:>{w}}'.format_map({'w': '999999999'}) }}", "format width is too large"),
    ("{{ '%999999999d' % 1 }}", "format width is too large"),
    ("{{ '%*d' % (999999999, 1) }}", "format width is too large"),
    ("{{ '%(a)999999999d' % {'a': 1} }}", "format width is too large"),
    ("{{ '%999999999d'|format(1) }}", "format width is too large"),
    ("{{ ('a' * 1000)|replace('a', 'a' * 1000000) }}", "replace would build more than 1000000 characters"),
    ("{{ ('a' * 1000).replace('a', 'b' * 999999) }}", "replace would build more than 1000000 characters"),
    ("{{ (range(99999)|list)|join('a' * 999999) }}", "join would build more than 1000000 characters"),
    ("{{ ('a' * 999).join(range(99999)|map('string')) }}", "join would build more than 1000000 characters"),
    ("{{ range(100000)|map('center', 1000000)|list }}", "builds more than 10000000 elements in all"),
    ("{{ 'a' * 1000000 + 'b' }}", "concatenation would build more than 1000000 elements"),
    # no globals beyond range and now
    ("{{ lipsum() }}", "'lipsum' is undefined"),
    ("{{ cycler(1, 2) }}", "'cycler' is undefined"),
    ("{{ namespace(a=1) }}", "'namespace' is undefined"),
    ("{{ joiner() }}", "'joiner' is undefined"),
    ("{{ dict(a=1) }}", "'dict' is undefined"),
]


@pytest.mark.parametrize("expression, refused", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_expression_fails_its_node_saying_what_was_refused(expression, refused):
    message = failure(expression)
    assert refused in message


def test_a_hostile_expression_in_a_mixed_template_fails_too():
    message = failure("prefix {{ 'a' * 10**9 }} suffix")
    assert "repetition would build more than 1000000 elements" in message


def test_many_allowed_steps_cannot_add_up_in_a_template():
    message = failure("".join("{{ 'a' * 999999 }}" for _ in range(20)))
    assert "builds more than 10000000 elements in all" in message


def test_deep_nesting_is_refused_when_the_flow_is_checked():
    deep = "{{ " + "[" * 2000 + "]" * 2000 + " }}"
    code, result = run_flow(set_flow(deep), [{}])
    assert code == 2
    [error] = result["errors"]
    assert error["node"] == "calc"
    assert "expression nests too deeply" in error["message"]


def test_deep_nesting_directly_raises_expression_error():
    with pytest.raises(ExpressionError, match="nests too deeply"):
        compile_value("{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}")


def test_an_over_long_expression_is_refused():
    with pytest.raises(ExpressionError, match="longer than 20000 characters"):
        compile_value("{{ " + "1 + " * 6000 + "1 }}")


def test_the_sandbox_still_works_after_hostile_expressions():
    """Refusals leave no state behind: the next evaluation in the same process is normal."""
    for expression, _ in HOSTILE[:8]:
        failure(expression)
    assert evaluate("{{ json.n + 1 }}") == [42]


# -- compile_value directly --------------------------------------------------------------------------------


def test_compile_value_compiles_once_and_evaluates_per_scope():
    compiled = compile_value({"total": "{{ json.a + json.b }}", "label": "sum={{ json.a + json.b }}", "fixed": 1})
    assert compiled.is_dynamic
    assert compiled.evaluate({"json": {"a": 1, "b": 2}}) == {"total": 3, "label": "sum=3", "fixed": 1}
    assert compiled.evaluate({"json": {"a": 10, "b": 20}}) == {"total": 30, "label": "sum=30", "fixed": 1}


def test_compile_value_leaves_literals_alone():
    compiled = compile_value({"a": [1, "text", {"b": None}]})
    assert not compiled.is_dynamic
    assert compiled.evaluate({}) == {"a": [1, "text", {"b": None}]}


def test_compile_value_reports_bad_syntax_with_the_text():
    with pytest.raises(ExpressionError) as caught:
        compile_value("{{ json.a + }}")
    assert "bad expression syntax in {{ json.a + }}" in str(caught.value)


@pytest.mark.parametrize("expression, refused", [
    ("{{ json.__class__ }}", "expression not allowed: access to attribute '__class__'"),
    ("{{ 'a' * 10**9 }}", "expression not allowed: repetition would build more than 1000000 elements"),
    ("{{ '%*d' % (999999999, 1) }}", "expression not allowed: format width is too large"),
])
def test_compile_value_refuses_hostile_expressions_at_evaluation(expression, refused):
    compiled = compile_value(expression)
    with pytest.raises(ExpressionError) as caught:
        compiled.evaluate({"json": {}})
    assert refused in str(caught.value)
