"""What a node type is: its params, its outputs, and the function that runs it.

Connectors describe node types with `NodeType` and `Param` and register them in a `Registry`;
the engine reads only the registry. A node's `run(ctx, items)` returns the items of its `main`
output as a list, or a dict of output name -> items for nodes with several outputs. It may be a
plain function or a coroutine function.

Connectors also register the `CredentialType`s their nodes use. The vault checks a credential
against its type when it is saved, and hands a node a `Credential` whose type tells the engine
which values are secret, so that they are redacted from everything a run records.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
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
    is_async: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.is_async = self.run is not None and inspect.iscoroutinefunction(self.run)
        if not self.label:
            self.label = self.type.replace("_", " ").capitalize()

    def output_names(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        if callable(self.outputs):
            return tuple(self.outputs(params))
        return self.outputs


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

    def add(self, node_type: NodeType) -> NodeType:
        if node_type.type in self._types:
            raise ValueError(f"node type {node_type.type!r} is registered twice")
        self._types[node_type.type] = node_type
        return node_type

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
        return credential_type

    def credential_type(self, name: str) -> CredentialType | None:
        return self._credential_types.get(name)

    def credential_type_names(self) -> list[str]:
        return sorted(self._credential_types)
