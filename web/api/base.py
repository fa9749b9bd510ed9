"""What every API module shares: the base of request bodies, the caller (API key or session),
the one guard, audit entries, and errors as RFC 9457 problem documents."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler

from appliance.catalog import Conflict, FlowInvalid, NotFound
from appliance.db import DiskFull
from appliance.identity import (
    KEY_PREFIX,
    SESSION_COOKIE,
    Access,
    Forbidden,
    Identity,
    Invalid,
    Principal,
    Unauthorized,
)
from appliance.runtime import Runtime

log = logging.getLogger("flowfuse.api")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
#: Largest epoch-seconds value a time filter accepts (year 5138): keeps the arithmetic finite.
EPOCH_MAX = 10**11


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Request bodies refuse unknown fields, so a typo is an error, not silently ignored."""


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


def check_access(request: Request, principal: Principal, tenant: str, permission: str) -> Access:
    try:
        return runtime_of(request).identity.authorize(principal, tenant, permission)
    except Forbidden as exc:  # a member lacking the permission: the tenant exists and is theirs to see
        audit(request, principal, "access.refused", tenant_id=runtime_of(request).identity.tenant(tenant)["id"],
              outcome="refused", details={"permission": permission, "reason": str(exc)})
        raise


class TooManyAttempts(Exception):
    def __init__(self, wait_s: float):
        super().__init__(f"too many failed attempts; try again in {math.ceil(wait_s)} s")
        self.wait_s = wait_s


def require_person(principal: Principal) -> None:
    if principal.kind != "user":
        raise Forbidden("only a signed-in person has this; API keys do not")


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


def problem(status: int, title: str, detail: str, errors: list[dict] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(body, status_code=status, media_type="application/problem+json", headers=headers)


def _field_error(error: dict[str, Any]) -> dict[str, str]:
    """Litestar's validation error as {field, message}; a body-level message ("Object contains
    unknown field `colour`") names its field in backquotes, and that field is the one to point at."""
    message = str(error.get("message"))
    named = re.search(r"field `([^`]+)`", message)
    field = named.group(1) if named else str(error.get("key") or error.get("source") or "body")
    return {"field": field, "message": message}


def on_error(request: Request, exc: Exception) -> Response:
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
    if isinstance(exc, DiskFull):
        return problem(507, "Insufficient Storage", str(exc))
    if isinstance(exc, ValueError):  # the vault's and the stores' validation messages
        return problem(422, "Invalid", str(exc))
    if isinstance(exc, HTTPException):
        return problem(exc.status_code, exc.detail or "Error", exc.detail or "", headers=exc.headers)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "Internal Server Error", "something went wrong on our side; the error is in the server log")


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
        request.state.access = await asyncio.to_thread(check_access, request, principal, connection.path_params["tenant"],
                                                       permission)


def principal_dependency(request: Request) -> Principal:
    return request.state.principal


def access_dependency(request: Request) -> Access:
    return request.state.access
