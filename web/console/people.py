"""Pages about people: home (their workspaces), sign-in with its two-factor step, first-run set-up,
invitations, password reset and the profile."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, get, post
from litestar.response import Redirect, Template

from appliance.catalog import NotFound
from appliance.identity import SESSION_COOKIE, Invalid, Principal

from ..api.base import audit, runtime_of
from ..api.people import code_step, password_step, session_cookie
from .base import FORM_ERRORS, Form, message, next_path, page, person_of, poster


@get("/", sync_to_thread=True)
def home(request: Request) -> Template | Redirect:
    person = person_of(request)
    if person is None:
        target = "/setup" if not runtime_of(request).identity.any_user() else "/sign-in"
        return Redirect(target)
    identity = runtime_of(request).identity
    tenants = [{**t, "role": identity.role_in(person, t["id"])} for t in identity.tenants_of(person)]
    return page("home.html", person=person, tenants=tenants, csrf=person.csrf)


#: What the profile page says after a change, by the `done` query parameter of its redirect.
_NOTICES = {"password": "Your password is changed; your other sessions ended.",
            "mfa-off": "Two-factor sign-in is off.", "sessions": "Your other sessions ended."}


@get("/profile", sync_to_thread=True)
def profile(request: Request) -> Template | Redirect:
    person = person_of(request)
    if person is None:
        return Redirect("/sign-in?next=/profile")
    return _profile(request, person, notice=_NOTICES.get(request.query_params.get("done", "")))


@post("/profile/{action:str}", sync_to_thread=True, status_code=200)
def profile_action(request: Request, action: str, data: Form) -> Template | Redirect:
    """Password, two-factor sign-in and sessions of the signed-in person (each form carries the CSRF token)."""
    person = poster(request, data)
    identity = runtime_of(request).identity
    cookie = request.cookies[SESSION_COOKIE]
    shown: dict[str, Any] = {}  # what this answer must show once (so it renders rather than redirects)
    try:
        if action == "password":
            if data.get("new", "") != data.get("confirm", ""):
                raise Invalid("confirm", "the two new passwords differ")
            identity.change_password(person.id, data.get("current", ""), data.get("new", ""), keep_token=cookie)
            done, notice = "user.password_change", "password"
        elif action == "mfa-start":
            shown["enrolment"] = identity.start_mfa_enrolment(person.id)
            done, notice = "mfa.enrol_start", ""
        elif action == "mfa-confirm":
            shown["recovery_codes"] = identity.confirm_mfa(person.id, data.get("code", ""))
            done, notice = "mfa.enable", ""
        elif action == "mfa-disable":
            identity.disable_mfa(person.id, data.get("code", ""))
            done, notice = "mfa.disable", "mfa-off"
        elif action == "sessions":
            identity.end_all_sessions(person.id, keep_token=cookie)
            done, notice = "auth.sign_out_others", "sessions"
        else:
            raise NotFound(f"no action {action!r}")
    except FORM_ERRORS as exc:
        return _profile(request, person, 422, error=message(exc))
    audit(request, person, done, target_type="user", target_id=person.id)
    if shown:
        return _profile(request, identity.session_principal(cookie), **shown)
    return Redirect(f"/profile?done={notice}")  # post, redirect, get: a reload does not send the form again


def _profile(request: Request, person: Principal, status_code: int = 200, **context: Any) -> Template:
    identity = runtime_of(request).identity
    return page("profile.html", status_code, person=person, csrf=person.csrf, user=identity.user(person.id),
                 sessions=identity.sessions(person.id), **context)


@get("/sign-in", sync_to_thread=True)
def sign_in_page(request: Request) -> Template | Redirect:
    if not runtime_of(request).identity.any_user():
        return Redirect("/setup")
    return page("sign_in.html", next=next_path(request))


@post("/sign-in", sync_to_thread=True, status_code=200)
def sign_in(request: Request, data: Form) -> Template | Redirect:
    try:
        user, token, _ = password_step(request, data.get("email", ""), data.get("password", ""))
    except FORM_ERRORS as exc:
        return page("sign_in.html", 401, error=str(exc), email=data.get("email", ""), next=next_path(request))
    target = f"/sign-in/code?next={quote(next_path(request))}" if user["mfa_enabled"] else next_path(request)
    identity = runtime_of(request).identity
    return Redirect(target, cookies=[session_cookie(request, token, identity.session_ttl_s)])


@get("/sign-in/code", sync_to_thread=False)
def code_page(request: Request) -> Template:
    return page("code.html", next=next_path(request))


@post("/sign-in/code", sync_to_thread=True, status_code=200)
def code(request: Request, data: Form) -> Template | Redirect:
    try:
        code_step(request, data.get("code", ""))
    except FORM_ERRORS as exc:
        return page("code.html", 401, error=str(exc), next=next_path(request))
    return Redirect(next_path(request))


@post("/sign-out", sync_to_thread=True, status_code=200)
def sign_out(request: Request, data: Form) -> Redirect:
    person = person_of(request)
    if person is not None and data.get("csrf") == person.csrf:
        runtime_of(request).identity.end_session(request.cookies[SESSION_COOKIE])
        audit(request, person, "auth.sign_out", target_type="user", target_id=person.id)
    return Redirect("/sign-in", cookies=[session_cookie(request, "", 0)])


@get("/setup", sync_to_thread=True)
def setup_page(request: Request) -> Template | Redirect:
    if runtime_of(request).identity.any_user():
        return Redirect("/sign-in")
    return page("setup.html")


@post("/setup", sync_to_thread=True, status_code=200)
def setup(request: Request, data: Form) -> Template | Redirect:
    email = data.get("email", "")
    if data.get("password", "") != data.get("confirm", ""):
        return page("setup.html", 422, error="the two passwords differ", email=email)
    try:
        user = runtime_of(request).identity.set_up(email, data.get("password", ""))
    except FORM_ERRORS as exc:
        return page("setup.html", 422, error=message(exc), email=email)
    audit(request, Principal("user", user["id"], user["email"], True), "instance.set_up", target_type="user",
          target_id=user["id"], details={"email": user["email"]})
    return Redirect("/sign-in")


@get("/invitations/{token:str}", sync_to_thread=True)
def invitation_page(request: Request, token: str) -> Template:
    return page("invitation.html", token=token, person=person_of(request))


@post("/invitations/{token:str}", sync_to_thread=True, status_code=200)
def accept_invitation(request: Request, token: str, data: Form) -> Template | Redirect:
    identity = runtime_of(request).identity
    person = person_of(request)
    try:
        user, invitation = identity.accept_invitation(token, data.get("password") or None, data.get("name", ""),
                                                      person)
    except FORM_ERRORS as exc:
        return page("invitation.html", 422, token=token, person=person, error=message(exc))
    audit(request, Principal("user", user["id"], user["email"]), "invitation.accept",
          tenant_id=invitation["tenant_id"], target_type="invitation", target_id=invitation["id"],
          details={"role": invitation["role"]})
    return Redirect("/" if person else "/sign-in")


@get("/password-reset/{token:str}", sync_to_thread=False)
def reset_page(token: str) -> Template:
    return page("reset.html", token=token)


@post("/password-reset/{token:str}", sync_to_thread=True, status_code=200)
def reset(request: Request, token: str, data: Form) -> Template | Redirect:
    if data.get("password", "") != data.get("confirm", ""):
        return page("reset.html", 422, token=token, error="the two passwords differ")
    try:
        user = runtime_of(request).identity.reset_password(token, data.get("password", ""))
    except FORM_ERRORS as exc:
        return page("reset.html", 422, token=token, error=message(exc))
    audit(request, Principal("user", user["id"], user["email"]), "user.password_reset", target_type="user",
          target_id=user["id"])
    return Redirect("/sign-in")


routes = [home, profile, profile_action, sign_in_page, sign_in, code_page, code, sign_out, setup_page, setup,
          invitation_page, accept_invitation, reset_page, reset]
