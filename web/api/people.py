"""People: signing in and out, two-factor sign-in, first-run set-up, users, invitations,
password resets, and the permission table."""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie

from appliance import mail
from appliance.catalog import Conflict
from appliance.identity import (
    PERMISSIONS,
    ROLES,
    SESSION_COOKIE,
    Access,
    Principal,
    Unauthorized,
    roles_with,
    sha256,
)
from appliance.runtime import Runtime

from .base import Body, TooManyAttempts, audit, require_person, runtime_of


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


@post("/session", sync_to_thread=True, summary="Sign in with email and password", opt={"public": True})
def sign_in(request: Request, data: SignIn) -> Response[dict]:
    """Failed attempts are throttled per account and per address with a growing delay (429 and
    Retry-After). A person with two-factor sign-in gets a pending session that only
    POST /session/mfa can complete."""
    user, token, csrf = password_step(request, data.email, data.password)
    return Response({"user": user, "csrf_token": csrf, "mfa_required": bool(user["mfa_enabled"])},
                    cookies=[session_cookie(request, token, runtime_of(request).identity.session_ttl_s)])


@post("/session/mfa", sync_to_thread=True, summary="Finish signing in with a TOTP or recovery code",
      opt={"public": True})
def sign_in_mfa(request: Request, data: CodeIn) -> dict:
    code_step(request, data.code)
    return {"signed_in": True}


def password_step(request: Request, email: str, password: str) -> tuple[dict[str, Any], str, str]:
    """First step of signing in (API and console alike): (user, session cookie value, CSRF token).
    Throttled, audited; the session is pending when the person has two-factor sign-in."""
    identity = runtime_of(request).identity
    ip = request.client.host if request.client else "?"
    keys = (f"email:{email.strip().lower()}", f"ip:{ip}")
    wait = identity.throttle.wait_s(*keys)
    if wait > 0:
        audit(request, None, "auth.sign_in_throttled", outcome="refused", details={"email": email})
        raise TooManyAttempts(wait)
    user = identity.check_password(email, password)
    if user is None:
        identity.throttle.failed(*keys)
        audit(request, None, "auth.sign_in_failed", outcome="refused", details={"email": email})
        raise Unauthorized("wrong email or password")
    identity.throttle.succeeded(keys[0])
    pending = bool(user["mfa_enabled"])
    token, csrf = identity.start_session(user["id"], ip, request.headers.get("user-agent"), mfa_pending=pending)
    principal = Principal("user", user["id"], user["email"], bool(user["is_admin"]))
    audit(request, principal, "auth.sign_in_password" if pending else "auth.sign_in", target_type="user",
          target_id=user["id"])
    return user, token, csrf


def code_step(request: Request, code: str) -> Principal:
    """Second step: a TOTP or recovery code completes the pending session in the cookie."""
    identity = runtime_of(request).identity
    token = request.cookies.get(SESSION_COOKIE) or ""
    ip = request.client.host if request.client else "?"
    keys = (f"mfa:{sha256(token)}", f"ip:{ip}")
    wait = identity.throttle.wait_s(*keys)
    if wait > 0:
        raise TooManyAttempts(wait)
    try:
        principal = identity.complete_mfa(token, code)
    except Unauthorized:
        identity.throttle.failed(*keys)
        audit(request, None, "auth.mfa_failed", outcome="refused")
        raise
    audit(request, principal, "auth.sign_in", target_type="user", target_id=principal.id, details={"mfa": True})
    return principal


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
    return Response(None, status_code=204, cookies=[session_cookie(request, "", 0)])


@delete("/sessions", sync_to_thread=True, status_code=204, summary="Sign out of every session")
def sign_out_everywhere(request: Request, principal: Principal) -> Response[None]:
    require_person(principal)
    ended = runtime_of(request).identity.end_all_sessions(principal.id)
    audit(request, principal, "auth.sign_out_all", target_type="user", target_id=principal.id,
          details={"sessions": ended})
    return Response(None, status_code=204, cookies=[session_cookie(request, "", 0)])


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


@post("/me/mfa", sync_to_thread=True, summary="Start enrolling an authenticator app (secret, otpauth URI, QR code)")
def enrol_mfa(request: Request, principal: Principal) -> Response[dict]:
    require_person(principal)
    enrolment = runtime_of(request).identity.start_mfa_enrolment(principal.id)
    audit(request, principal, "mfa.enrol_start", target_type="user", target_id=principal.id)
    return Response(enrolment, status_code=201, headers={"cache-control": "no-store"})


@post("/me/mfa/confirm", sync_to_thread=True, status_code=200,
      summary="Turn two-factor sign-in on with a first code; returns ten recovery codes, shown once")
def confirm_mfa(request: Request, principal: Principal, data: CodeIn) -> Response[dict]:
    require_person(principal)
    codes = runtime_of(request).identity.confirm_mfa(principal.id, data.code)
    audit(request, principal, "mfa.enable", target_type="user", target_id=principal.id)
    return Response({"recovery_codes": codes}, headers={"cache-control": "no-store"})


@post("/me/mfa/disable", sync_to_thread=True, status_code=200,
      summary="Turn two-factor sign-in off (needs a current code or a recovery code)")
def disable_mfa(request: Request, principal: Principal, data: CodeIn) -> dict:
    require_person(principal)
    runtime_of(request).identity.disable_mfa(principal.id, data.code)
    audit(request, principal, "mfa.disable", target_type="user", target_id=principal.id)
    return {"mfa_enabled": False}


@get("/tenants/{tenant:str}/invitations", sync_to_thread=True, summary="Invitations (never their tokens)",
     opt={"permission": "members.manage"})
def list_invitations(request: Request, access: Access, tenant: str) -> list[dict]:
    return runtime_of(request).identity.invitations(access.tenant_id)


@post("/tenants/{tenant:str}/invitations", sync_to_thread=True,
      summary="Invite someone by email; the link is in this response only", opt={"permission": "members.manage"})
def invite(request: Request, principal: Principal, access: Access, tenant: str, data: InviteIn) -> Response[dict]:
    return Response(send_invitation(request, principal, access, data.email, data.role), status_code=201,
                    headers={"cache-control": "no-store"})


@delete("/tenants/{tenant:str}/invitations/{invitation_id:str}", sync_to_thread=True, status_code=204,
        summary="Withdraw an invitation", opt={"permission": "members.manage"})
def withdraw_invitation(request: Request, principal: Principal, access: Access, tenant: str,
                        invitation_id: str) -> None:
    revoke_invitation(request, principal, access, invitation_id)


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


@post("/users", sync_to_thread=True, summary="Create a user (instance admins)", opt={"admin": "creating a user"})
def create_user(request: Request, principal: Principal, data: UserIn) -> Response[dict]:
    return Response(add_user(request, principal, data.email, data.password, data.name, data.is_admin),
                    status_code=201)


@post("/users/{user_id:str}/password-reset", sync_to_thread=True, status_code=201,
      summary="Make a one-use password reset link for a person (instance admins)",
      opt={"admin": "resetting a password"})
def start_password_reset(request: Request, principal: Principal, user_id: str) -> Response[dict]:
    return Response(password_reset_link(request, principal, user_id), status_code=201,
                    headers={"cache-control": "no-store"})


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


# -- what the API handlers and the console pages both do (each state change audited here, once) ----------------
def send_invitation(request: Request, principal: Principal, access: Access, email: str, role: str) -> dict[str, Any]:
    """Invite someone: the invitation, its token and link (shown this once) and whether it was mailed."""
    rt = runtime_of(request)
    meta, token = rt.identity.invite(access, principal, email, role)
    audit(request, principal, "invitation.create", tenant_id=access.tenant_id, target_type="invitation",
          target_id=meta["id"], details={"email": meta["email"], "role": meta["role"]})
    link = f"{rt.settings.base_url}/invitations/{token}"
    mailed = _mail(rt, mail.invitation, meta["email"], access.tenant["name"], meta["role"], link, principal.label)
    return {**meta, "token": token, "link": link, **mailed}


def revoke_invitation(request: Request, principal: Principal, access: Access, invitation_id: str) -> None:
    runtime_of(request).identity.revoke_invitation(access.tenant_id, invitation_id)
    audit(request, principal, "invitation.revoke", tenant_id=access.tenant_id, target_type="invitation",
          target_id=invitation_id)


def add_user(request: Request, principal: Principal, email: str, password: str, name: str = "",
             is_admin: bool = False) -> dict[str, Any]:
    """Create a user (the callers check that `principal` is an instance admin)."""
    user = runtime_of(request).identity.create_user(email, password, name=name, is_admin=is_admin)
    audit(request, principal, "user.create", target_type="user", target_id=user["id"],
          details={"email": user["email"], "is_admin": bool(user["is_admin"])})
    return user


def password_reset_link(request: Request, principal: Principal, user_id: str) -> dict[str, Any]:
    """A one-use reset link for a person (instance admins): its token and link, shown once, and whether it was mailed."""
    rt = runtime_of(request)
    token = rt.identity.start_password_reset(user_id)
    link = f"{rt.settings.base_url}/password-reset/{token}"
    audit(request, principal, "user.password_reset_link", target_type="user", target_id=user_id)
    mailed = _mail(rt, mail.password_reset, rt.identity.user(user_id)["email"], link)
    return {"token": token, "link": link, **mailed}


def _mail(rt: Runtime, compose, to: str, *args: Any) -> dict[str, Any]:
    """Mail a link if [smtp] is set up: {"mailed": bool} and, when sending failed, why."""
    if not mail.enabled(rt.settings.smtp):
        return {"mailed": False}
    try:
        compose(rt.settings.smtp, to, *args)
    except mail.MailError as exc:
        return {"mailed": False, "mail_error": str(exc)}
    return {"mailed": True}


def session_cookie(request: Request, token: str, max_age: float) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, httponly=True, samesite="lax", path="/",
                  secure=request.url.scheme == "https", max_age=int(max_age))


HANDLERS = [sign_in, sign_in_mfa, set_up, sign_out, sign_out_everywhere, list_roles, me, enrol_mfa, confirm_mfa,
            disable_mfa, list_invitations, invite, withdraw_invitation, accept_invitation, create_user,
            start_password_reset, forgot_password, reset_password]
