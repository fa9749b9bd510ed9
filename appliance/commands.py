"""What each `flowfuse` sub-command does, as functions the CLI wraps and the tests call directly."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from connectors import default_registry
from engine import SUCCEEDED, ExecutionRef, Executor, FlowInvalid, Limits, MemoryStore, Run, compile_flow
from .runs import new_id, step_view

from .audit import VerifyResult
from .catalog import NotFound
from .runtime import Runtime
from .settings import Settings


class CommandError(Exception):
    """A command that cannot be done; the message says why and what to do."""


@contextmanager
def opened(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings, role="cli")
    try:
        yield runtime
    finally:
        runtime.close()


def read_flow_file(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def parse_input(text: str | None) -> list[dict]:
    """`--input` JSON: an object (one item) or a list of objects."""
    if text is None:
        return [{}]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input is not valid JSON: {exc.msg}") from None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(i, dict) for i in value):
        return value
    raise CommandError("--input must be a JSON object or a list of objects")


class _LocalServices:
    """What `flowfuse run` offers nodes from an initialised data directory: its credentials and
    flows (for execute_flow). There is no resume URL: nothing outside this process can reach it."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def credential(self, tenant_id: str, name: str) -> dict[str, Any]:
        return self.runtime.credential(tenant_id, name)

    async def run_subflow(self, parent: ExecutionRef, name: str, items: list[dict], key: str) -> list[dict]:
        return await self.runtime.run_subflow(parent, name, items, key)

    def resume_url(self, ref: ExecutionRef) -> None:
        return None


def run_flow(doc: Any, items: list[dict], settings: Settings | None = None,
             tenant: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run a flow document in this process; its steps are not stored. Returns (exit status, result).

    Exit status: 0 succeeded, 1 failed, 2 the flow is invalid. Waits are slept. With `settings`
    whose data directory is initialised, nodes get its credentials, variables and flows (sub-flows
    run and are recorded there); without, nodes that need them fail with a message saying so.
    """
    try:
        flow = compile_flow(doc, default_registry(settings.data_dir / "plugins" if settings is not None else None))
    except FlowInvalid as exc:
        return 2, {"status": "invalid", "errors": [e.as_dict() for e in exc.errors]}
    runtime = None
    if settings is not None and (settings.data_dir / "flowfuse.db").exists():
        runtime = Runtime(settings, role="cli")
    try:
        tenant_id = runtime.tenant_id(tenant) if runtime else "local"
        executor = Executor(MemoryStore(), _LocalServices(runtime) if runtime else None,
                            Limits(inline_wait_max_s=math.inf))
        run = Run(ExecutionRef("local-" + new_id(), tenant_id), flow, items, time.time(), trigger="manual",
                  vars=runtime.catalog.variables(tenant_id) if runtime else {})
        outcome = asyncio.run(executor.run(run))
    finally:
        if runtime is not None:
            runtime.close()
    result: dict[str, Any] = {"status": outcome.status, "steps": [step_view(s) for s in outcome.steps],
                              "output": outcome.output}
    if outcome.error:
        result["error"] = outcome.error
    return (0 if outcome.status == SUCCEEDED else 1), result


def import_flow(settings: Settings, path: str | Path, tenant: str | None, activate: bool) -> dict[str, Any]:
    doc = read_flow_file(path)
    with opened(settings) as rt:
        row = rt.catalog.save_flow(rt.tenant_id(tenant), doc, activate=True if activate else None)
        _audit_cli(rt, "flow.import", row.tenant_id, "flow", row.id,
                   {"name": row.name, "version": row.version, "active": row.active})
        return flow_summary(row)


def export_flow(settings: Settings, name: str, tenant: str | None) -> dict[str, Any]:
    with opened(settings) as rt:
        return rt.catalog.flow(rt.tenant_id(tenant), name).doc


def list_flows(settings: Settings, tenant: str | None) -> list[dict[str, Any]]:
    with opened(settings) as rt:
        return [flow_summary(r) for r in rt.catalog.flows(rt.tenant_id(tenant))]


def set_active(settings: Settings, name: str, tenant: str | None, active: bool) -> dict[str, Any]:
    with opened(settings) as rt:
        row = rt.catalog.set_active(rt.tenant_id(tenant), name, active)
        _audit_cli(rt, "flow.activate" if active else "flow.deactivate", row.tenant_id, "flow", row.id,
                   {"name": row.name, "version": row.version})
        return flow_summary(row)


def flow_summary(row) -> dict[str, Any]:
    summary = {"name": row.name, "version": row.version, "active": row.active, "trigger": row.trigger_type}
    if row.webhook_path:
        summary["webhook"] = f"{row.webhook_method} /hooks/{{tenant}}/{row.webhook_path}"
    return summary


def list_executions(settings: Settings, tenant: str | None, flow: str | None, status: str | None,
                    limit: int, before: str | None = None) -> list[dict[str, Any]]:
    with opened(settings) as rt:
        tid = rt.tenant_id(tenant)
        flow_id = rt.catalog.flow(tid, flow).id if flow else None
        return rt.runs.list(tid, flow_id=flow_id, status=status, limit=limit, before=before)


def show_execution(settings: Settings, execution_id: str, tenant: str | None) -> dict[str, Any]:
    with opened(settings) as rt:
        found = rt.runs.show(execution_id, rt.tenant_id(tenant))
        if found is None:
            raise CommandError(f"no execution {execution_id!r}; `flowfuse executions list` shows recent ones")
        return found


def cancel_execution(settings: Settings, execution_id: str, tenant: str | None) -> str:
    with opened(settings) as rt:
        if rt.runs.show(execution_id, rt.tenant_id(tenant)) is None:
            raise CommandError(f"no execution {execution_id!r}")
        before = rt.cancel(execution_id)
        if before in ("succeeded", "failed", "cancelled"):
            raise CommandError(f"execution {execution_id} has already {before}")
        _audit_cli(rt, "execution.cancel", rt.tenant_id(tenant), "execution", execution_id, {"was": before})
        return before or ""


def set_credential(settings: Settings, name: str, type_: str, data: dict[str, Any], tenant: str | None) -> None:
    with opened(settings) as rt:
        tenant_id = rt.tenant_id(tenant)
        rt.vault.put(tenant_id, name, type_, data)
        # the name and type only: the fields are the secret
        _audit_cli(rt, "credential.set", tenant_id, "credential", name, {"type": type_})


def rotate_master_key(settings: Settings, show_new_key: Callable[[str], None]) -> dict[str, Any]:
    """Re-wrap every tenant data key under a new master key (`flowfuse keys rotate`).

    With flowfuse.key the vault replaces the file. With FLOWFUSE_MASTER_KEY nothing on disk keeps
    the new key, so `show_new_key` gets it (hex) before anything changes, for the operator to store.
    """
    with opened(settings) as rt:
        new_key = None
        if rt.vault.key_from_environment:
            new_key = secrets.token_bytes(32)
            show_new_key(new_key.hex())
        count = rt.vault.rotate_master_key(new_key)
        rt.audit.record("keys.rotate", actor_type="system", actor_label="cli", details={"tenant_keys": count})
        return {"tenant_keys": count, "key": "FLOWFUSE_MASTER_KEY" if new_key else str(rt.vault.key_path)}


def create_admin(settings: Settings, email: str, password: str) -> dict[str, Any]:
    """An instance admin who owns the tenant 'default' (for `flowfuse init --admin-email`)."""
    with opened(settings) as rt:
        user = rt.identity.create_user(email, password, is_admin=True)
        tid = rt.tenant_id("default")
        rt.control.execute("INSERT OR IGNORE INTO memberships (tenant_id, user_id, role, created_at) "
                           "VALUES (?,?,'owner',?)", (tid, user["id"], user["created_at"]))
        _audit_cli(rt, "user.create", tid, "user", user["id"], {"email": user["email"], "is_admin": True})
        return {"id": user["id"], "email": user["email"]}


def _audit_cli(rt: Runtime, action: str, tenant_id: str, target_type: str, target_id: str,
               details: dict[str, Any]) -> None:
    """Record a change made from the command line (whoever can run it owns the data directory)."""
    rt.audit.record(action, actor_type="system", actor_label="cli", tenant_id=tenant_id,
                    target_type=target_type, target_id=target_id, details=details)


def parse_since(text: str) -> float:
    """`--since`: an ISO-8601 date or date-time (UTC unless it names an offset), as epoch seconds."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--since {text!r} is not an ISO-8601 date or date-time, "
                           "e.g. 2024-05-01 or 2024-05-01T09:30:00+02:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def verify_audit(settings: Settings) -> VerifyResult:
    with opened(settings) as rt:
        return rt.audit.verify()


def export_audit(settings: Settings, out: TextIO, fmt: str, since: str | None, tenant: str | None) -> int:
    """Write the audit log (of one tenant, if given) to `out`; returns how many entries."""
    when = parse_since(since) if since is not None else None
    with opened(settings) as rt:
        try:
            tenant_id = rt.catalog.tenant(tenant)["id"] if tenant is not None else None
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        return rt.audit.export(out, fmt, since=when, tenant_id=tenant_id)
