"""The REST API at /api/v1: tenants, members, API keys, flows, executions, variables, credentials, audit.

Every handler names the permission it needs and goes through `Identity.authorize` (the same guard
the console uses); a principal without access to a tenant gets 404 for everything in it, one
without the permission 403. Every failure is an RFC 9457 problem document
(`application/problem+json`) whose `detail` says what to do; validation errors list the fields.
Every state change is written to the audit log with the actor, tenant, target, address and agent.

Handlers are plain functions run in Litestar's thread pool: they call the synchronous stores,
whose writes go through the group-commit writer bound to the web process's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import math
import re
from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.datastructures import Cookie
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, QueryParameter

from appliance import mail
from appliance.catalog import Conflict, FlowInvalid, NotFound
from appliance.identity import (
    KEY_PREFIX, PERMISSIONS, ROLES, SESSION_COOKIE, Access, Forbidden, Identity, Invalid, Principal, Unauthorized,
    roles_with, sha256, tenant_settings,
)
from appliance.runtime import Runtime
from appliance.usage import period, report, to_csv
from engine import FINAL

log = logging.getLogger("flowfuse.api")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
#: Largest epoch-seconds value a time filter accepts (year 5138): keeps the arithmetic finite.
EPOCH_MAX = 10**11


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Request bodies refuse unknown fields, so a typo is an error, not silently ignored."""


class TenantIn(Body):
    slug: str
    name: str | None = None


class TenantPatch(Body):
    name: str | None = None
    status: str | None = None


class UserIn(Body):
    email: str
    password: str
    name: str = ""
    is_admin: bool = False


class SignIn(Body):
    email: str
    password: str


class CodeIn(Body):
    code: str


class SetupIn(Body):
    email: str
    password: str


class InviteIn(Body):
    email: str
    role: str


class AcceptIn(Body):
    password: str | None = None
    name: str = ""


class ForgotIn(Body):
    email: str


class PasswordIn(Body):
    password: str


class SettingsIn(Body):
    require_mfa: bool | None = None


class MemberIn(Body):
    role: str


class KeyIn(Body):
    name: str
    role: str
    expires_at: float | None = None


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


# -- who is asking -----------------------------------------------------------------------------------------
def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def principal_of(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer ffk_...` or the session cookie.

    A request authenticated by cookie that changes state must carry the session's CSRF token in
    `X-CSRF-Token`; API keys are not sent by browsers on their own, so they need none.
    """
    identity = runtime_of(request).identity
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use `Authorization: Bearer ffk_...`")
        try:
            return identity.key_principal(token.strip())
        except Unauthorized as exc:
            audit(request, None, "api_key.refused", outcome="refused",
                  details={"reason": str(exc), "prefix": token.strip()[:12] if token.startswith(KEY_PREFIX) else None})
            raise
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized("sign in, or send an API key as `Authorization: Bearer ffk_...`")
    principal = identity.session_principal(cookie)
    if request.method not in _SAFE and request.headers.get("x-csrf-token") != principal.csrf:
        raise Forbidden("missing or wrong X-CSRF-Token header for a request made with the session cookie")
    return principal


def audit(request: Request, principal: Principal | None, action: str, *, tenant_id: str | None = None,
          target_type: str | None = None, target_id: str | None = None, outcome: str = "ok",
          details: dict[str, Any] | None = None) -> None:
    """One audit entry for this request (actor, tenant, action, target, address, agent)."""
    kind = principal.kind if principal else "anonymous"
    runtime_of(request).audit.record(
        action, actor_type=kind, actor_id=principal.id if principal else None,
        actor_label=principal.label if principal else None, tenant_id=tenant_id, target_type=target_type,
        target_id=target_id, ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"), outcome=outcome, details=details)


def _guard(request: Request, principal: Principal, tenant: str, permission: str) -> Access:
    try:
        return runtime_of(request).identity.authorize(principal, tenant, permission)
    except Forbidden as exc:  # a member lacking the permission: the tenant exists and is theirs to see
        audit(request, principal, "access.refused", tenant_id=runtime_of(request).identity.tenant(tenant)["id"],
              outcome="refused", details={"permission": permission, "reason": str(exc)})
        raise


# -- session -------------------------------------------------------------------------------------------------
@post("/session", sync_to_thread=True, summary="Sign in with email and password", opt={"public": True})
def sign_in(request: Request, data: SignIn) -> Response[dict]:
    """Failed attempts are throttled per account and per address with a growing delay (429 and
    Retry-After). A person with two-factor sign-in gets a pending session that only
    POST /session/mfa can complete."""
    identity = runtime_of(request).identity
    ip = request.client.host if request.client else "?"
    keys = (f"email:{data.email.strip().lower()}", f"ip:{ip}")
    wait = identity.throttle.wait_s(*keys)
    if wait > 0:
        audit(request, None, "auth.sign_in_throttled", outcome="refused", details={"email": data.email})
        raise TooManyAttempts(wait)
    user = identity.check_password(data.email, data.password)
    if user is None:
        identity.throttle.failed(*keys)
        audit(request, None, "auth.sign_in_failed", outcome="refused", details={"email": data.email})
        raise Unauthorized("wrong email or password")
    identity.throttle.succeeded(keys[0])
    pending = bool(user["mfa_enabled"])
    token, csrf = identity.start_session(user["id"], ip, request.headers.get("user-agent"), mfa_pending=pending)
    principal = Principal("user", user["id"], user["email"], bool(user["is_admin"]))
    audit(request, principal, "auth.sign_in_password" if pending else "auth.sign_in", target_type="user",
          target_id=user["id"])
    return Response({"user": user, "csrf_token": csrf, "mfa_required": pending},
                    cookies=[_session_cookie(request, token, identity.session_ttl_s)])


@post("/session/mfa", sync_to_thread=True, summary="Finish signing in with a TOTP or recovery code",
      opt={"public": True})
def sign_in_mfa(request: Request, data: CodeIn) -> dict:
    identity = runtime_of(request).identity
    token = request.cookies.get(SESSION_COOKIE) or ""
    ip = request.client.host if request.client else "?"
    wait = identity.throttle.wait_s(f"mfa:{sha256(token)}", f"ip:{ip}")
    if wait > 0:
        raise TooManyAttempts(wait)
    try:
        principal = identity.complete_mfa(token, data.code)
    except Unauthorized:
        identity.throttle.failed(f"mfa:{sha256(token)}", f"ip:{ip}")
        audit(request, None, "auth.mfa_failed", outcome="refused")
        raise
    audit(request, principal, "auth.sign_in", target_type="user", target_id=principal.id, details={"mfa": True})
    return {"signed_in": True}


@post("/setup", sync_to_thread=True, summary="Create the first instance admin (only while nobody exists)",
      opt={"public": True})
def set_up(request: Request, data: SetupIn) -> Response[dict]:
    user = runtime_of(request).identity.set_up(data.email, data.password)
    principal = Principal("user", user["id"], user["email"], True)
    audit(request, principal, "instance.set_up", target_type="user", target_id=user["id"],
          details={"email": user["email"]})
    return Response(user, status_code=201)


@delete("/session", sync_to_thread=True, status_code=204, summary="Sign out (this session)")
def sign_out(request: Request, principal: Principal) -> Response[None]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        runtime_of(request).identity.end_session(cookie)
    audit(request, principal, "auth.sign_out", target_type="user", target_id=principal.id)
    return Response(None, status_code=204, cookies=[_session_cookie(request, "", 0)])


@delete("/sessions", sync_to_thread=True, status_code=204, summary="Sign out of every session")
def sign_out_everywhere(request: Request, principal: Principal) -> Response[None]:
    _person(principal)
    ended = runtime_of(request).identity.end_all_sessions(principal.id)
    audit(request, principal, "auth.sign_out_all", target_type="user", target_id=principal.id,
          details={"sessions": ended})
    return Response(None, status_code=204, cookies=[_session_cookie(request, "", 0)])


@get("/roles", sync_to_thread=False, summary="The roles and the permission table (which roles have each permission)")
def list_roles(principal: Principal) -> dict:
    return {"roles": list(ROLES), "permissions": {p: roles_with(p) for p in PERMISSIONS}}


@get("/me", sync_to_thread=True, summary="Who the caller is, and their tenants")
def me(request: Request, principal: Principal) -> dict:
    identity = runtime_of(request).identity
    tenants = [{"slug": t["slug"], "name": t["name"], "role": identity.role_in(principal, t["id"])}
               for t in identity.tenants_of(principal)]
    return {"kind": principal.kind, "id": principal.id, "label": principal.label, "is_admin": principal.is_admin,
            "tenants": tenants}


# -- two-factor sign-in -----------------------------------------------------------------------------------
@post("/me/mfa", sync_to_thread=True, summary="Start enrolling an authenticator app (secret, otpauth URI, QR code)")
def enrol_mfa(request: Request, principal: Principal) -> Response[dict]:
    _person(principal)
    enrolment = runtime_of(request).identity.start_mfa_enrolment(principal.id)
    audit(request, principal, "mfa.enrol_start", target_type="user", target_id=principal.id)
    return Response(enrolment, status_code=201, headers={"cache-control": "no-store"})


@post("/me/mfa/confirm", sync_to_thread=True, status_code=200,
      summary="Turn two-factor sign-in on with a first code; returns ten recovery codes, shown once")
def confirm_mfa(request: Request, principal: Principal, data: CodeIn) -> Response[dict]:
    _person(principal)
    codes = runtime_of(request).identity.confirm_mfa(principal.id, data.code)
    audit(request, principal, "mfa.enable", target_type="user", target_id=principal.id)
    return Response({"recovery_codes": codes}, headers={"cache-control": "no-store"})


@post("/me/mfa/disable", sync_to_thread=True, status_code=200,
      summary="Turn two-factor sign-in off (needs a current code or a recovery code)")
def disable_mfa(request: Request, principal: Principal, data: CodeIn) -> dict:
    _person(principal)
    runtime_of(request).identity.disable_mfa(principal.id, data.code)
    audit(request, principal, "mfa.disable", target_type="user", target_id=principal.id)
    return {"mfa_enabled": False}


# -- tenant settings, invitations and password resets ------------------------------------------------------
@get("/tenants/{tenant:str}/settings", sync_to_thread=True, summary="Tenant settings",
     opt={"permission": "tenant.read"})
def get_settings(access: Access, tenant: str) -> dict:
    return tenant_settings(access.tenant)


@patch("/tenants/{tenant:str}/settings", sync_to_thread=True, summary="Change tenant settings (owners)",
       opt={"permission": "tenant.settings"})
def update_settings(request: Request, principal: Principal, access: Access, tenant: str, data: SettingsIn) -> dict:
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    updated = runtime_of(request).identity.update_settings(access.tenant_id, changes)
    audit(request, principal, "tenant.settings", tenant_id=access.tenant_id, target_type="tenant",
          target_id=access.tenant_id, details=changes)
    return updated


@get("/tenants/{tenant:str}/invitations", sync_to_thread=True, summary="Invitations (never their tokens)",
     opt={"permission": "members.manage"})
def list_invitations(request: Request, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.invitations(access.tenant_id)


@post("/tenants/{tenant:str}/invitations", sync_to_thread=True,
      summary="Invite someone by email; the link is in this response only", opt={"permission": "members.manage"})
def invite(request: Request, principal: Principal, access: Access, tenant: str, data: InviteIn) -> Response[dict]:
    rt = runtime_of(request)
    meta, token = rt.identity.invite(access, principal, data.email, data.role)
    audit(request, principal, "invitation.create", tenant_id=access.tenant_id, target_type="invitation",
          target_id=meta["id"], details={"email": meta["email"], "role": meta["role"]})
    link = f"{rt.settings.base_url}/invitations/{token}"
    mailed = _mail(rt, mail.invitation, meta["email"], access.tenant["name"], meta["role"], link, principal.label)
    return Response({**meta, "token": token, "link": link, **mailed}, status_code=201,
                    headers={"cache-control": "no-store"})


@delete("/tenants/{tenant:str}/invitations/{invitation_id:str}", sync_to_thread=True, status_code=204,
        summary="Withdraw an invitation", opt={"permission": "members.manage"})
def withdraw_invitation(request: Request, principal: Principal, access: Access, tenant: str,
                        invitation_id: str) -> None:
    runtime_of(request).identity.revoke_invitation(access.tenant_id, invitation_id)
    audit(request, principal, "invitation.revoke", tenant_id=access.tenant_id, target_type="invitation",
          target_id=invitation_id)


@post("/invitations/{token:str}/accept", sync_to_thread=True, status_code=200,
      summary="Join a tenant with an invitation link (a new person sets a password)", opt={"public": True})
def accept_invitation(request: Request, token: str, data: AcceptIn) -> dict:
    identity = runtime_of(request).identity
    signed_in = None
    if request.cookies.get(SESSION_COOKIE):
        with contextlib.suppress(Unauthorized):
            signed_in = identity.session_principal(request.cookies[SESSION_COOKIE])
    user, invitation = identity.accept_invitation(token, data.password, data.name, signed_in)
    actor = Principal("user", user["id"], user["email"], bool(user["is_admin"]))
    audit(request, actor, "invitation.accept", tenant_id=invitation["tenant_id"], target_type="invitation",
          target_id=invitation["id"], details={"role": invitation["role"]})
    return {"user": user, "tenant": identity.tenant(invitation["tenant_id"])["slug"], "role": invitation["role"]}


@post("/users/{user_id:str}/password-reset", sync_to_thread=True, status_code=201,
      summary="Make a one-use password reset link for a person (instance admins)",
      opt={"admin": "resetting a password"})
def start_password_reset(request: Request, principal: Principal, user_id: str) -> Response[dict]:
    rt = runtime_of(request)
    token = rt.identity.start_password_reset(user_id)
    link = f"{rt.settings.base_url}/password-reset/{token}"
    audit(request, principal, "user.password_reset_link", target_type="user", target_id=user_id)
    mailed = _mail(rt, mail.password_reset, rt.identity.user(user_id)["email"], link)
    return Response({"token": token, "link": link, **mailed}, status_code=201, headers={"cache-control": "no-store"})


@post("/password-reset", sync_to_thread=True, status_code=202, opt={"public": True},
      summary="Forgot password: mail a reset link (needs [smtp]; the answer is the same for unknown emails)")
def forgot_password(request: Request, data: ForgotIn) -> dict:
    rt = runtime_of(request)
    if not mail.enabled(rt.settings.smtp):
        raise Conflict("this instance sends no mail; ask an instance admin for a password reset link")
    ip = request.client.host if request.client else "?"
    keys = (f"reset:{data.email.strip().lower()}", f"ip:{ip}")
    wait = rt.identity.throttle.wait_s(*keys)
    if wait > 0:
        raise TooManyAttempts(wait)
    rt.identity.throttle.failed(*keys)  # every request counts: no mailbox gets flooded
    user = rt.identity.user_by_email(data.email)
    if user is not None and user["status"] == "active":
        token = rt.identity.start_password_reset(user["id"])
        _mail(rt, mail.password_reset, user["email"], f"{rt.settings.base_url}/password-reset/{token}")
        audit(request, None, "user.password_reset_mail", target_type="user", target_id=user["id"])
    return {"status": "if the address belongs to an account, a reset link is on its way"}


@post("/password-reset/{token:str}", sync_to_thread=True, status_code=200,
      summary="Set a new password with a reset link (ends every session)", opt={"public": True})
def reset_password(request: Request, token: str, data: PasswordIn) -> dict:
    user = runtime_of(request).identity.reset_password(token, data.password)
    audit(request, Principal("user", user["id"], user["email"]), "user.password_reset", target_type="user",
          target_id=user["id"])
    return {"user": user}


# -- tenants and users (instance admins) -----------------------------------------------------------------------
@get("/tenants", sync_to_thread=True, summary="Tenants the caller can see")
def list_tenants(request: Request, principal: Principal) -> list[dict]:
    return [_tenant_view(t) for t in runtime_of(request).identity.tenants_of(principal)]


@post("/tenants", sync_to_thread=True, summary="Create a tenant (instance admins)", opt={"admin": "creating a tenant"})
def create_tenant(request: Request, principal: Principal, data: TenantIn) -> Response[dict]:
    tenant = runtime_of(request).identity.create_tenant(data.slug, data.name)
    audit(request, principal, "tenant.create", tenant_id=tenant["id"], target_type="tenant", target_id=tenant["id"],
          details={"slug": tenant["slug"]})
    return Response(_tenant_view(tenant), status_code=201)


@get("/tenants/{tenant:str}", sync_to_thread=True, summary="One tenant", opt={"permission": "tenant.read"})
def get_tenant(request: Request, principal: Principal, access: Access, tenant: str) -> dict:
    return _tenant_view(access.tenant)


@patch("/tenants/{tenant:str}", sync_to_thread=True,
       summary="Rename (owners) or suspend and resume (instance admins) a tenant",
       opt={"permission": "tenant.settings"})
def update_tenant(request: Request, principal: Principal, access: Access, tenant: str, data: TenantPatch) -> dict:
    if data.status is not None:
        Identity.require_admin(principal, "suspending or resuming a tenant")
    updated = runtime_of(request).identity.update_tenant(access.tenant_id, name=data.name, status=data.status)
    action = {"suspended": "tenant.suspend", "active": "tenant.resume"}.get(data.status or "", "tenant.update")
    audit(request, principal, action, tenant_id=access.tenant_id, target_type="tenant", target_id=access.tenant_id,
          details={k: v for k, v in (("name", data.name), ("status", data.status)) if v is not None})
    runtime_of(request).catalog.invalidate()  # webhooks and schedules of a suspended tenant stop at once
    return _tenant_view(updated)


@delete("/tenants/{tenant:str}", sync_to_thread=True, status_code=204,
        summary="Delete a tenant and all its data (instance admins)", opt={"admin": "deleting a tenant"})
def delete_tenant(request: Request, principal: Principal, tenant: str) -> None:
    rt = runtime_of(request)
    found = rt.identity.tenant(tenant)
    counts = rt.delete_tenant(found["id"])
    audit(request, principal, "tenant.delete", tenant_id=found["id"], target_type="tenant", target_id=found["id"],
          details={"slug": found["slug"], **counts})


@post("/users", sync_to_thread=True, summary="Create a user (instance admins)", opt={"admin": "creating a user"})
def create_user(request: Request, principal: Principal, data: UserIn) -> Response[dict]:
    user = runtime_of(request).identity.create_user(data.email, data.password, name=data.name, is_admin=data.is_admin)
    audit(request, principal, "user.create", target_type="user", target_id=user["id"],
          details={"email": user["email"], "is_admin": bool(user["is_admin"])})
    return Response(user, status_code=201)


# -- members and API keys ----------------------------------------------------------------------------------
@get("/tenants/{tenant:str}/members", sync_to_thread=True, summary="Members and their roles",
     opt={"permission": "members.read"})
def list_members(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.members(access.tenant_id)


@put("/tenants/{tenant:str}/members/{user_id:str}", sync_to_thread=True,
     summary="Add a member or change their role", opt={"permission": "members.manage"})
def set_member(request: Request, principal: Principal, access: Access,
               tenant: str, user_id: str, data: MemberIn) -> dict:
    member = runtime_of(request).identity.set_role(access, user_id, data.role)
    audit(request, principal, "member.set_role", tenant_id=access.tenant_id, target_type="user", target_id=user_id,
          details={"role": data.role})
    return member


@delete("/tenants/{tenant:str}/members/{user_id:str}", sync_to_thread=True, status_code=204,
        summary="Remove a member", opt={"permission": "members.manage"})
def remove_member(request: Request, principal: Principal, access: Access, tenant: str, user_id: str) -> None:
    runtime_of(request).identity.remove_member(access, user_id)
    audit(request, principal, "member.remove", tenant_id=access.tenant_id, target_type="user", target_id=user_id)


@get("/tenants/{tenant:str}/api-keys", sync_to_thread=True, summary="API keys (never the keys themselves)",
     opt={"permission": "api_keys.manage"})
def list_keys(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.keys(access.tenant_id)


@post("/tenants/{tenant:str}/api-keys", sync_to_thread=True,
      summary="Create an API key; the key is in this response only", opt={"permission": "api_keys.manage"})
def create_key(request: Request, principal: Principal, access: Access, tenant: str, data: KeyIn) -> Response[dict]:
    meta, key = runtime_of(request).identity.create_key(access, principal, data.name, data.role, data.expires_at)
    audit(request, principal, "api_key.create", tenant_id=access.tenant_id, target_type="api_key",
          target_id=meta["id"], details={"name": meta["name"], "role": meta["role"]})
    return Response({**meta, "key": key}, status_code=201)


@post("/tenants/{tenant:str}/api-keys/{key_id:str}/revoke", sync_to_thread=True, status_code=200,
      summary="Revoke an API key (it stops working on the next request)", opt={"permission": "api_keys.manage"})
def revoke_key(request: Request, principal: Principal, access: Access, tenant: str, key_id: str) -> dict:
    meta = runtime_of(request).identity.revoke_key(access.tenant_id, key_id)
    audit(request, principal, "api_key.revoke", tenant_id=access.tenant_id, target_type="api_key", target_id=key_id)
    return meta


# -- flows --------------------------------------------------------------------------------------------------
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
    flow = runtime_of(request).catalog.validate(data)
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
    return {"name": name, "version": version, "definition": _version(request, access, name, version)}


@get("/tenants/{tenant:str}/flows/{name:str}/diff", sync_to_thread=True,
     summary="Unified diff between two versions of a flow", opt={"permission": "flows.read"})
def diff_versions(request: Request, principal: Principal, access: Access, tenant: str, name: str,
                  from_: int = QueryParameter(name="from", ge=1), to: int = Parameter(ge=1)) -> dict:
    a = json.dumps(_version(request, access, name, from_), indent=2, sort_keys=True).splitlines()
    b = json.dumps(_version(request, access, name, to), indent=2, sort_keys=True).splitlines()
    diff = difflib.unified_diff(a, b, f"{name} v{from_}", f"{name} v{to}", lineterm="")
    return {"name": name, "from": from_, "to": to, "diff": "\n".join(diff)}


@post("/tenants/{tenant:str}/flows/{name:str}/versions/{version:int}/restore", sync_to_thread=True,
      status_code=200, summary="Save an old version again as the newest one", opt={"permission": "flows.write"})
def restore_version(request: Request, principal: Principal, access: Access,
                    tenant: str, name: str, version: int) -> dict:
    row = runtime_of(request).catalog.save_flow(access.tenant_id, _version(request, access, name, version))
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


# -- executions --------------------------------------------------------------------------------------------
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


# -- variables and credentials -----------------------------------------------------------------------------
@get("/tenants/{tenant:str}/variables", sync_to_thread=True, summary="Tenant variables (`vars` in expressions)",
     opt={"permission": "variables.read"})
def list_variables(request: Request, principal: Principal, access: Access, tenant: str) -> dict:
    return runtime_of(request).catalog.variables(access.tenant_id)


@put("/tenants/{tenant:str}/variables/{name:str}", sync_to_thread=True, summary="Set a variable",
     opt={"permission": "variables.write"})
def set_variable(request: Request, principal: Principal, access: Access,
                 tenant: str, name: str, data: VariableIn) -> dict:
    if not name.isidentifier():
        raise Invalid("name", "use letters, digits and underscores, not starting with a digit")
    runtime_of(request).catalog.set_variable(access.tenant_id, name, data.value)
    audit(request, principal, "variable.set", tenant_id=access.tenant_id, target_type="variable", target_id=name)
    return {"name": name, "value": data.value}


@delete("/tenants/{tenant:str}/variables/{name:str}", sync_to_thread=True, status_code=204,
        summary="Delete a variable", opt={"permission": "variables.write"})
def delete_variable(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> None:
    if not runtime_of(request).catalog.delete_variable(access.tenant_id, name):
        raise NotFound(f"no variable {name!r}")
    audit(request, principal, "variable.delete", tenant_id=access.tenant_id, target_type="variable", target_id=name)


@get("/tenants/{tenant:str}/credentials", sync_to_thread=True,
     summary="Credentials: names, types and which fields are set, never their values",
     opt={"permission": "credentials.read"})
def list_credentials(request: Request, principal: Principal, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).vault.list(access.tenant_id)


@post("/tenants/{tenant:str}/credentials", sync_to_thread=True,
      summary="Create or replace a credential (its values are write-only)", opt={"permission": "credentials.write"})
def put_credential(request: Request, principal: Principal, access: Access,
                   tenant: str, data: CredentialIn) -> Response[dict]:
    vault = runtime_of(request).vault
    cid = vault.put(access.tenant_id, data.name, data.type, data.data)
    audit(request, principal, "credential.set", tenant_id=access.tenant_id, target_type="credential", target_id=cid,
          details={"name": data.name, "type": data.type, "fields": sorted(data.data)})
    return Response(vault.describe(access.tenant_id, cid), status_code=201)


@patch("/tenants/{tenant:str}/credentials/{credential_id:str}", sync_to_thread=True,
       summary="Rename a credential or change some of its fields (the others keep their values)",
       opt={"permission": "credentials.write"})
def update_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str,
                      data: CredentialPatch) -> dict:
    meta = runtime_of(request).vault.update(access.tenant_id, credential_id, name=data.name, data=data.data)
    audit(request, principal, "credential.update", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id, details={"name": meta["name"], "fields": sorted(data.data or {})})
    return meta


@post("/tenants/{tenant:str}/credentials/{credential_id:str}/test", sync_to_thread=True, status_code=200,
      summary="Try a credential: GET a URL with it and report the HTTP status",
      opt={"permission": "credentials.write"})
def test_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str,
                    data: CredentialTest) -> dict:
    result = runtime_of(request).try_credential(access.tenant_id, credential_id, data.url)
    audit(request, principal, "credential.test", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id, outcome="ok" if result["ok"] else "failed",
          details={"url": data.url, "status": result.get("status")})
    return result


@delete("/tenants/{tenant:str}/credentials/{credential_id:str}", sync_to_thread=True, status_code=204,
        summary="Delete a credential", opt={"permission": "credentials.write"})
def delete_credential(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str) -> None:
    if not runtime_of(request).vault.delete(access.tenant_id, credential_id):
        raise NotFound(f"no credential {credential_id!r}")
    audit(request, principal, "credential.delete", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id)


# -- audit ---------------------------------------------------------------------------------------------------
@get("/tenants/{tenant:str}/audit", sync_to_thread=True,
     summary="The tenant's audit log, newest first; page with `before` = the last seq of the previous page",
     opt={"permission": "audit.read"})
def tenant_audit(request: Request, principal: Principal, access: Access, tenant: str, actor: str | None = None,
                 action: str | None = None, target: str | None = None, since: float | None = None,
                 until: float | None = None, before: int | None = None,
                 limit: int = Parameter(default=50, ge=1, le=500)) -> dict:
    rows = runtime_of(request).audit.query(tenant_id=access.tenant_id, actor=actor, action=action, target=target,
                                           since=since, until=until, before_seq=before, limit=limit)
    return {"items": rows, "next": rows[-1]["seq"] if len(rows) == limit else None}


@get("/audit", sync_to_thread=True, summary="The whole audit log (instance admins)",
     opt={"admin": "reading the whole audit log"})
def instance_audit(request: Request, principal: Principal, tenant: str | None = None, actor: str | None = None,
                   action: str | None = None, target: str | None = None, since: float | None = None,
                   until: float | None = None, before: int | None = None,
                   limit: int = Parameter(default=50, ge=1, le=500)) -> dict:
    tenant_id = runtime_of(request).identity.tenant(tenant)["id"] if tenant else None
    rows = runtime_of(request).audit.query(tenant_id=tenant_id, actor=actor, action=action, target=target,
                                           since=since, until=until, before_seq=before, limit=limit)
    return {"items": rows, "next": rows[-1]["seq"] if len(rows) == limit else None}


# -- quotas and usage ----------------------------------------------------------------------------------------
class QuotasIn(Body):
    """Overrides of the instance's [quotas] for one tenant: 0 is unlimited, null goes back to the instance
    default, a quota left out stays as it is."""

    active_flows: int | None | msgspec.UnsetType = msgspec.UNSET
    executions_per_month: int | None | msgspec.UnsetType = msgspec.UNSET
    concurrent_executions: int | None | msgspec.UnsetType = msgspec.UNSET
    webhook_requests_per_minute: int | None | msgspec.UnsetType = msgspec.UNSET
    retention_days: int | None | msgspec.UnsetType = msgspec.UNSET


@get("/tenants/{tenant:str}/quotas", sync_to_thread=True,
     summary="The tenant's quotas (0: unlimited), where each comes from, and what it uses of them",
     opt={"permission": "tenant.read"})
def get_quotas(request: Request, access: Access, tenant: str) -> dict:
    return {"tenant": access.tenant["slug"], **runtime_of(request).quotas.view(access.tenant_id)}


@patch("/tenants/{tenant:str}/quotas", sync_to_thread=True,
       summary="Override the tenant's quotas (instance admins)", opt={"admin": "changing quotas"})
def update_quotas(request: Request, principal: Principal, tenant: str, data: QuotasIn) -> dict:
    rt = runtime_of(request)
    found = rt.identity.tenant(tenant)
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    overrides = rt.quotas.set_overrides(found["id"], changes)
    audit(request, principal, "tenant.quotas", tenant_id=found["id"], target_type="tenant", target_id=found["id"],
          details={"changes": changes, "overrides": overrides})
    return {"tenant": found["slug"], **rt.quotas.view(found["id"])}


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
    return _usage(request, _guard(request, principal, tenant, "usage.read"), from_, to, format_)


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


# -- helpers -------------------------------------------------------------------------------------------------
class TooManyAttempts(Exception):
    def __init__(self, wait_s: float):
        super().__init__(f"too many failed attempts; try again in {math.ceil(wait_s)} s")
        self.wait_s = wait_s


def _mail(rt: Runtime, compose, to: str, *args: Any) -> dict[str, Any]:
    """Mail a link if [smtp] is set up: {"mailed": bool} and, when sending failed, why."""
    if not mail.enabled(rt.settings.smtp):
        return {"mailed": False}
    try:
        compose(rt.settings.smtp, to, *args)
    except mail.MailError as exc:
        return {"mailed": False, "mail_error": str(exc)}
    return {"mailed": True}


def _person(principal: Principal) -> None:
    if principal.kind != "user":
        raise Forbidden("only a signed-in person has this; API keys do not")


def _session_cookie(request: Request, token: str, max_age: float) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, httponly=True, samesite="lax", path="/",
                  secure=request.url.scheme == "https", max_age=int(max_age))


def _tenant_view(t: dict[str, Any]) -> dict[str, Any]:
    view = {"id": t["id"], "slug": t["slug"], "name": t["name"], "status": t["status"], "created_at": t["created_at"]}
    if "role" in t:
        view["role"] = t["role"]
    return view


def _flow_view(row, definition: bool = False) -> dict[str, Any]:
    view = {"id": row.id, "name": row.name, "version": row.version, "active": row.active,
            "trigger": row.trigger_type, "updated_at": row.updated_at}
    if row.webhook_path:
        view["webhook"] = {"method": row.webhook_method, "path": row.webhook_path}
    if definition:
        view["definition"] = row.doc
    return view


def _version(request: Request, access: Access, name: str, version: int) -> dict[str, Any]:
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


# -- errors: RFC 9457 problem details ---------------------------------------------------------------------
def problem(status: int, title: str, detail: str, errors: list[dict] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(body, status_code=status, media_type="application/problem+json", headers=headers)


def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Unauthorized):
        return problem(401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="flowfuse"'})
    if isinstance(exc, TooManyAttempts):
        return problem(429, "Too Many Requests", str(exc), headers={"Retry-After": str(math.ceil(exc.wait_s))})
    if isinstance(exc, Forbidden):
        return problem(403, "Forbidden", str(exc))
    if isinstance(exc, NotFound) or type(exc) is LookupError:  # (a KeyError is a bug, not a 404)
        return problem(404, "Not Found", str(exc).strip("'\""))
    if isinstance(exc, Conflict):
        return problem(409, "Conflict", str(exc))
    if isinstance(exc, Invalid):
        return problem(422, "Invalid", str(exc), [{"field": exc.field, "message": exc.message}])
    if isinstance(exc, FlowInvalid):
        errors = [{"field": f"nodes.{e.node}" if e.node else "flow", "message": e.message} for e in exc.errors]
        return problem(422, "Invalid flow", f"the flow has {len(errors)} problem(s)", errors)
    if isinstance(exc, ValidationException):
        errors = [_field_error(e) for e in (exc.extra or []) if isinstance(e, dict)]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail or "malformed request"
        return problem(400, "Bad Request", detail, errors)
    if isinstance(exc, ValueError):  # the vault's and the stores' validation messages
        return problem(422, "Invalid", str(exc))
    if isinstance(exc, HTTPException):
        return problem(exc.status_code, exc.detail or "Error", exc.detail or "", headers=exc.headers)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "Internal Server Error", "something went wrong on our side; the error is in the server log")


def _field_error(error: dict[str, Any]) -> dict[str, str]:
    """Litestar's validation error as {field, message}; a body-level message ("Object contains
    unknown field `colour`") names its field in backquotes, and that field is the one to point at."""
    message = str(error.get("message"))
    named = re.search(r"field `([^`]+)`", message)
    field = named.group(1) if named else str(error.get("key") or error.get("source") or "body")
    return {"field": field, "message": message}


async def authenticate(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The API's one guard. It runs before the body is read, so a caller without access to a
    tenant learns nothing about it, not even which fields a request there would need."""
    if handler.opt.get("public"):
        return
    request = connection
    principal = await asyncio.to_thread(principal_of, request)
    request.state.principal = principal
    if "admin" in handler.opt:
        Identity.require_admin(principal, handler.opt["admin"])
    permission = handler.opt.get("permission")
    if permission:
        request.state.access = await asyncio.to_thread(_guard, request, principal, connection.path_params["tenant"],
                                                       permission)


def _principal(request: Request) -> Principal:
    return request.state.principal


def _access(request: Request) -> Access:
    return request.state.access


HANDLERS = [sign_in, sign_in_mfa, set_up, sign_out, sign_out_everywhere, me, list_roles, enrol_mfa, confirm_mfa, disable_mfa,
            get_settings, update_settings, list_invitations, invite, withdraw_invitation, accept_invitation,
            start_password_reset, forgot_password, reset_password, list_tenants, create_tenant, get_tenant, update_tenant,
            delete_tenant, create_user, list_members, set_member, remove_member, list_keys, create_key, revoke_key,
            list_flows, save_flow, validate_flow, get_flow, update_flow, delete_flow, list_versions, get_version,
            diff_versions, restore_version, activate_flow, deactivate_flow, run_flow, list_executions,
            get_execution, cancel_execution, retry_execution, list_variables, set_variable, delete_variable, list_credentials,
            put_credential, update_credential, test_credential, delete_credential, tenant_audit, instance_audit,
            get_quotas, update_quotas, tenant_usage, own_usage]

class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct):
    """An RFC 9457 problem document: every error of the API has this shape."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


_PROBLEMS = {code: ResponseSpec(data_container=Problem, media_type="application/problem+json", description=text)
             for code, text in ((400, "Malformed request: the body or a parameter does not fit"),
                                (401, "No valid API key or session"),
                                (403, "Not allowed for this role, or missing CSRF token"),
                                (404, "Not found, or not visible to the caller"),
                                (409, "Conflicts with the current state"),
                                (422, "Invalid values; `errors` names the fields"),
                                (429, "Too many attempts; see Retry-After"))}
for _handler in HANDLERS:  # documented in the OpenAPI document, so clients (and Schemathesis) know them
    _handler.responses = {**_PROBLEMS, **(_handler.responses or {})}

router = Router(path="/api/v1", route_handlers=HANDLERS, guards=[authenticate],
                dependencies={"principal": Provide(_principal, sync_to_thread=False),
                              "access": Provide(_access, sync_to_thread=False)},
                exception_handlers={Exception: _on_error}, tags=["v1"])

__all__ = ["router", "problem", "Body"]
