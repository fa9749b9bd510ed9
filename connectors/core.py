"""Triggers and the nodes that shape items: manual, webhook, schedule, error_trigger, set, filter,
if, switch, merge, noop, stop_and_error, respond_to_webhook."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from croniter import croniter

from .sdk import NodeContext, NodeError, NodeType, Param, Registry, StopExecution

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
WEBHOOK_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~/-]{0,199}$")


def _passthrough(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return items


def _validate_webhook(params: Mapping[str, Any]) -> list[str]:
    path = params.get("path", "")
    if not WEBHOOK_PATH.match(path) or "//" in path or path.endswith("/") or ".." in path:
        return [f"param 'path' {path!r} must be letters, digits and . _ ~ - / (no leading or trailing /), "
                "for example 'orders/new'"]
    return []


def _validate_schedule(params: Mapping[str, Any]) -> list[str]:
    errors = []
    cron = params.get("cron", "")
    if not croniter.is_valid(cron):
        errors.append(f"param 'cron' {cron!r} is not a valid cron expression (five fields, or six with seconds last; e.g. '*/5 * * * *')")
    tz = params.get("timezone") or "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors.append(f"param 'timezone' {tz!r} is not a known time zone (e.g. 'Europe/Berlin')")
    return errors


def _set(ctx: NodeContext, items: list[dict]) -> list[dict]:
    keep = ctx.param("keep_others")
    out = []
    for item in items:
        fields = ctx.param("fields", item)
        out.append({**item, **fields} if keep else dict(fields))
    return out


def _filter(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return [item for item in items if ctx.param("condition", item)]


def _if(ctx: NodeContext, items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"true": [], "false": []}
    for item in items:
        out["true" if ctx.param("condition", item) else "false"].append(item)
    return out


def _switch_outputs(params: Mapping[str, Any]) -> list[str]:
    names = [r["output"] for r in params.get("rules") or [] if isinstance(r, dict) and isinstance(r.get("output"), str)]
    if params.get("fallback"):
        names.append(params["fallback"])
    return list(dict.fromkeys(names))


def _validate_switch(params: Mapping[str, Any]) -> list[str]:
    errors = []
    for i, rule in enumerate(params.get("rules") or []):
        if not isinstance(rule, dict) or set(rule) != {"condition", "output"}:
            errors.append(f"rules[{i}] must be an object with exactly 'condition' and 'output'")
        elif not isinstance(rule["output"], str) or not rule["output"]:
            errors.append(f"rules[{i}].output must be an output name")
    if not params.get("rules"):
        errors.append("param 'rules' needs at least one rule")
    return errors


def _switch(ctx: NodeContext, items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in _switch_outputs(ctx.node.raw_params)}
    fallback = ctx.param("fallback")
    for item in items:
        for rule in ctx.param("rules", item):
            if rule["condition"]:
                out[rule["output"]].append(item)
                break
        else:
            if fallback:
                out[fallback].append(item)
    return out


def _merge(ctx: NodeContext, items: list[dict]) -> list[dict]:
    if ctx.param("mode") == "append":
        return items
    key = ctx.param("key")
    if len(ctx.inputs) != 2:
        raise NodeError(f"join needs exactly two inputs, got {len(ctx.inputs)}")
    left, right = ctx.inputs
    index: dict[Any, list[dict]] = {}
    for item in right:
        if key in item:
            index.setdefault(_hashable(item[key]), []).append(item)
    return [{**a, **b} for a in left if key in a for b in index.get(_hashable(a[key]), [])]


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


def _validate_merge(params: Mapping[str, Any]) -> list[str]:
    if params.get("mode") == "join" and not params.get("key"):
        return ["param 'key' is required when mode is 'join' (the field both inputs share)"]
    return []


def _stop(ctx: NodeContext, items: list[dict]) -> list[dict]:
    raise StopExecution(str(ctx.param("message", items[0] if items else None)))


def _respond(ctx: NodeContext, items: list[dict]) -> list[dict]:
    first = items[0] if items else None
    body = ctx.param("body", first)
    if body is None:
        body = items[0] if len(items) == 1 else items
    status = ctx.param("status", first)
    if not 100 <= status <= 599:
        raise NodeError(f"status must be an HTTP status between 100 and 599, got {status}")
    headers = {str(k): str(v) for k, v in (ctx.param("headers", first) or {}).items()}
    ctx.respond(status, headers, body)
    return items


def register(registry: Registry) -> None:
    add = registry.add
    add(NodeType("manual", _passthrough, trigger_kind="manual", pure=True, label="Manual trigger", category="Triggers",
                 description="Started by hand, from the CLI, API or console."))
    add(NodeType("error_trigger", _passthrough, trigger_kind="error", pure=True, category="Triggers",
                 description="Starts an error flow; its item describes the failed execution."))
    add(NodeType("webhook", _passthrough, trigger_kind="webhook", pure=True, validate=_validate_webhook,
                 category="Triggers",
                 params={
        "path": Param("string", required=True, expression=False, description="path under /hooks/{tenant}/"),
        "method": Param("string", default="POST", choices=HTTP_METHODS, expression=False),
        "respond": Param("string", default="when_done", choices=("when_done", "immediately"), expression=False),
    }, description="Started by an HTTP request to /hooks/{tenant}/{path}."))
    add(NodeType("schedule", _passthrough, trigger_kind="schedule", pure=True, validate=_validate_schedule,
                 category="Triggers",
                 params={
        "cron": Param("string", required=True, expression=False, description="cron expression, e.g. '0 9 * * 1-5'"),
        "timezone": Param("string", default="UTC", expression=False),
    }, description="Started by the worker at each time the cron expression names."))
    add(NodeType("set", _set, pure=True, params={
        "fields": Param("object", required=True, description="{name: value or expression}"),
        "keep_others": Param("boolean", default=True),
    }, description="Sets fields on each item."))
    add(NodeType("filter", _filter, pure=True, params={"condition": Param("any", required=True)},
                 description="Keeps the items for which the condition is true."))
    add(NodeType("if", _if, pure=True, outputs=("true", "false"), label="If",
                 params={"condition": Param("any", required=True)},
                 description="Sends each item to output true or false."))
    add(NodeType("switch", _switch, pure=True, outputs=_switch_outputs, outputs_from="rules", validate=_validate_switch,
                 params={
        "rules": Param("list", required=True, description="[{condition, output}], first match wins"),
        "fallback": Param("string", expression=False, description="output for items no rule matches"),
    }, description="Routes each item to the output of the first rule it matches."))
    add(NodeType("merge", _merge, pure=True, multi_input=True, validate=_validate_merge, params={
        "mode": Param("string", default="append", choices=("append", "join"), expression=False),
        "key": Param("string", expression=False),
    }, description="Waits for all its inputs and appends them, or joins two of them on a key."))
    add(NodeType("noop", _passthrough, pure=True, label="No-op", description="Passes items on unchanged."))
    add(NodeType("stop_and_error", _stop, pure=True, params={"message": Param("string", required=True)},
                 description="Fails the execution with a message."))
    add(NodeType("respond_to_webhook", _respond, pure=True, params={
        "status": Param("integer", default=200),
        "headers": Param("object", default={}),
        "body": Param("any", description="defaults to the items (one item as an object)"),
    }, description="Decides the HTTP response of a when_done webhook."))
