"""The executor: runs a compiled flow, committing each node's output before its successors run.

A run is deterministic given the committed steps, so resuming is replaying: `Executor.run`
walks the flow in its fixed order and, for every node that already has a committed successful
step, takes that step's output instead of running the node again. A node that was in flight
when the process died has no committed step and runs again with the same attempt number, hence
the same idempotency key `execution:node:attempt`.

Steps are committed lazily: a finished step is buffered and flushed just before the next node
that has effects outside the run starts (an HTTP request, a sub-flow, a wait), or together with
the execution's final status. Steps of pure nodes (set, if, merge, ...) ride along with that
commit: after a crash they simply run again, which nobody can observe. So a completed step with
effects never runs twice, and a webhook -> set -> respond run costs one commit, not four.
`Limits.checkpoint_every_step` commits before every node instead. With the store's group commit
each flush is shared by every run that reached a commit point at the same moment.

Debugging (test runs from the console) uses the same replay: a node with pinned items, or an
ancestor of a partial run's first node (`Run.given`), is recorded as a succeeded step with that
output and an `origin` instead of running; once recorded it replays like any other step. In step
mode the run parks (status waiting, `Finish.paused_at` = the next node to run) before each node
once a node has run, so `continue` (a resume) runs exactly one more node.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .expressions import ExpressionError
from .flow import Flow, Node
from .nodes import Credential
from .ports import (
    CANCELLED, FAILED, RETRY, SUCCEEDED, WAITING, ExecutionRef, ExecutionStore, Finish, Services, StepRecord,
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
#: Decodes a step's encoded outputs and checks their shape in the same pass ({output: [object, ...]}).
_decode_outputs = msgspec.json.Decoder(dict[str, list[dict]]).decode


class NodeError(Exception):
    """A node failed in a way its author describes; the message is shown to the user."""


class StopExecution(NodeError):
    """Raised by stop_and_error: fails the execution at once, without retries."""


@dataclass
class Wait:
    """Returned by a node to pause the execution until a time or until its resume URL is called."""

    until: float | None = None
    webhook: bool = False


@dataclass
class Outcome:
    status: str
    output: list[dict] = field(default_factory=list)
    error: dict[str, Any] | None = None
    resume_at: float | None = None
    #: Set by respond_to_webhook: {"status", "headers", "body"}.
    response: dict[str, Any] | None = None
    steps: list[StepRecord] = field(default_factory=list)
    #: Step mode: the node the run parked before.
    paused_at: str | None = None


@dataclass
class Run:
    """One execution to run or resume."""

    ref: ExecutionRef
    flow: Flow
    trigger_items: list[dict]
    started_at: float
    trigger: str = "manual"
    #: Steps committed by earlier runs of this execution (for resuming).
    steps: list[StepRecord] = field(default_factory=list)
    #: Items posted to the resume URL of a waiting node, by step key.
    resume_items: dict[str, list[dict]] = field(default_factory=dict)
    vars: Mapping[str, Any] = field(default_factory=dict)
    #: What started it, e.g. {"request": {method, path, query, headers}} for a webhook.
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Set by whoever cancels the run before cancelling its task.
    cancel_requested: bool = False
    #: Test runs only. Pinned items by node id: such a node does not run, its first output gets them.
    pins: Mapping[str, list[dict]] = field(default_factory=dict)
    #: Partial runs: node id -> (origin, outputs, input count) of nodes that do not run but whose
    #: output the nodes that run need; recorded as they are reached, whatever their inputs.
    given: Mapping[str, tuple[str, dict[str, list[dict]], int]] = field(default_factory=dict)
    #: Nodes that neither run nor are given (a partial run's nodes off its path).
    skip: frozenset[str] = frozenset()
    #: Park before each node once one node has run (see the module docstring).
    step_mode: bool = False
    #: Commit every step before the next node starts (test runs stream their steps).
    checkpoint_every_step: bool = False


@dataclass
class Limits:
    #: Waits and back-offs up to this long are slept in the event loop; longer ones park the run.
    inline_wait_max_s: float = 5.0
    #: Largest output of one step that is stored whole (bytes of JSON).
    max_step_output_bytes: int = 4 * 1024 * 1024
    #: Commit after every step, not only before steps with effects (see the module docstring).
    checkpoint_every_step: bool = False


class _Park(Exception):
    def __init__(self, resume_at: float | None, paused_at: str | None = None):
        self.resume_at, self.paused_at = resume_at, paused_at


class _Failed(Exception):
    def __init__(self, node: str, message: str):
        self.node, self.message = node, message


class _TimedOut(Exception):
    pass


class NodeContext:
    """What a node's `run` receives besides its items."""

    __slots__ = ("node", "items", "inputs", "run", "attempt", "key", "credential", "services",
                 "_state", "execution")

    def __init__(self, node: Node, items: list[dict], inputs: list[list[dict]], state: "_State",
                 attempt: int, key: str, credential: dict | None):
        self.node, self.items, self.inputs = node, items, inputs
        self.run, self.attempt, self.key, self.credential = state.run, attempt, key, credential
        self.services = state.services
        self.execution = state.execution_info
        self._state = state

    @property
    def idempotency_key(self) -> str:
        return f"{self.run.ref.id}:{self.key}:{self.attempt}"

    def scope(self, item: dict | None) -> dict[str, Any]:
        return {"json": item if item is not None else {}, "items": self.items,
                "nodes": self._state.nodes_view, "vars": self.run.vars, "execution": self.execution}

    def param(self, name: str, item: dict | None = None) -> Any:
        """The param's value for one item (expressions evaluated, type checked)."""
        compiled = self.node.params[name]
        if not compiled.is_dynamic:
            return compiled.source
        value = compiled.evaluate(self.scope(item))
        spec = self.node.spec.params[name]
        if value is not None:
            problem = spec.check(value)
            if problem:
                raise NodeError(f"param {name!r} {problem} (from {compiled.source!r})")
        return value

    def params(self, item: dict | None = None) -> dict[str, Any]:
        return {name: self.param(name, item) for name in self.node.params}

    def respond(self, status: int, headers: dict[str, str], body: Any) -> None:
        self._state.response = {"status": status, "headers": headers, "body": body}


class _NodesView(Mapping):
    """`nodes["id"]` in expressions: {"json": first item, "items": [...]} of a node's main output."""

    def __init__(self, outputs: dict[str, dict[str, list[dict]]]):
        self._outputs = outputs

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key not in self._outputs:
            raise KeyError(key)
        items = self._outputs[key].get("main") or next(iter(self._outputs[key].values()), [])
        return {"json": items[0] if items else {}, "items": items}

    def __iter__(self):
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)


class _ExecutionInfo(Mapping):
    """`execution` in expressions; resume_url is only worked out when something reads it."""

    _KEYS = ("id", "started_at", "trigger", "flow", "request", "resume_url")

    def __init__(self, run: Run, services: Services | None):
        self._run, self._services = run, services

    def __getitem__(self, key: str) -> Any:
        run = self._run
        if key == "id":
            return run.ref.id
        if key == "started_at":
            return run.started_at
        if key == "trigger":
            return run.trigger
        if key == "flow":
            return run.flow.name
        if key == "request":
            return run.meta.get("request")
        if key == "resume_url":
            return self._services.resume_url(run.ref) if self._services else None
        raise KeyError(key)

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


class _State:
    def __init__(self, run: Run, services: Services | None):
        self.run = run
        self.services = services
        self.outputs: dict[str, dict[str, list[dict]]] = {}
        self.nodes_view = _NodesView(self.outputs)
        self.pending: list[StepRecord] = []
        self.done: dict[str, StepRecord] = {}
        self.response: dict[str, Any] | None = None
        self.order: dict[str, None] = {}  # keys of steps that ran or were replayed, in order
        #: Attempts used before the latest retry of a node (its attempts count from there).
        self.retried: dict[str, int] = {}
        for step in run.steps:  # in commit order: the latest record of a key wins
            self.done[step.key] = step
            if step.status == RETRY:
                self.retried[step.key] = step.attempt
        self.next_seq = run.steps[-1].seq + 1 if run.steps else 0
        #: A node ran (not replayed, pinned or given) in this invocation: step mode parks before the next.
        self.ran = False
        timeout = run.flow.timeout_s
        self.deadline = run.started_at + timeout if timeout else math.inf
        self.execution_info = _ExecutionInfo(run, services)


#: The id of the execution this task is running, None outside one (log records carry it: appliance.logs).
current_execution: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowfuse_execution", default=None)

#: A tracer of runs and steps: `hook(run, ctx)` returns a context manager entered around each
#: invocation of a run (ctx None) and around each attempt of a node (its NodeContext: node, attempt,
#: credential); a failed attempt leaves it with the node's exception. None (the default) costs nothing.
StepHook = Callable[[Run, "NodeContext | None"], AbstractContextManager]
#: Told of each attempt of a node that ran, as it is recorded: `observer((node_type, "ok" | "error",
#: seconds))`, one tuple so that a C function such as a deque's append can take it with no Python frame
#: (step duration metrics; a StepHook would cost a context manager per step).
StepObserver = Callable[[tuple[str, str, float]], None]


class Executor:
    #: Process-wide defaults, set as staticmethods (appliance.telemetry does in web and worker).
    step_hook: StepHook | None = None
    step_observer: StepObserver | None = None

    def __init__(self, store: ExecutionStore, services: Services | None = None, limits: Limits | None = None,
                 step_hook: StepHook | None = None):
        self.store = store
        self.services = services
        self.limits = limits or Limits()
        if step_hook is not None:
            self.step_hook = step_hook

    async def run(self, run: Run) -> Outcome:
        """Run (or resume) an execution to its end or until it parks; commits as it goes."""
        token = current_execution.set(run.ref.id)
        try:
            hook = self.step_hook
            if hook is None:
                return await self._run(run)
            with hook(run, None):
                return await self._run(run)
        finally:
            current_execution.reset(token)

    async def _run(self, run: Run) -> Outcome:
        state = _State(run, self.services)
        try:
            await self._run_nodes(state, run.flow.order, owner=None, scope="")
        except _Park as park:
            return await self._finish(state, Outcome(WAITING, resume_at=park.resume_at, paused_at=park.paused_at))
        except _Failed as failed:
            error = {"node": failed.node, "message": failed.message}
            return await self._finish(state, Outcome(FAILED, error=error))
        except asyncio.CancelledError:
            if not run.cancel_requested:
                raise  # the process is stopping: leave the execution to be resumed
            return await asyncio.shield(self._finish(state, Outcome(CANCELLED, error={"node": None, "message": "cancelled"})))
        output = [item for nid in run.flow.order
                  if (node := run.flow.nodes[nid]).is_leaf and node.loop_owner is None and nid in state.outputs
                  for items in state.outputs[nid].values() for item in items]
        return await self._finish(state, Outcome(SUCCEEDED, output=output))

    async def _finish(self, state: _State, outcome: Outcome) -> Outcome:
        outcome.response = state.response
        output_json = _encode(outcome.output) if outcome.status == SUCCEEDED else None
        finish = Finish(outcome.status, output_json, outcome.error, outcome.resume_at, outcome.paused_at)
        steps, state.pending = state.pending, []
        await self.store.commit(state.run.ref, steps, finish)
        outcome.steps = [state.done[k] for k in state.order if k in state.done]
        return outcome

    def _flush(self, state: _State) -> Awaitable[None]:
        """Commit the steps recorded since the last commit; call only when there are some.

        (It returns the store's awaitable rather than being a coroutine itself: a step of a long
        flow then resumes one frame fewer.)"""
        steps, state.pending = state.pending, []
        return self.store.commit(state.run.ref, steps, None)

    def _record(self, state: _State, step: StepRecord) -> None:
        step.seq = state.next_seq
        state.next_seq += 1
        state.pending.append(step)
        state.done[step.key] = step
        state.order[step.key] = None
        observer = self.step_observer
        if observer is not None and step.origin is None and step.status != RETRY:
            observer((state.run.flow.nodes[step.node].type, "error" if step.status == FAILED else "ok",
                      step.ended_at - step.started_at))

    async def _run_nodes(self, state: _State, order: list[str], owner: str | None, scope: str) -> None:
        flow = state.run.flow
        run = state.run
        for nid in order:
            node = flow.nodes[nid]
            if node.loop_owner != owner or nid in run.skip:
                continue
            if nid in run.given:
                origin, outputs, count = run.given[nid]
                state.outputs[nid] = self._record_given(state, node, scope, origin, outputs, count)
                continue
            if node is flow.trigger:
                inputs = [state.run.trigger_items]  # runs (and is recorded) even when it got no items
            else:
                if len(node.inputs) == 1:  # most nodes: no list comprehension (a frame of its own) per step
                    src, out = node.inputs[0]
                    inputs = [state.outputs.get(src, {}).get(out, [])]
                else:
                    inputs = [state.outputs.get(src, {}).get(out, []) for src, out in node.inputs]
                if not any(inputs):
                    state.outputs.pop(nid, None)
                    continue  # a branch that receives no items stops here
            items = inputs[0] if len(inputs) == 1 else [i for part in inputs for i in part]
            if nid in run.pins:
                state.outputs[nid] = self._record_given(state, node, scope, "pinned",
                                                        pinned_outputs(node, run.pins[nid]), len(items))
            elif node.body:
                await self._run_loop(state, node, items, scope)
            else:
                state.outputs[nid] = await self._run_step(state, node, items, inputs, scope)

    def _record_given(self, state: _State, node: Node, scope: str, origin: str, outputs: dict[str, list[dict]],
                      input_count: int) -> dict[str, list[dict]]:
        """A node that does not run: its step is recorded with the given output (or replayed, if it was)."""
        key = scope + node.id
        prev = state.done.get(key)
        if prev is not None and prev.status == SUCCEEDED and not prev.truncated:
            state.order[key] = None
            return _decode(prev.outputs_json)
        now = time.time()
        encoded = _encode(outputs)
        self._record(state, StepRecord(key, node.id, 1, SUCCEEDED, input_count, now, now, outputs_json=encoded,
                                       origin=origin))
        return _decode(encoded)

    async def _run_loop(self, state: _State, node: Node, items: list[dict], scope: str) -> None:
        finished = state.done.get(scope + node.id)
        if finished is not None and finished.status == SUCCEEDED and not finished.truncated:
            state.outputs[node.id] = await self._run_step(state, node, items, [items], scope)
            return  # the whole loop was committed before: no need to walk its body again
        ctx = NodeContext(node, items, [items], state, 1, scope + node.id, None)
        try:
            size = ctx.param("size", items[0] if items else None)
        except (ExpressionError, NodeError) as exc:  # fails the node like any other param error
            raise _Failed(node.id, str(exc)) from None
        if not isinstance(size, int) or size < 1:
            raise _Failed(node.id, f"size must be a whole number of at least 1, got {size!r}")
        returned: list[dict] = []
        for i in range(0, len(items), size):
            state.outputs[node.id] = {"loop": items[i:i + size]}
            for member in node.body:
                state.outputs.pop(member, None)
            await self._run_nodes(state, node.body, owner=node.id, scope=f"{scope}{node.id}#{i // size}/")
            for src, out in node.loop_returns:
                returned.extend(state.outputs.get(src, {}).get(out, []))
        done = returned if node.loop_returns else items
        state.outputs[node.id] = await self._run_step(state, node, done, [done], scope, result={"done": done})

    async def _run_step(self, state: _State, node: Node, items: list[dict], inputs: list[list[dict]],
                        scope: str, result: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
        key = scope + node.id
        prev = state.done.get(key)
        attempt = 1
        if prev is not None:
            if prev.status == SUCCEEDED and not prev.truncated:
                state.order[key] = None
                return _decode(prev.outputs_json)
            if prev.status == WAITING:
                return await self._resume_wait(state, node, items, key, prev)
            if prev.status == FAILED:
                if prev.attempt - state.retried.get(key, 0) >= node.retry.max_attempts:
                    raise _Failed(node.id, prev.error or "failed")
                if prev.resume_at and prev.resume_at > time.time():
                    raise _Park(prev.resume_at)
                attempt = prev.attempt + 1
            elif prev.status == RETRY:
                attempt = prev.attempt + 1  # a new attempt number: a new idempotency key
            else:
                attempt = prev.attempt
        if result is None and state.run.step_mode:
            if state.ran:
                raise _Park(None, paused_at=node.id)  # the steps so far are committed with the park
            state.ran = True
        if state.pending and (not node.spec.pure or self.limits.checkpoint_every_step
                              or state.run.checkpoint_every_step):
            await self._flush(state)  # what came before is durable before this node acts on the world
        credential = self._credential(state, node) if node.credential else None
        while True:
            if state.run.cancel_requested:
                raise asyncio.CancelledError
            started = time.time()
            try:
                if result is not None:
                    outputs: Any = result
                else:
                    ctx = NodeContext(node, items, inputs, state, attempt, key, credential)
                    hook = self.step_hook
                    if hook is None:
                        outputs = self._call(state, node, ctx, started)
                        if node.spec.is_async:
                            outputs = await outputs
                    else:
                        with hook(state.run, ctx):
                            outputs = self._call(state, node, ctx, started)
                            if node.spec.is_async:
                                outputs = await outputs
                if isinstance(outputs, Wait):
                    return await self._wait(state, node, items, key, attempt, started, outputs)
                return self._succeed(state, node, key, attempt, len(items), started, outputs, credential)
            except (_Failed, _Park):
                raise
            except (_TimedOut, StopExecution) as exc:
                self._record(state, StepRecord(key, node.id, attempt, FAILED, len(items), started, time.time(),
                                               error=str(exc)))
                raise _Failed(node.id, str(exc)) from None
            except Exception as exc:  # the node failed: retry, route or fail the run
                message = redact_text(_describe(exc), credential) if credential else _describe(exc)
                ended = time.time()
                if attempt - state.retried.get(key, 0) < node.retry.max_attempts:
                    delay = backoff_delay(node.retry.backoff_s, node.retry.max_backoff_s, attempt)
                    if delay > self.limits.inline_wait_max_s:
                        self._record(state, StepRecord(key, node.id, attempt, FAILED, len(items), started, ended,
                                                       error=message, resume_at=ended + delay))
                        raise _Park(ended + delay) from None
                    self._record(state, StepRecord(key, node.id, attempt, FAILED, len(items), started, ended,
                                                   error=message))
                    await self._flush(state)  # the failed attempt was just recorded
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                if node.on_error == "fail":
                    self._record(state, StepRecord(key, node.id, attempt, FAILED, len(items), started, ended,
                                                   error=message))
                    raise _Failed(node.id, message) from None
                routed = ({"main": items} if node.on_error == "continue" else
                          {"error": [{**item, "error": {"node": node.id, "message": message}} for item in items]
                           or [{"error": {"node": node.id, "message": message}}]})
                return self._succeed(state, node, key, attempt, len(items), started, routed, credential,
                                     error=message)

    def _call(self, state: _State, node: Node, ctx: NodeContext, now: float) -> Any:
        """Run a node: a plain node's outputs, or for an async node a coroutine to await (a plain
        node, most steps, then costs no coroutine)."""
        remaining = state.deadline - now
        if remaining <= 0:
            raise _TimedOut(f"the execution timed out after {state.run.flow.timeout_s} s")
        if not node.spec.is_async:
            return node.spec.run(ctx, ctx.items)
        return self._call_async(state, node, ctx, remaining)

    async def _call_async(self, state: _State, node: Node, ctx: NodeContext, remaining: float) -> Any:
        timeout = node.timeout_s
        limit = min(timeout or math.inf, remaining)
        if limit == math.inf:
            return await node.spec.run(ctx, ctx.items)
        try:
            return await asyncio.wait_for(node.spec.run(ctx, ctx.items), limit)
        except asyncio.TimeoutError:
            if timeout and timeout <= remaining:
                raise NodeError(f"timed out after {timeout} s") from None
            raise _TimedOut(f"the execution timed out after {state.run.flow.timeout_s} s") from None

    def _credential(self, state: _State, node: Node) -> dict | None:
        if not node.credential:
            return None
        if self.services is None:
            raise _Failed(node.id, f"credential {node.credential!r} is not available without a data directory "
                                    "(pass --data-dir to `flowfuse run`)")
        try:
            return self.services.credential(state.run.ref.tenant_id, node.credential)
        except LookupError as exc:
            raise _Failed(node.id, str(exc).strip("'\"")) from None

    def _succeed(self, state: _State, node: Node, key: str, attempt: int, input_count: int, started: float,
                 outputs: Any, credential: dict | None, error: str | None = None) -> dict[str, list[dict]]:
        if isinstance(outputs, list):
            outputs = {"main": outputs}
        try:
            encoded = _encode(outputs)
            checked = _decode_outputs(encoded)  # what later nodes see is exactly what a replay would see
        except (TypeError, msgspec.EncodeError) as exc:
            raise NodeError(f"produced a value that is not JSON: {exc}") from None
        except msgspec.ValidationError:
            raise NodeError(_shape_problem(node, outputs)) from None
        if credential:
            encoded = redact(encoded, credential)
            checked = _decode(encoded)
        truncated = len(encoded) > self.limits.max_step_output_bytes
        stored = encoded
        if truncated:
            stored = _encode({"_truncated": {"bytes": len(encoded), "limit": self.limits.max_step_output_bytes}})
        self._record(state, StepRecord(key, node.id, attempt, SUCCEEDED, input_count, started, time.time(),
                                       outputs_json=stored, error=error, truncated=truncated))
        return checked

    async def _wait(self, state: _State, node: Node, items: list[dict], key: str, attempt: int, started: float,
                    wait: Wait) -> dict[str, list[dict]]:
        now = time.time()
        if not wait.webhook:
            until = wait.until or now
            if until - now <= self.limits.inline_wait_max_s:
                await asyncio.sleep(max(0.0, until - now))
                return self._succeed(state, node, key, attempt, len(items), started, {"main": items}, None)
        self._record(state, StepRecord(key, node.id, attempt, WAITING, len(items), started, now,
                                       outputs_json=_encode({"main": items}), resume_at=wait.until))
        raise _Park(wait.until)

    async def _resume_wait(self, state: _State, node: Node, items: list[dict], key: str,
                           prev: StepRecord) -> dict[str, list[dict]]:
        posted = state.run.resume_items.get(key)
        if posted is None:
            if prev.resume_at is None or prev.resume_at > time.time() + 0.001:
                raise _Park(prev.resume_at)
            posted = items
        if state.pending:
            await self._flush(state)
        return self._succeed(state, node, key, prev.attempt, prev.input_count, prev.started_at,
                             {"main": posted}, None)


def _shape_problem(node: Node, outputs: Any) -> str:
    """What is wrong with outputs that are not {output name: [object, ...]}."""
    if not isinstance(outputs, dict):
        return f"{node.type} returned {type(outputs).__name__}; expected a list of items"
    for items in outputs.values():
        if not isinstance(items, list):
            return f"{node.type} returned {type(items).__name__}; expected a list of items"
        for item in items:
            if not isinstance(item, dict):
                return f"produced an item that is not an object: {str(item)[:80]!r}"
    return f"{node.type} returned outputs of the wrong shape"


def pinned_outputs(node: Node, items: list[dict]) -> dict[str, list[dict]]:
    """Pinned items go out on the node's first output ('done' for a loop: its body does not run)."""
    name = "done" if node.body else node.spec.output_names(node.raw_params)[0]
    return {name: items}


def backoff_delay(base: float, cap: float, attempt: int) -> float:
    """Exponential back-off with 'equal jitter': half fixed, half random, never above the cap."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def secret_values(credential: Mapping[str, Any]) -> list[str]:
    """The strings to redact. A `Credential`'s registered type says which fields are secret and
    the forms they travel in; of any other mapping (a Services that is not the vault) every value
    but "type" counts as secret. Values under 4 characters would redact ordinary text at random."""
    values = credential.secrets() if isinstance(credential, Credential) else \
        [v for k, v in credential.items() if k != "type"]
    return [v for v in values if isinstance(v, str) and len(v) >= 4]


def redact(encoded: bytes, credential: Mapping[str, Any]) -> bytes:
    """Replace every secret value of a credential found in a node's output JSON."""
    for value in secret_values(credential):
        needle = _encode(value)[1:-1]
        if needle in encoded:
            encoded = encoded.replace(needle, b"[redacted]")
    return encoded


def redact_text(text: str, credential: Mapping[str, Any]) -> str:
    """Replace every secret value of a credential found in an error message."""
    for value in secret_values(credential):
        text = text.replace(value, "[redacted]")
    return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (NodeError, ExpressionError)):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
