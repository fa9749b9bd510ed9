"""Tenants and what their admins manage: the tenants themselves, settings, members, API keys,
quotas, usage and the audit log."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, patch, post, put
from litestar.params import Parameter, QueryParameter

from appliance.identity import (
    Access,
    Identity,
    Invalid,
    Principal,
    tenant_settings,
)
from appliance.usage import period, report, to_csv

from .base import Body, audit, check_access, runtime_of


class TenantIn(Body):
    slug: str
    name: str | None = None


class TenantPatch(Body):
    name: str | None = None
    status: str | None = None


class SettingsIn(Body):
    require_mfa: bool | None = None


class MemberIn(Body):
    role: str


class KeyIn(Body):
    name: str
    role: str
    expires_at: float | None = None


class QuotasIn(Body):
    """Overrides of the instance's [quotas] for one tenant: 0 is unlimited, null goes back to the instance
    default, a quota left out stays as it is."""

    active_flows: int | None | msgspec.UnsetType = msgspec.UNSET
    executions_per_month: int | None | msgspec.UnsetType = msgspec.UNSET
    concurrent_executions: int | None | msgspec.UnsetType = msgspec.UNSET
    webhook_requests_per_minute: int | None | msgspec.UnsetType = msgspec.UNSET
    retention_days: int | None | msgspec.UnsetType = msgspec.UNSET


@get("/tenants", sync_to_thread=True, summary="Tenants the caller can see")
def list_tenants(request: Request, principal: Principal) -> list[dict]:
    return [_tenant_view(t) for t in runtime_of(request).identity.tenants_of(principal)]


@post("/tenants", sync_to_thread=True, summary="Create a tenant (instance admins)", opt={"admin": "creating a tenant"})
def create_tenant(request: Request, principal: Principal, data: TenantIn) -> Response[dict]:
    return Response(add_tenant(request, principal, data.slug, data.name), status_code=201)


@get("/tenants/{tenant:str}", sync_to_thread=True, summary="One tenant", opt={"permission": "tenant.read"})
def get_tenant(request: Request, principal: Principal, access: Access, tenant: str) -> dict:
    return _tenant_view(access.tenant)


@patch("/tenants/{tenant:str}", sync_to_thread=True,
       summary="Rename (owners) or suspend and resume (instance admins) a tenant",
       opt={"permission": "tenant.settings"})
def update_tenant(request: Request, principal: Principal, access: Access, tenant: str, data: TenantPatch) -> dict:
    return change_tenant(request, principal, access, name=data.name, status=data.status)


@delete("/tenants/{tenant:str}", sync_to_thread=True, status_code=204,
        summary="Delete a tenant and all its data (instance admins)", opt={"admin": "deleting a tenant"})
def delete_tenant(request: Request, principal: Principal, tenant: str) -> None:
    remove_tenant(request, principal, tenant)


@get("/tenants/{tenant:str}/settings", sync_to_thread=True, summary="Tenant settings",
     opt={"permission": "tenant.read"})
def get_settings(access: Access, tenant: str) -> dict:
    return tenant_settings(access.tenant)


@patch("/tenants/{tenant:str}/settings", sync_to_thread=True, summary="Change tenant settings (owners)",
       opt={"permission": "tenant.settings"})
def update_settings(request: Request, principal: Principal, access: Access, tenant: str, data: SettingsIn) -> dict:
    return change_settings(request, principal, access, {k: v for k, v in msgspec.structs.asdict(data).items()
                                                        if v is not None})


@get("/tenants/{tenant:str}/members", sync_to_thread=True, summary="Members and their roles",
     opt={"permission": "members.read"})
def list_members(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.members(access.tenant_id)


@put("/tenants/{tenant:str}/members/{user_id:str}", sync_to_thread=True,
     summary="Add a member or change their role", opt={"permission": "members.manage"})
def set_member(request: Request, principal: Principal, access: Access,
               tenant: str, user_id: str, data: MemberIn) -> dict:
    return change_role(request, principal, access, user_id, data.role)


@delete("/tenants/{tenant:str}/members/{user_id:str}", sync_to_thread=True, status_code=204,
        summary="Remove a member", opt={"permission": "members.manage"})
def remove_member(request: Request, principal: Principal, access: Access, tenant: str, user_id: str) -> None:
    drop_member(request, principal, access, user_id)


@get("/tenants/{tenant:str}/api-keys", sync_to_thread=True, summary="API keys (never the keys themselves)",
     opt={"permission": "api_keys.manage"})
def list_keys(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.keys(access.tenant_id)


@post("/tenants/{tenant:str}/api-keys", sync_to_thread=True,
      summary="Create an API key; the key is in this response only", opt={"permission": "api_keys.manage"})
def create_key(request: Request, principal: Principal, access: Access, tenant: str, data: KeyIn) -> Response[dict]:
    return Response(make_key(request, principal, access, data.name, data.role, data.expires_at), status_code=201)


@post("/tenants/{tenant:str}/api-keys/{key_id:str}/revoke", sync_to_thread=True, status_code=200,
      summary="Revoke an API key (it stops working on the next request)", opt={"permission": "api_keys.manage"})
def revoke_key(request: Request, principal: Principal, access: Access, tenant: str, key_id: str) -> dict:
    return end_key(request, principal, access, key_id)


@get("/tenants/{tenant:str}/quotas", sync_to_thread=True,
     summary="The tenant's quotas (0: unlimited), where each comes from, and what it uses of them",
     opt={"permission": "tenant.read"})
def get_quotas(request: Request, access: Access, tenant: str) -> dict:
    return {"tenant": access.tenant["slug"], **runtime_of(request).quotas.view(access.tenant_id)}


@patch("/tenants/{tenant:str}/quotas", sync_to_thread=True,
       summary="Override the tenant's quotas (instance admins)", opt={"admin": "changing quotas"})
def update_quotas(request: Request, principal: Principal, tenant: str, data: QuotasIn) -> dict:
    return change_quotas(request, principal, tenant,
                         {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET})


@get("/tenants/{tenant:str}/usage", sync_to_thread=True,
     summary="Usage per day (executions, steps, bytes stored) and totals; CSV with ?format=csv or Accept: text/csv",
     opt={"permission": "usage.read"})
def tenant_usage(request: Request, access: Access, tenant: str,
                 from_: str | None = QueryParameter(name="from", default=None, description="YYYY-MM-DD"),
                 to: str | None = Parameter(default=None, description="YYYY-MM-DD, inclusive"),
                 format_: str | None = QueryParameter(name="format", default=None, description="json or csv")
                 ) -> Response:
    return _usage(request, access, from_, to, format_)


@get("/usage", sync_to_thread=True,
     summary="Usage of the caller's tenant (an API key's own; name it with ?tenant= if you have several)")
def own_usage(request: Request, principal: Principal, tenant: str | None = None,
              from_: str | None = QueryParameter(name="from", default=None, description="YYYY-MM-DD"),
              to: str | None = Parameter(default=None, description="YYYY-MM-DD, inclusive"),
              format_: str | None = QueryParameter(name="format", default=None, description="json or csv")
              ) -> Response:
    if tenant is None:
        if principal.kind == "api_key":
            tenant = principal.tenant_id
        else:
            mine = [t["slug"] for t in runtime_of(request).identity.tenants_of(principal)]
            if len(mine) != 1:
                raise Invalid("tenant", f"you have {len(mine)} tenants; name one with ?tenant= "
                                        f"({', '.join(mine[:20]) or 'none'})")
            tenant = mine[0]
    return _usage(request, check_access(request, principal, tenant, "usage.read"), from_, to, format_)


def _usage(request: Request, access: Access, start: str | None, end: str | None, fmt: str | None) -> Response:
    if fmt not in (None, "json", "csv"):
        raise Invalid("format", "must be json or csv")
    first, last = period(start, end)
    found = report(runtime_of(request).runs_db, access.tenant_id, first, last)
    slug = access.tenant["slug"]
    if fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("accept", "")):
        return Response(to_csv(slug, found), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="usage-{slug}-{first}-{last}.csv"'})
    return Response({"tenant": slug, **found})


@get("/tenants/{tenant:str}/audit", sync_to_thread=True,
     summary="The tenant's audit log, newest first; page with `before` = the last seq of the previous page",
     opt={"permission": "audit.read"})
def tenant_audit(request: Request, principal: Principal, access: Access, tenant: str, actor: str | None = None,
                 action: str | None = None, target: str | None = None, since: float | None = None,
                 until: float | None = None, before: int | None = None,
                 limit: int = Parameter(default=50, ge=1, le=500)) -> dict:
    return audit_entries(request, access.tenant_id, actor=actor, action=action, target=target, since=since,
                         until=until, before=before, limit=limit)


@get("/audit", sync_to_thread=True, summary="The whole audit log (instance admins)",
     opt={"admin": "reading the whole audit log"})
def instance_audit(request: Request, principal: Principal, tenant: str | None = None, actor: str | None = None,
                   action: str | None = None, target: str | None = None, since: float | None = None,
                   until: float | None = None, before: int | None = None,
                   limit: int = Parameter(default=50, ge=1, le=500)) -> dict:
    tenant_id = runtime_of(request).identity.tenant(tenant)["id"] if tenant else None
    return audit_entries(request, tenant_id, actor=actor, action=action, target=target, since=since, until=until,
                         before=before, limit=limit)


# -- what the API handlers and the console pages both do (each state change audited here, once) ----------------
def add_tenant(request: Request, principal: Principal, slug: str, name: str | None) -> dict[str, Any]:
    tenant = runtime_of(request).identity.create_tenant(slug, name)
    audit(request, principal, "tenant.create", tenant_id=tenant["id"], target_type="tenant", target_id=tenant["id"],
          details={"slug": tenant["slug"]})
    return _tenant_view(tenant)


def change_tenant(request: Request, principal: Principal, access: Access, *, name: str | None = None,
                  status: str | None = None) -> dict[str, Any]:
    """Rename (anyone with tenant.settings) or suspend and resume (instance admins only) a tenant."""
    if status is not None:
        Identity.require_admin(principal, "suspending or resuming a tenant")
    updated = runtime_of(request).identity.update_tenant(access.tenant_id, name=name, status=status)
    action = {"suspended": "tenant.suspend", "active": "tenant.resume"}.get(status or "", "tenant.update")
    audit(request, principal, action, tenant_id=access.tenant_id, target_type="tenant", target_id=access.tenant_id,
          details={k: v for k, v in (("name", name), ("status", status)) if v is not None})
    runtime_of(request).catalog.invalidate()  # webhooks and schedules of a suspended tenant stop at once
    return _tenant_view(updated)


def remove_tenant(request: Request, principal: Principal, tenant: str) -> dict[str, int]:
    """Delete a tenant and all its data (the callers check that `principal` is an instance admin)."""
    rt = runtime_of(request)
    found = rt.identity.tenant(tenant)
    counts = rt.delete_tenant(found["id"])
    audit(request, principal, "tenant.delete", tenant_id=found["id"], target_type="tenant", target_id=found["id"],
          details={"slug": found["slug"], **counts})
    return counts


def change_settings(request: Request, principal: Principal, access: Access, changes: dict[str, Any]) -> dict:
    updated = runtime_of(request).identity.update_settings(access.tenant_id, changes)
    audit(request, principal, "tenant.settings", tenant_id=access.tenant_id, target_type="tenant",
          target_id=access.tenant_id, details=changes)
    return updated


def change_role(request: Request, principal: Principal, access: Access, user_id: str, role: str) -> dict:
    """Add a member or change their role (Identity.set_role keeps the owner rules)."""
    member = runtime_of(request).identity.set_role(access, user_id, role)
    audit(request, principal, "member.set_role", tenant_id=access.tenant_id, target_type="user", target_id=user_id,
          details={"role": role})
    return member


def drop_member(request: Request, principal: Principal, access: Access, user_id: str) -> None:
    runtime_of(request).identity.remove_member(access, user_id)
    audit(request, principal, "member.remove", tenant_id=access.tenant_id, target_type="user", target_id=user_id)


def make_key(request: Request, principal: Principal, access: Access, name: str, role: str,
             expires_at: float | None) -> dict[str, Any]:
    """A new API key: its metadata and, under `key`, the key itself (shown this once)."""
    meta, key = runtime_of(request).identity.create_key(access, principal, name, role, expires_at)
    audit(request, principal, "api_key.create", tenant_id=access.tenant_id, target_type="api_key",
          target_id=meta["id"], details={"name": meta["name"], "role": meta["role"]})
    return {**meta, "key": key}


def end_key(request: Request, principal: Principal, access: Access, key_id: str) -> dict[str, Any]:
    meta = runtime_of(request).identity.revoke_key(access.tenant_id, key_id)
    audit(request, principal, "api_key.revoke", tenant_id=access.tenant_id, target_type="api_key", target_id=key_id)
    return meta


def change_quotas(request: Request, principal: Principal, tenant: str, changes: dict[str, int | None]) -> dict:
    """Override some quotas of a tenant (None: back to the instance default); instance admins only,
    which the callers check."""
    rt = runtime_of(request)
    found = rt.identity.tenant(tenant)
    overrides = rt.quotas.set_overrides(found["id"], changes)
    audit(request, principal, "tenant.quotas", tenant_id=found["id"], target_type="tenant", target_id=found["id"],
          details={"changes": changes, "overrides": overrides})
    return {"tenant": found["slug"], **rt.quotas.view(found["id"])}


def audit_entries(request: Request, tenant_id: str | None, *, actor: str | None = None, action: str | None = None,
                  target: str | None = None, since: float | None = None, until: float | None = None,
                  before: int | None = None, limit: int = 50) -> dict[str, Any]:
    """A page of the audit log, newest first, and `next`: the `before` of the following page (None at the end)."""
    rows = runtime_of(request).audit.query(tenant_id=tenant_id, actor=actor, action=action, target=target,
                                           since=since, until=until, before_seq=before, limit=limit)
    return {"items": rows, "next": rows[-1]["seq"] if len(rows) == limit else None}


def _tenant_view(t: dict[str, Any]) -> dict[str, Any]:
    view = {"id": t["id"], "slug": t["slug"], "name": t["name"], "status": t["status"], "created_at": t["created_at"]}
    if "role" in t:
        view["role"] = t["role"]
    return view


HANDLERS = [list_tenants, create_tenant, get_tenant, update_tenant, delete_tenant, get_settings, update_settings,
            list_members, set_member, remove_member, list_keys, create_key, revoke_key, get_quotas, update_quotas,
            tenant_usage, own_usage, tenant_audit, instance_audit]
