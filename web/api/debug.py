"""Debugging flows from the console: the node catalogue, test runs, pinned data, step mode and live events.

A test run is an ordinary queued execution (trigger `test`: durable, quota-counted, run by the
worker) that commits every step, so `GET .../executions/{id}/events` can stream its steps as
server-sent events: the web process polls runs.db (the worker writes it from another process)
a few times a second per open stream, borrowing a pool thread for each look, never holding one.
What a test run runs with (a draft, pins, a partial run's inputs) is fixed when it starts and kept
with the execution; see `Runtime.start_test_run`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import ServerSentEvent, ServerSentEventMessage

from appliance.catalog import Conflict, NotFound
from appliance.identity import Access, Principal
from appliance.runtime import Runtime
from connectors import icon_file
from engine import FINAL
from engine.nodes import NodeType

from .base import Body, Problem, audit, check_access, runtime_of

#: Node ids a pin may name when the flow's latest version lacks the node (a node of an unsaved draft).
NODE_ID = re.compile(r"^\w[\w .:-]{0,99}$")
#: How often an open event stream looks for new steps, and how often once the run has been quiet a while.
POLL_S, QUIET_POLL_S, QUIET_AFTER_S = 0.15, 1.0, 10.0
KEEP_ALIVE_S = 15.0


class TestRunIn(Body):
    #: A draft of the flow (flow JSON); by default the flow's latest saved version.
    definition: dict[str, Any] | None = None
    #: The trigger's items (an object is one item); by default one empty item.
    input: list[dict[str, Any]] | dict[str, Any] | None = None
    #: An execution of this flow whose trigger items (and, for a partial run, node outputs) to use.
    input_from: str | None = None
    #: Run only this node and what follows it; what precedes it is taken from pins or earlier runs.
    start_at: str | None = None
    #: Pause before each node once one has run; `POST .../executions/{id}/continue` runs the next.
    step_mode: bool = False


class PinIn(Body):
    items: list[dict[str, Any]]


def _node_type(spec: NodeType) -> dict[str, Any]:
    outputs = None if callable(spec.outputs) else list(spec.outputs)
    view: dict[str, Any] = {
        "type": spec.type, "label": spec.label, "category": spec.category, "description": spec.description,
        "trigger": spec.trigger, "trigger_kind": spec.trigger_kind, "outputs": outputs,
        "multi_input": spec.multi_input, "credential": spec.credential, "credential_types": list(spec.credential_types),
        "icon": f"/api/v1/node-icons/{spec.icon}" if icon_file(spec.icon) else None,
        "params": {name: {"kind": p.kind, "required": p.required, "default": p.default, "choices": list(p.choices),
                          "expression": p.expression, "description": p.description}
                   for name, p in spec.params.items()}}
    if outputs is None:
        view["outputs_from"] = spec.outputs_from
    return view


@get("/node-types", sync_to_thread=True, summary="Every node type with its params and outputs (the editor's palette); "
                                                 "with `tenant`, that tenant's imported connectors' actions too")
def node_types(request: Request, principal: Principal, tenant: str | None = None) -> dict:
    rt = runtime_of(request)
    registry = rt.registry
    if tenant is not None:  # the caller must be able to read the tenant's flows (404 for a stranger)
        registry = rt.catalog.registry_for(check_access(request, principal, tenant, "flows.read").tenant_id)
    return {"node_types": [_node_type(registry.get(name)) for name in registry.names()],
            "broken": [{"source": b["source"], "error": b["error"]} for b in rt.registry.broken]}


@get("/node-icons/{icon:str}", sync_to_thread=False, summary="A node type's icon (an SVG shipped with its connector)",
     media_type="image/svg+xml")
def node_icon(icon: str) -> Response[bytes]:
    found = icon_file(icon)
    if found is None:
        raise NotFound(f"no icon {icon!r}")
    return Response(found.read_bytes(), media_type="image/svg+xml",
                    headers={"cache-control": "public, max-age=86400", "content-security-policy": "default-src 'none'"})


@get("/credential-types", sync_to_thread=False,
     summary="Every credential type with its fields (which are secret, which required)")
def credential_types(request: Request, principal: Principal) -> dict:
    registry = runtime_of(request).registry
    found = []
    for name in registry.credential_type_names():
        spec = registry.credential_type(name)
        found.append({"name": spec.name, "description": spec.description,
                      "fields": {f: {"label": field.label, "secret": field.secret, "required": field.required}
                                 for f, field in spec.fields.items()},
                      "other_fields": spec.other is not None})
    return {"credential_types": found}


@post("/tenants/{tenant:str}/flows/{name:str}/test-runs", sync_to_thread=True, status_code=202,
      summary="Test-run a flow or a draft of it, in full, from a node, or a node at a time",
      opt={"permission": "flows.write"})
def start_test_run(request: Request, principal: Principal, access: Access, tenant: str, name: str,
                   data: TestRunIn) -> dict:
    rt = runtime_of(request)
    flow = rt.catalog.flow(access.tenant_id, name)
    items = [data.input] if isinstance(data.input, dict) else data.input
    execution_id = rt.start_test_run(flow, definition=data.definition, items=items, input_from=data.input_from,
                                     start_at=data.start_at, step_mode=data.step_mode, by=principal.label)
    audit(request, principal, "flow.test_run", tenant_id=access.tenant_id, target_type="execution",
          target_id=execution_id, details={"flow": name, "draft": data.definition is not None,
                                           "start_at": data.start_at, "step_mode": data.step_mode})
    return {"execution_id": execution_id, "status": "queued",
            "events": f"/api/v1/tenants/{tenant}/executions/{execution_id}/events"}


@get("/tenants/{tenant:str}/flows/{name:str}/pins", sync_to_thread=True,
     summary="The flow's pinned output items by node (used by test runs only)", opt={"permission": "flows.read"})
def list_pins(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> dict:
    rt = runtime_of(request)
    return {"pins": rt.catalog.pins(rt.catalog.flow(access.tenant_id, name).id)}


@put("/tenants/{tenant:str}/flows/{name:str}/pins/{node_id:str}", sync_to_thread=True,
     summary="Pin a node's output: test runs use these items instead of running it",
     opt={"permission": "flows.write"},
     responses={413: ResponseSpec(data_container=Problem, media_type="application/problem+json",
                                  description="The items are larger than a step's output may be")})
def set_pin(request: Request, principal: Principal, access: Access, tenant: str, name: str, node_id: str,
            data: PinIn) -> Response[dict]:
    rt = runtime_of(request)
    flow = rt.catalog.flow(access.tenant_id, name)
    if node_id not in _node_ids(flow.doc) and not NODE_ID.match(node_id):
        raise NotFound(f"flow {name!r} has no node {node_id!r}, and a draft's node id is letters, digits, "
                       "spaces and _ . : - (at most 100)")
    encoded = json.dumps(data.items, ensure_ascii=False)
    limit = rt.settings.engine.max_step_output_bytes
    if len(encoded.encode()) > limit:
        return Response({"type": "about:blank", "title": "Content Too Large", "status": 413,
                         "detail": f"the pinned items are {len(encoded.encode())} bytes of JSON; a node's output "
                                   f"may be at most {limit} bytes: pin fewer or smaller items"},
                        status_code=413, media_type="application/problem+json")
    rt.catalog.set_pin(flow, node_id, encoded)
    audit(request, principal, "flow.pin", tenant_id=access.tenant_id, target_type="flow", target_id=flow.id,
          details={"name": name, "node": node_id, "items": len(data.items)})
    return Response({"node": node_id, "items": data.items})


@delete("/tenants/{tenant:str}/flows/{name:str}/pins/{node_id:str}", sync_to_thread=True, status_code=204,
        summary="Unpin a node's output", opt={"permission": "flows.write"})
def delete_pin(request: Request, principal: Principal, access: Access, tenant: str, name: str, node_id: str) -> None:
    rt = runtime_of(request)
    flow = rt.catalog.flow(access.tenant_id, name)
    if not rt.catalog.delete_pin(flow, node_id):
        raise NotFound(f"node {node_id!r} of flow {name!r} has no pinned items")
    audit(request, principal, "flow.unpin", tenant_id=access.tenant_id, target_type="flow", target_id=flow.id,
          details={"name": name, "node": node_id})


@post("/tenants/{tenant:str}/executions/{execution_id:str}/continue", sync_to_thread=True, status_code=202,
      summary="Run the next node of a test run paused in step mode", opt={"permission": "flows.write"})
def continue_execution(request: Request, principal: Principal, access: Access, tenant: str,
                       execution_id: str) -> dict:
    try:
        node = runtime_of(request).continue_paused(execution_id, access.tenant_id)
    except LookupError:
        raise NotFound(f"no execution {execution_id!r} in this tenant") from None
    except ValueError as exc:
        raise Conflict(str(exc)) from None
    audit(request, principal, "execution.continue", tenant_id=access.tenant_id, target_type="execution",
          target_id=execution_id, details={"node": node})
    return {"id": execution_id, "status": "queued", "node": node}


@get("/tenants/{tenant:str}/executions/{execution_id:str}/events",
     summary="Live steps and status of an execution (server-sent events; resumes after Last-Event-ID)",
     opt={"permission": "executions.read"},
     responses={200: ResponseSpec(data_container=str, media_type="text/event-stream",
                                  description="`event: step` (id = the step's seq) and `event: execution`")})
async def execution_events(request: Request, principal: Principal, access: Access, tenant: str,
                           execution_id: str) -> ServerSentEvent:
    rt = runtime_of(request)
    found = await asyncio.to_thread(rt.runs.state, execution_id)
    if found is None or found["tenant_id"] != access.tenant_id:
        raise NotFound(f"no execution {execution_id!r} in this tenant")
    last = (request.headers.get("last-event-id") or "").strip()
    after = int(last) if last.isdigit() else -1
    return ServerSentEvent(_events(rt, execution_id, after), headers={"Cache-Control": "no-store",
                                                                      "X-Accel-Buffering": "no"})


async def _events(rt: Runtime, execution_id: str, after: int) -> AsyncIterator[ServerSentEventMessage]:
    """Steps after `after`, then each new one, and the execution's status whenever it changes; ends
    after a final status. Stops when the client goes (Litestar cancels the stream on disconnect)."""
    def look(after: int) -> tuple[Any, list[dict[str, Any]]]:
        return rt.runs.state(execution_id), rt.runs.step_events(execution_id, after)  # state first: see below

    sent: dict[str, Any] | None = None
    last_sent = last_change = time.monotonic()
    while True:
        state, steps = await asyncio.to_thread(look, after)
        if state is None:
            return  # deleted meanwhile (the flow's tenant, or retention)
        now = time.monotonic()
        for step in steps:
            after = step["seq"]
            yield ServerSentEventMessage(data=_json(step), event="step", id=step["seq"])
        status: dict[str, Any] = {"status": state["status"]}
        if state["status"] == "waiting" and state["paused_at"]:
            status["paused_at"] = state["paused_at"]
        if state["error"]:
            status["error"] = json.loads(state["error"])
        changed = bool(steps)
        if status != sent:
            # Read before the steps: a final status was committed with the last steps, all sent above.
            yield ServerSentEventMessage(data=_json(status), event="execution")
            sent, changed = status, True
        if changed:
            last_change = last_sent = now
        if state["status"] in FINAL:
            return
        if now - last_sent >= KEEP_ALIVE_S:
            yield ServerSentEventMessage(data=None, comment="keep-alive")
            last_sent = now
        await asyncio.sleep(POLL_S if now - last_change < QUIET_AFTER_S else QUIET_POLL_S)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _node_ids(doc: dict[str, Any]) -> set[str]:
    return {n.get("id") for n in doc.get("nodes") or () if isinstance(n, dict)}


HANDLERS = [node_types, node_icon, credential_types, start_test_run, list_pins, set_pin, delete_pin, continue_execution,
            execution_events]

__all__ = ["HANDLERS"]
