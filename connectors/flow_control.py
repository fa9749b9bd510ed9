"""Nodes that steer the run itself: split_in_batches (loops), wait, execute_flow."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from .sdk import NodeContext, NodeError, NodeType, Param, Registry, Wait

WAIT_MODES = ("seconds", "until", "resume")


def _validate_wait(params: Mapping[str, Any]) -> list[str]:
    given = [m for m in WAIT_MODES if params.get(m) is not None]
    if len(given) != 1:
        return ["give exactly one of 'seconds', 'until' (an ISO date-time) or 'resume': 'webhook'"]
    return []


def parse_until(value: Any) -> float:
    """An ISO 8601 date-time (UTC when it names no zone) as epoch seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise NodeError(f"'until' must be an ISO date-time such as 2030-01-31T09:00:00Z, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _wait(ctx: NodeContext, items: list[dict]) -> Wait:
    first = items[0] if items else None
    if ctx.param("resume") is not None:
        if ctx.services is None or ctx.execution.get("resume_url") is None:
            raise NodeError("waiting for the resume URL needs the server; run this flow with `flowfuse serve`")
        return Wait(webhook=True)
    seconds = ctx.param("seconds", first)
    if seconds is not None:
        if seconds < 0:
            raise NodeError(f"seconds must be 0 or more, got {seconds}")
        return Wait(until=time.time() + seconds)
    return Wait(until=parse_until(ctx.param("until", first)))


async def _execute_flow(ctx: NodeContext, items: list[dict]) -> list[dict]:
    name = ctx.param("flow", items[0] if items else None)
    given = ctx.param("input", items[0] if items else None)
    payload = items if given is None else given
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list) or not all(isinstance(i, dict) for i in payload):
        raise NodeError("input must be an object or a list of objects")
    runner = getattr(ctx.services, "run_subflow", None)
    if runner is None:
        raise NodeError("calling another flow needs a data directory with that flow: import it and pass "
                        "--data-dir to `flowfuse run`")
    return await runner(ctx.run.ref, name, payload, ctx.idempotency_key)


def register(registry: Registry) -> None:
    registry.add(NodeType("split_in_batches", None, pure=True, outputs=("loop", "done"), category="Flow control",
                          params={
        "size": Param("integer", default=10, description="items per batch"),
    }, description="Runs the nodes on its 'loop' output once per batch; 'done' gets what they returned."))
    registry.add(NodeType("wait", _wait, validate=_validate_wait, category="Flow control", params={
        "seconds": Param("number"),
        "until": Param("string", description="ISO date-time"),
        "resume": Param("string", choices=("webhook",), expression=False,
                        description="'webhook': wait until execution.resume_url is called"),
    }, description="Pauses the execution; long waits are parked in the queue, not slept."))
    registry.add(NodeType("execute_flow", _execute_flow, category="Flow control", params={
        "flow": Param("string", required=True, description="name of the flow to call"),
        "input": Param("any", description="items for the called flow (default: this node's items)"),
    }, description="Runs another flow with these items and outputs that flow's result."))
