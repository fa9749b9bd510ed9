"""Flows and what they run with: versions, runs, executions, tenant variables and credentials."""

from __future__ import annotations

import difflib
import json
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, patch, post, put
from litestar.params import Parameter, QueryParameter

from appliance.catalog import Conflict, NotFound
from appliance.identity import (
    Access,
    Invalid,
    Principal,
)
from engine import FINAL

from .base import EPOCH_MAX, Body, audit, runtime_of


class RunIn(Body):
    #: The trigger's items: an object (one item) or a list; by default one empty item, as `flowfuse run`.
    input: list[dict[str, Any]] | dict[str, Any] = msgspec.field(default_factory=lambda: [{}])


class CredentialPatch(Body):
    name: str | None = None
    #: Fields to set; a field given as null is removed; fields not given keep their values.
    data: dict[str, str | None] | None = None


class CredentialTest(Body):
    #: A URL to GET with the credential (basic, bearer and header credentials).
    url: str


class VariableIn(Body):
    value: Any


class CredentialIn(Body):
    name: str
    type: str
    data: dict[str, str]


@get("/tenants/{tenant:str}/flows", sync_to_thread=True, summary="Flows", opt={"permission": "flows.read"})
def list_flows(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return [_flow_view(f) for f in runtime_of(request).catalog.flows(access.tenant_id)]


@post("/tenants/{tenant:str}/flows", sync_to_thread=True, summary="Create a flow, or save a new version of one",
      opt={"permission": "flows.write"})
def save_flow(request: Request, principal: Principal, access: Access,
              tenant: str, data: dict[str, Any]) -> Response[dict]:
    row = runtime_of(request).catalog.save_flow(access.tenant_id, data)
    audit(request, principal, "flow.save", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": row.name, "version": row.version})
    return Response(_flow_view(row, definition=True), status_code=201 if row.version == 1 else 200)


@post("/tenants/{tenant:str}/flows/validate", sync_to_thread=True, status_code=200,
      summary="Check a flow without saving it", opt={"permission": "flows.read"})
def validate_flow(request: Request, principal: Principal, access: Access, tenant: str, data: dict[str, Any]) -> dict:
    flow = runtime_of(request).catalog.validate(data, access.tenant_id)
    return {"valid": True, "name": flow.name, "nodes": len(flow.nodes)}


@get("/tenants/{tenant:str}/flows/{name:str}", sync_to_thread=True, summary="A flow with its definition",
     opt={"permission": "flows.read"})
def get_flow(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> dict:
    return _flow_view(runtime_of(request).catalog.flow(access.tenant_id, name), definition=True)


@put("/tenants/{tenant:str}/flows/{name:str}", sync_to_thread=True, summary="Save a new version of a flow",
     opt={"permission": "flows.write"})
def update_flow(request: Request, principal: Principal, access: Access,
                tenant: str, name: str, data: dict[str, Any]) -> dict:
    catalog = runtime_of(request).catalog
    catalog.flow(access.tenant_id, name)
    if data.get("name", name) != name:
        raise Invalid("name", f"the body names the flow {data.get('name')!r} but the URL names {name!r}")
    row = catalog.save_flow(access.tenant_id, {**data, "name": name})
    audit(request, principal, "flow.save", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": row.name, "version": row.version})
    return _flow_view(row, definition=True)


@delete("/tenants/{tenant:str}/flows/{name:str}", sync_to_thread=True, status_code=204, summary="Delete a flow",
        opt={"permission": "flows.write"})
def delete_flow(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> None:
    catalog = runtime_of(request).catalog
    row = catalog.flow(access.tenant_id, name)
    catalog.delete_flow(access.tenant_id, name)
    audit(request, principal, "flow.delete", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": name})


@get("/tenants/{tenant:str}/flows/{name:str}/versions", sync_to_thread=True, summary="A flow's saved versions",
     opt={"permission": "flows.read"})
def list_versions(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> list[dict]:
    rt = runtime_of(request)
    row = rt.catalog.flow(access.tenant_id, name)
    return [dict(r) for r in rt.control.query(
        "SELECT version, created_at FROM flow_versions WHERE flow_id=? AND tenant_id=? ORDER BY version DESC",
        (row.id, access.tenant_id))]


@get("/tenants/{tenant:str}/flows/{name:str}/versions/{version:int}", sync_to_thread=True,
     summary="One saved version of a flow", opt={"permission": "flows.read"})
def get_version(request: Request, principal: Principal, access: Access, tenant: str, name: str, version: int) -> dict:
    return {"name": name, "version": version, "definition": definition_of(request, access, name, version)}


@get("/tenants/{tenant:str}/flows/{name:str}/diff", sync_to_thread=True,
     summary="Unified diff between two versions of a flow", opt={"permission": "flows.read"})
def diff_versions(request: Request, principal: Principal, access: Access, tenant: str, name: str,
                  from_: int = QueryParameter(name="from", ge=1), to: int = Parameter(ge=1)) -> dict:
    a = json.dumps(definition_of(request, access, name, from_), indent=2, sort_keys=True).splitlines()
    b = json.dumps(definition_of(request, access, name, to), indent=2, sort_keys=True).splitlines()
    diff = difflib.unified_diff(a, b, f"{name} v{from_}", f"{name} v{to}", lineterm="")
    return {"name": name, "from": from_, "to": to, "diff": "\n".join(diff)}


@post("/tenants/{tenant:str}/flows/{name:str}/versions/{version:int}/restore", sync_to_thread=True,
      status_code=200, summary="Save an old version again as the newest one", opt={"permission": "flows.write"})
def restore_version(request: Request, principal: Principal, access: Access,
                    tenant: str, name: str, version: int) -> dict:
    row = runtime_of(request).catalog.save_flow(access.tenant_id, definition_of(request, access, name, version))
    audit(request, principal, "flow.restore", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": name, "restored": version, "version": row.version})
    return _flow_view(row, definition=True)


@post("/tenants/{tenant:str}/flows/{name:str}/activate", sync_to_thread=True, status_code=200,
      summary="Start listening to the flow's webhook or schedule", opt={"permission": "flows.write"})
def activate_flow(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> dict:
    return _set_active(request, principal, access, name, True)


@post("/tenants/{tenant:str}/flows/{name:str}/deactivate", sync_to_thread=True, status_code=200,
      summary="Stop the flow's webhook or schedule", opt={"permission": "flows.write"})
def deactivate_flow(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> dict:
    return _set_active(request, principal, access, name, False)


@post("/tenants/{tenant:str}/flows/{name:str}/run", sync_to_thread=True, status_code=202,
      summary="Queue an execution now with the given input items", opt={"permission": "flows.run"})
def run_flow(request: Request, principal: Principal, access: Access, tenant: str, name: str, data: RunIn) -> dict:
    rt = runtime_of(request)
    row = rt.catalog.flow(access.tenant_id, name)
    items = [data.input] if isinstance(data.input, dict) else data.input
    started = rt.queue_execution(row, "manual", items, meta={"by": principal.label})
    audit(request, principal, "flow.run", tenant_id=access.tenant_id, target_type="execution",
          target_id=started.id, details={"flow": name})
    return {"execution_id": started.id, "status": "queued"}


@get("/tenants/{tenant:str}/executions", sync_to_thread=True,
     summary="Executions, newest first; page with `before` = the last id of the previous page",
     opt={"permission": "executions.read"})
def list_executions(request: Request, principal: Principal, access: Access, tenant: str, flow: str | None = None,
                    status: str | None = None, before: str | None = None,
                    since: float | None = Parameter(default=None, ge=0, le=EPOCH_MAX,
                                                    description="created at or after (epoch seconds)"),
                    until: float | None = Parameter(default=None, ge=0, le=EPOCH_MAX,
                                                    description="created before (epoch seconds)"),
                    limit: int = Parameter(default=50, ge=1, le=500)) -> dict:
    rt = runtime_of(request)
    flow_id = rt.catalog.flow(access.tenant_id, flow).id if flow else None
    rows = rt.runs.list(access.tenant_id, flow_id=flow_id, status=status, limit=limit, before=before, since=since,
                        until=until)
    return {"items": rows, "next": rows[-1]["id"] if len(rows) == limit else None}


@get("/tenants/{tenant:str}/executions/{execution_id:str}", sync_to_thread=True,
     summary="One execution with every step", opt={"permission": "executions.read"})
def get_execution(request: Request, principal: Principal, access: Access, tenant: str, execution_id: str) -> dict:
    found = runtime_of(request).runs.show(execution_id, access.tenant_id)
    if found is None:
        raise NotFound(f"no execution {execution_id!r} in this tenant")
    return found


@post("/tenants/{tenant:str}/executions/{execution_id:str}/cancel", sync_to_thread=True, status_code=202,
      summary="Cancel a queued, waiting or running execution", opt={"permission": "executions.cancel"})
def cancel_execution(request: Request, principal: Principal, access: Access, tenant: str, execution_id: str) -> dict:
    rt = runtime_of(request)
    if rt.runs.show(execution_id, access.tenant_id) is None:
        raise NotFound(f"no execution {execution_id!r} in this tenant")
    before = rt.cancel(execution_id)
    if before in FINAL:
        raise Conflict(f"execution {execution_id} has already {before}")
    audit(request, principal, "execution.cancel", tenant_id=access.tenant_id, target_type="execution",
          target_id=execution_id)
    return {"id": execution_id, "status_before": before}


@post("/tenants/{tenant:str}/executions/{execution_id:str}/retry", sync_to_thread=True, status_code=202,
      summary="Run a failed execution again from its failed step (earlier steps are not repeated)",
      opt={"permission": "executions.retry"})
def retry_execution(request: Request, principal: Principal, access: Access, tenant: str, execution_id: str) -> dict:
    try:
        nodes = runtime_of(request).retry(execution_id, access.tenant_id)
    except LookupError:
        raise NotFound(f"no execution {execution_id!r} in this tenant") from None
    except ValueError as exc:
        raise Conflict(str(exc)) from None
    audit(request, principal, "execution.retry", tenant_id=access.tenant_id, target_type="execution",
          target_id=execution_id, details={"nodes": nodes})
    return {"id": execution_id, "status": "queued", "rerun": nodes}


@get("/tenants/{tenant:str}/variables", sync_to_thread=True, summary="Tenant variables (`vars` in expressions)",
     opt={"permission": "variables.read"})
def list_variables(request: Request, principal: Principal, access: Access, tenant: str) -> dict:
    return runtime_of(request).catalog.variables(access.tenant_id)


@put("/tenants/{tenant:str}/variables/{name:str}", sync_to_thread=True, summary="Set a variable",
     opt={"permission": "variables.write"})
def set_variable(request: Request, principal: Principal, access: Access,
                 tenant: str, name: str, data: VariableIn) -> dict:
    return store_variable(request, principal, access, name, data.value)


@delete("/tenants/{tenant:str}/variables/{name:str}", sync_to_thread=True, status_code=204,
        summary="Delete a variable", opt={"permission": "variables.write"})
def delete_variable(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> None:
    remove_variable(request, principal, access, name)


@get("/tenants/{tenant:str}/credentials", sync_to_thread=True,
     summary="Credentials: names, types and which fields are set, never their values",
     opt={"permission": "credentials.read"})
def list_credentials(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).vault.list(access.tenant_id)


@post("/tenants/{tenant:str}/credentials", sync_to_thread=True,
      summary="Create or replace a credential (its values are write-only)", opt={"permission": "credentials.write"})
def put_credential(request: Request, principal: Principal, access: Access,
                   tenant: str, data: CredentialIn) -> Response[dict]:
    return Response(store_credential(request, principal, access, data.name, data.type, data.data), status_code=201)


@patch("/tenants/{tenant:str}/credentials/{credential_id:str}", sync_to_thread=True,
       summary="Rename a credential or change some of its fields (the others keep their values)",
       opt={"permission": "credentials.write"})
def update_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str,
                      data: CredentialPatch) -> dict:
    return change_credential(request, principal, access, credential_id, data.name, data.data)


@post("/tenants/{tenant:str}/credentials/{credential_id:str}/test", sync_to_thread=True, status_code=200,
      summary="Try a credential: GET a URL with it and report the HTTP status",
      opt={"permission": "credentials.write"})
def test_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str,
                    data: CredentialTest) -> dict:
    return try_credential(request, principal, access, credential_id, data.url)


@delete("/tenants/{tenant:str}/credentials/{credential_id:str}", sync_to_thread=True, status_code=204,
        summary="Delete a credential", opt={"permission": "credentials.write"})
def delete_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str) -> None:
    remove_credential(request, principal, access, credential_id)


# -- what the API handlers and the console pages both do (each state change audited here, once) ----------------
def store_variable(request: Request, principal: Principal, access: Access, name: str, value: Any) -> dict[str, Any]:
    if not name.isidentifier():
        raise Invalid("name", "use letters, digits and underscores, not starting with a digit")
    runtime_of(request).catalog.set_variable(access.tenant_id, name, value)
    audit(request, principal, "variable.set", tenant_id=access.tenant_id, target_type="variable", target_id=name)
    return {"name": name, "value": value}


def remove_variable(request: Request, principal: Principal, access: Access, name: str) -> None:
    if not runtime_of(request).catalog.delete_variable(access.tenant_id, name):
        raise NotFound(f"no variable {name!r}")
    audit(request, principal, "variable.delete", tenant_id=access.tenant_id, target_type="variable", target_id=name)


def store_credential(request: Request, principal: Principal, access: Access, name: str, type_: str,
                     data: dict[str, str]) -> dict[str, Any]:
    """Create or replace a credential; returns what may be shown of it (never a value)."""
    vault = runtime_of(request).vault
    cid = vault.put(access.tenant_id, name, type_, data)
    audit(request, principal, "credential.set", tenant_id=access.tenant_id, target_type="credential", target_id=cid,
          details={"name": name, "type": type_, "fields": sorted(data)})
    return vault.describe(access.tenant_id, cid)


def change_credential(request: Request, principal: Principal, access: Access, credential_id: str,
                      name: str | None, data: dict[str, str | None] | None) -> dict[str, Any]:
    """Rename a credential and/or set some fields (None removes one); the others keep their values."""
    meta = runtime_of(request).vault.update(access.tenant_id, credential_id, name=name, data=data)
    audit(request, principal, "credential.update", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id, details={"name": meta["name"], "fields": sorted(data or {})})
    return meta


def try_credential(request: Request, principal: Principal, access: Access, credential_id: str,
                   url: str) -> dict[str, Any]:
    """GET `url` with the credential: {"ok", "status"} or {"ok": False, "message"}; audited with its outcome."""
    result = runtime_of(request).try_credential(access.tenant_id, credential_id, url)
    audit(request, principal, "credential.test", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id, outcome="ok" if result["ok"] else "failed",
          details={"url": url, "status": result.get("status")})
    return result


def remove_credential(request: Request, principal: Principal, access: Access, credential_id: str) -> None:
    if not runtime_of(request).vault.delete(access.tenant_id, credential_id):
        raise NotFound(f"no credential {credential_id!r}")
    audit(request, principal, "credential.delete", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id)


def _flow_view(row, definition: bool = False) -> dict[str, Any]:
    view = {"id": row.id, "name": row.name, "version": row.version, "active": row.active,
            "trigger": row.trigger_type, "updated_at": row.updated_at}
    if row.webhook_path:
        view["webhook"] = {"method": row.webhook_method, "path": row.webhook_path}
    if definition:
        view["definition"] = row.doc
    return view


def definition_of(request: Request, access: Access, name: str, version: int) -> dict[str, Any]:
    rt = runtime_of(request)
    row = rt.catalog.flow(access.tenant_id, name)
    found = rt.control.one("SELECT definition FROM flow_versions WHERE flow_id=? AND tenant_id=? AND version=?",
                           (row.id, access.tenant_id, version))
    if found is None:
        raise NotFound(f"flow {name!r} has no version {version}")
    return json.loads(found["definition"])


def _set_active(request: Request, principal: Principal, access: Access, name: str, active: bool) -> dict:
    row = runtime_of(request).catalog.set_active(access.tenant_id, name, active)
    audit(request, principal, "flow.activate" if active else "flow.deactivate", tenant_id=access.tenant_id,
          target_type="flow", target_id=row.id, details={"name": name})
    return _flow_view(row)


HANDLERS = [list_flows, save_flow, validate_flow, get_flow, update_flow, delete_flow, list_versions, get_version,
            diff_versions, restore_version, activate_flow, deactivate_flow, run_flow, list_executions, get_execution,
            cancel_execution, retry_execution, list_variables, set_variable, delete_variable, list_credentials,
            put_credential, update_credential, test_credential, delete_credential]
