"""Run a flow with your connector through the real engine, for a connector's own tests.

    from connectors.sdk.testing import run_flow

    outcome = run_flow({"name": "t", "nodes": [{"id": "start", "type": "manual"},
                                               {"id": "hello", "type": "hello", "params": {"name": "Ada"}}],
                        "edges": [{"from": "start", "to": "hello"}]},
                       [{}], connectors=[my_connector], credentials={"api": ("api_key", {"key": "k"})})
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == [{"greeting": "hello Ada"}]

The registry is the installation's (`connectors.default_registry()`) plus the given connector
modules (or `register` functions); steps are kept in memory; credentials are checked against
their registered type, as the vault does when one is saved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from engine import ExecutionRef, Executor, Limits, MemoryStore, Outcome, Run, compile_flow
from engine.nodes import Credential, Registry


class _Services:
    def __init__(self, credentials: dict[str, Credential]):
        self._credentials = credentials

    def credential(self, tenant_id: str, name: str) -> Credential:
        if name not in self._credentials:
            raise LookupError(f"credential {name!r} does not exist (give it to run_flow(credentials=...))")
        return self._credentials[name]

    def save_credential_fields(self, tenant_id: str, name: str, fields: Mapping[str, Any]) -> None:
        self._credentials[name].update(fields)

    def resume_url(self, ref: ExecutionRef) -> None:
        return None


def registry_with(connectors: Iterable[Any] = ()) -> Registry:
    from connectors import default_registry

    registry = default_registry()
    for connector in connectors:
        register = getattr(connector, "register", connector)
        register(registry)
    return registry


def run_flow(doc: dict[str, Any], items: list[dict] | None = None, *, connectors: Iterable[Any] = (),
             credentials: Mapping[str, tuple[str, Mapping[str, str]]] | None = None,
             variables: Mapping[str, Any] | None = None) -> Outcome:
    """Run `doc` to its end (waits are slept) and return the engine's Outcome (status, output, error, steps)."""
    registry = registry_with(connectors)
    found: dict[str, Credential] = {}
    for name, (type_, fields) in (credentials or {}).items():
        spec = registry.credential_type(type_)
        if spec is None:
            raise ValueError(f"unknown credential type {type_!r}; types: {', '.join(registry.credential_type_names())}")
        problems = spec.problems(dict(fields))
        if problems:
            raise ValueError(f"credential {name!r}: " + "; ".join(problems))
        found[name] = Credential(spec, fields)
    flow = compile_flow(doc, registry)
    run = Run(ExecutionRef(f"test-{time.time_ns()}", "test"), flow, items if items is not None else [{}],
              time.time(), trigger="manual", vars=dict(variables or {}))
    return asyncio.run(Executor(MemoryStore(), _Services(found), Limits(inline_wait_max_s=3600)).run(run))


__all__ = ["registry_with", "run_flow"]
