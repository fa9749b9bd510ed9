"""What a node type is: its params, its outputs, and the function that runs it.

Connectors describe node types with `NodeType` and `Param` and register them in a `Registry`;
the engine reads only the registry. A node's `run(ctx, items)` returns the items of its `main`
output as a list, or a dict of output name -> items for nodes with several outputs. It may be a
plain function or a coroutine function.

Connectors also register the `CredentialType`s their nodes use. The vault checks a credential
against its type when it is saved, and hands a node a `Credential` whose type tells the engine
which values are secret, so that they are redacted from everything a run records.

Triggers say how they start a flow with `trigger_kind`:

- "manual", "schedule", "error": started by hand, by the worker's cron, by a failed execution.
- "webhook": the node has a literal `path` param (and may have `method`, default POST), so the
  catalog routes /hooks/{tenant}/{path} to it. `verify(WebhookRequest)` may refuse a request by
  raising `Unverified` (401, no execution); `respond(WebhookRequest)` may answer a handshake
  before any execution (return None to go on).
- "polling": `await poll(PollContext) -> PollResult(items, cursor)` every `interval_s` seconds;
  the worker stores the cursor in the transaction that records the execution of those items.
- "event": `await listen(EventContext)` runs for as long as the flow is active and calls
  `await ctx.emit(items, dedup_key)` for each event.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Param kinds and the JSON types a literal value of that kind may have.
KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "list": (list,),
    "any": (object,),
}


@dataclass(frozen=True)
class Param:
    """One param of a node type."""

    kind: str = "string"
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    #: False for params that must be literal (a webhook's path, a cron expression).
    expression: bool = True
    description: str = ""

    def check(self, value: Any) -> str | None:
        """What is wrong with a literal value, or None."""
        if isinstance(value, str) and "{{" in value and self.expression:
            return None  # checked when evaluated
        types = KINDS[self.kind]
        if self.kind in ("integer", "number") and isinstance(value, bool):
            return f"must be a {self.kind}, got a boolean"
        if not isinstance(value, types):
            return f"must be {_article(self.kind)}, got {_json_type(value)}"
        if self.choices and value not in self.choices:
            return "must be one of " + ", ".join(repr(c) for c in self.choices)
        return None


def _article(kind: str) -> str:
    return {"object": "an object", "integer": "an integer", "list": "a list", "any": "a value"}.get(
        kind, f"a {kind}"
    )


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


Outputs = tuple[str, ...] | Callable[[Mapping[str, Any]], Sequence[str]]

#: How a trigger starts its flow (NodeType.trigger_kind); None for nodes that are not triggers.
TRIGGER_KINDS = ("manual", "webhook", "schedule", "polling", "event", "error")
WEBHOOK_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~/-]{0,199}$")
#: Seconds between two polls of a polling trigger: the default of its `interval_s` param, and the least.
POLL_INTERVAL_S, POLL_INTERVAL_MIN_S = 60, 1


def webhook_path_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with a webhook trigger's `path` (every webhook-kind trigger is checked with this)."""
    path = params.get("path", "")
    if not isinstance(path, str) or not WEBHOOK_PATH.match(path) or "//" in path or path.endswith("/") \
            or ".." in path:
        return [(f"param 'path' {path!r} must be letters, digits and . _ ~ - / (no leading or trailing /), "
                 "for example 'orders/new'")]
    return []


def _poll_interval_problems(params: Mapping[str, Any]) -> list[str]:
    interval = params.get("interval_s", POLL_INTERVAL_S)
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval < POLL_INTERVAL_MIN_S:
        return [f"param 'interval_s' must be at least {POLL_INTERVAL_MIN_S} (seconds between polls), got {interval}"]
    return []


class Unverified(Exception):
    """Raised by a webhook trigger's `verify`: the request is answered 401 with this message and
    starts nothing. Say what failed ("signature does not match"), never a secret."""


@dataclass(frozen=True)
class WebhookRequest:
    """What a webhook trigger's `verify` and `respond` see of a request to /hooks/{tenant}/{path}."""

    body: bytes
    #: Every request header, names in lower case (including Authorization: verify may need it).
    headers: Mapping[str, str]
    query: Mapping[str, str]
    #: The trigger node's literal params.
    params: Mapping[str, Any]
    #: The trigger node's credential, decrypted; None when it names none.
    credential: Credential | None
    #: time.time() when the request arrived (for signatures that carry a timestamp).
    now: float


@dataclass
class PollResult:
    """What one poll found: the items for one execution (none: no execution) and the cursor to keep."""

    items: list[dict]
    cursor: Any = None


@dataclass
class PollContext:
    """What a polling trigger's `poll` receives. `cursor` is the JSON value the previous successful
    poll returned (None the first time); it is stored only with the execution of that poll's items."""

    params: Mapping[str, Any]
    credential: Credential | None
    cursor: Any
    tenant_id: str
    flow_id: str
    log: logging.Logger
    #: The runtime (the engine's Services port), e.g. for connectors.sdk.auth to keep refreshed tokens.
    services: Any = None
    #: The name of the trigger node's credential, if it names one.
    credential_name: str | None = None


@dataclass
class EventContext:
    """What an event trigger's `listen` receives. `emit(items, dedup_key)` durably queues one
    execution with those items; an event emitted again with the same dedup key starts nothing."""

    params: Mapping[str, Any]
    credential: Credential | None
    tenant_id: str
    flow_id: str
    log: logging.Logger
    emitter: Callable[[list[dict], str | None], Awaitable[Any]] | None = None
    services: Any = None
    credential_name: str | None = None

    async def emit(self, items: list[dict], dedup_key: str | None = None) -> Any:
        if self.emitter is None:
            raise RuntimeError("this event context cannot emit (it is not run by the worker)")
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise TypeError("emit() takes a list of items (objects)")
        return await self.emitter(items, dedup_key)


@dataclass
class NodeType:
    """A kind of node: `type` is the name used in flow JSON."""

    type: str
    run: Callable[..., Any] | None
    params: dict[str, Param] = field(default_factory=dict)
    #: Output names, or a function of the node's literal params that returns them (switch).
    outputs: Outputs = ("main",)
    #: Trigger nodes start a flow; a flow has exactly one.
    trigger: bool = False
    #: A pure node only computes items from items (no effect outside the run), so running it again
    #: after a crash changes nothing: its step is committed with the next commit instead of before
    #: its successors start. Leave False for anything that talks to the outside world.
    pure: bool = False
    #: Nodes that take several inputs receive them separately (`ctx.inputs`).
    multi_input: bool = False
    #: A check of the literal params beyond their kinds; returns error messages.
    validate: Callable[[Mapping[str, Any]], list[str]] | None = None
    description: str = ""
    #: What the console's node palette shows: a name for people (default: from `type`) and its group.
    label: str = ""
    category: str = "Core"
    #: For outputs given as a function: the param whose value names them (switch: "rules").
    outputs_from: str | None = None
    #: The node authenticates with a credential (`"credential": name` in flow JSON).
    credential: bool = False
    #: File name of a local SVG under connectors/icons/ (no network), shown in the palette.
    icon: str = ""
    #: The credential types the node accepts (sets `credential`).
    credential_types: tuple[str, ...] = ()
    #: For triggers, how they start a flow: one of TRIGGER_KINDS (sets `trigger`); None for actions.
    trigger_kind: str | None = None
    #: Webhook triggers: refuse a request by raising Unverified (e.g. a bad signature).
    verify: Callable[[WebhookRequest], None] | None = None
    #: Webhook triggers: answer a handshake before any execution: (status, headers, body), or None to go on.
    respond: Callable[[WebhookRequest], tuple[int, dict, Any] | None] | None = None
    #: Polling triggers: one poll.
    poll: Callable[[PollContext], Awaitable[PollResult]] | None = None
    #: Event triggers: the long-running listener.
    listen: Callable[[EventContext], Awaitable[None]] | None = None
    is_async: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.is_async = self.run is not None and inspect.iscoroutinefunction(self.run)
        if not self.label:
            self.label = self.type.replace("_", " ").capitalize()
        self.credential_types = tuple(self.credential_types)
        if self.credential_types:
            self.credential = True
        if self.trigger_kind is not None:
            if self.trigger_kind not in TRIGGER_KINDS:
                raise ValueError(f"node type {self.type!r}: trigger_kind must be one of {', '.join(TRIGGER_KINDS)}, "
                                 f"got {self.trigger_kind!r}")
            self.trigger = True
        elif self.trigger:
            self.trigger_kind = "manual"
        self._check_trigger()

    def _check_trigger(self) -> None:
        """Complete and check what each trigger kind needs, so a connector's mistake shows when it
        registers, not when a flow first runs."""
        kind = self.trigger_kind
        if self.trigger and self.run is None:
            self.run = _passthrough
            self.pure = True
        if kind == "webhook":
            if "path" not in self.params:
                raise ValueError(f"webhook trigger {self.type!r} needs a literal 'path' param (as the core webhook)")
            self.validate = _also(self.validate, webhook_path_problems)
        elif kind == "polling":
            if self.poll is None:
                raise ValueError(f"polling trigger {self.type!r} needs poll=")
            if "interval_s" not in self.params:
                self.params = {**self.params, "interval_s": Param(
                    "number", default=POLL_INTERVAL_S, expression=False,
                    description=f"seconds between polls (at least {POLL_INTERVAL_MIN_S})")}
            self.validate = _also(self.validate, _poll_interval_problems)
        elif kind == "event" and self.listen is None:
            raise ValueError(f"event trigger {self.type!r} needs listen=")

    def output_names(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        if callable(self.outputs):
            return tuple(self.outputs(params))
        return self.outputs


def _passthrough(ctx: Any, items: list[dict]) -> list[dict]:
    """A trigger's run: its items are what started the flow."""
    return items


def _also(validate: Callable[[Mapping[str, Any]], list[str]] | None,
          check: Callable[[Mapping[str, Any]], list[str]]) -> Callable[[Mapping[str, Any]], list[str]]:
    """`validate` followed by `check`, each message once (a node may already run the same check)."""
    if validate is None or validate is check or getattr(validate, "_checks", ()).__contains__(check):
        return validate or check

    def both(params: Mapping[str, Any]) -> list[str]:
        return list(dict.fromkeys([*validate(params), *check(params)]))
    both._checks = (*getattr(validate, "_checks", ()), check)  # type: ignore[attr-defined]
    return both


@dataclass(frozen=True)
class Field:
    """One field of a credential type. A secret field is write-only: its value is shown to nobody
    after it is saved and is redacted from whatever a run records."""

    label: str = ""
    secret: bool = True
    required: bool = True


@dataclass(frozen=True)
class CredentialType:
    """A kind of credential: `name` is what `flowfuse credentials set --type` and the API accept."""

    name: str
    fields: dict[str, Field] = field(default_factory=dict)
    #: How fields not named in `fields` are treated; None refuses them (`generic` takes any, all secret).
    other: Field | None = None
    #: The other forms the secrets travel in, to redact them too (a Basic auth header's base64).
    derived: Callable[[Mapping[str, Any]], list[str]] | None = None
    description: str = ""

    def field_spec(self, name: str) -> Field | None:
        return self.fields.get(name, self.other)

    def problems(self, data: Mapping[str, Any]) -> list[str]:
        """What is wrong with the fields of a credential of this type, each message naming its field."""
        known = ", ".join(self.fields) or "none"
        found = []
        for name, value in data.items():
            if name == "type":
                found.append("'type' cannot be a field: it is the credential's type")
            elif self.field_spec(name) is None:
                found.append(f"a {self.name} credential has no field {name!r} (its fields: {known})")
            elif not isinstance(value, str):
                found.append(f"field {name!r} must be a string, got {_json_type(value)}")
        found += [f"field {name!r} is required for a {self.name} credential"
                  for name, spec in self.fields.items() if spec.required and not data.get(name)]
        return found


class Credential(dict):
    """A decrypted credential as a node receives it (`ctx.credential`): its fields and "type".

    `spec` is its registered type, so the engine knows which values to redact without knowing
    any type by name. A field the type does not declare counts as secret.
    """

    __slots__ = ("spec",)

    def __init__(self, spec: CredentialType, fields: Mapping[str, Any]):
        super().__init__(fields, type=spec.name)
        self.spec = spec

    def secrets(self) -> list[str]:
        """The values to keep out of every record, in each form they travel in."""
        found = [value for name, value in self.items() if name != "type"
                 and ((spec := self.spec.field_spec(name)) is None or spec.secret)]
        return found + (self.spec.derived(self) if self.spec.derived else [])


class Registry:
    """Every node type the engine can run, and every credential type their nodes use, by name."""

    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}
        self._credential_types: dict[str, CredentialType] = {}
        #: Where the types registered next come from ("builtin:http", "plugin:/data/plugins/x.py"...).
        self.source = "builtin"
        #: Node type and credential type name -> the source that registered it.
        self.sources: dict[str, str] = {}
        self.credential_sources: dict[str, str] = {}
        #: Connectors that failed to load or register: [{"source", "error"}] (see connectors.discover).
        self.broken: list[dict[str, str]] = []

    def add(self, node_type: NodeType) -> NodeType:
        if node_type.type in self._types:
            raise ValueError(f"node type {node_type.type!r} is registered twice")
        self._types[node_type.type] = node_type
        self.sources[node_type.type] = self.source
        return node_type

    def discard(self, names: Sequence[str] = (), credential_types: Sequence[str] = ()) -> None:
        """Take node types and credential types out again (what a connector that failed half-way added)."""
        for name in names:
            self._types.pop(name, None)
            self.sources.pop(name, None)
        for name in credential_types:
            self._credential_types.pop(name, None)
            self.credential_sources.pop(name, None)

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)

    def add_credential_type(self, credential_type: CredentialType) -> CredentialType:
        if credential_type.name in self._credential_types:
            raise ValueError(f"credential type {credential_type.name!r} is registered twice")
        self._credential_types[credential_type.name] = credential_type
        self.credential_sources[credential_type.name] = self.source
        return credential_type

    def credential_type(self, name: str) -> CredentialType | None:
        return self._credential_types.get(name)

    def credential_type_names(self) -> list[str]:
        return sorted(self._credential_types)
