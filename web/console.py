"""The console: server-rendered pages (Litestar + Jinja2, HTMX vendored under web/static/vendor).

This first slice holds the pages around signing in: sign-in with its two-factor step, first-run
set-up, accepting an invitation, setting a password from a reset link, and a home page listing
the person's tenants. They call the same functions as the API (`web.api.people`, `Identity`),
so throttling, audit and every rule are the same whichever door a person uses.

Forms post URL-encoded bodies. Every form post is refused unless the browser says it comes from
this site (the Origin header, checked once for all pages), which stops cross-site forgery even
before a session exists (sign-in forgery); a form that acts for a signed-in person also carries
the session's CSRF token.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from litestar import Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from appliance.catalog import Conflict, NotFound
from appliance.identity import (
    PERMISSIONS,
    SESSION_COOKIE,
    Access,
    Forbidden,
    Invalid,
    Principal,
    Unauthorized,
    role_at_least,
)

from .api.base import TooManyAttempts, audit, check_access, runtime_of
from .api.people import code_step, password_step, session_cookie

log = logging.getLogger("flowfuse.console")
TEMPLATES = Path(__file__).parent / "templates"
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
_FORM_ERRORS = (Unauthorized, Invalid, Conflict, NotFound, TooManyAttempts)

def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = lambda epoch: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


template_config = TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_filters)


def _person(request: Request) -> Principal | None:
    """The signed-in person, or None (also for a session still waiting for its second factor)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return runtime_of(request).identity.session_principal(token)
    except Unauthorized:
        return None


def _same_site(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    return origin is not None and urlsplit(origin).netloc == request.headers.get("host")


def _refuse_cross_site(request: Request) -> Template | None:
    """Every console form post must come from this site's own pages (see the module docstring)."""
    if request.method == "POST" and not _same_site(request):
        return _page("error.html", 403, error="this form must be sent from this site's own pages")
    return None


def _page(name: str, status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=name, context=context, status_code=status_code)


def _next(request: Request) -> str:
    """Where to go after signing in: a local path only (no open redirect)."""
    target = request.query_params.get("next") or "/"
    return target if target.startswith("/") and not target.startswith("//") else "/"


@get("/", sync_to_thread=True)
def home(request: Request) -> Template | Redirect:
    person = _person(request)
    if person is None:
        target = "/setup" if not runtime_of(request).identity.any_user() else "/sign-in"
        return Redirect(target)
    identity = runtime_of(request).identity
    tenants = [{**t, "role": identity.role_in(person, t["id"])} for t in identity.tenants_of(person)]
    return _page("home.html", person=person, tenants=tenants, csrf=person.csrf)


class _SignInFirst(Exception):
    """Raised by a page that needs a signed-in person; `_error_page` turns it into a redirect."""


def _workspace(request: Request, tenant: str, permission: str) -> tuple[Principal, Access]:
    """The signed-in person's access to a workspace through the one guard (NotFound/Forbidden
    propagate to the error pages; no session sends the browser to sign in)."""
    person = _person(request)
    if person is None:
        raise _SignInFirst
    return person, check_access(request, person, tenant, permission)  # the API's guard: refusals are audited


def _workspace_page(name: str, person: Principal, access: Access, **context: Any) -> Template:
    return _page(name, person=person, csrf=person.csrf, tenant=access.tenant, role=access.role, **context)


@get("/t/{tenant:str}/flows", sync_to_thread=True)
def flows_page(request: Request, tenant: str) -> Template:
    person, access = _workspace(request, tenant, "flows.read")
    rt = runtime_of(request)
    rows = rt.catalog.flows(access.tenant_id)
    last = rt.runs.last_per_flow(access.tenant_id, [f.id for f in rows])
    flows = [{"name": f.name, "version": f.version, "active": f.active, "trigger": f.trigger_type,
              "last": last.get(f.id)} for f in rows]
    return _workspace_page("flows.html", person, access, flows=flows, query=request.query_params.get("q", ""))


@get("/t/{tenant:str}/executions", sync_to_thread=True)
def executions_page(request: Request, tenant: str) -> Template:
    """The list, newest first; with HX-Request only its rows (htmx refreshes them every 2 s)."""
    person, access = _workspace(request, tenant, "executions.read")
    status = request.query_params.get("status") or None
    rows = runtime_of(request).runs.list(access.tenant_id, status=status, limit=50)
    name = "execution_rows.html" if request.headers.get("hx-request") else "executions.html"
    return _workspace_page(name, person, access, rows=rows, status=status or "")


@get("/t/{tenant:str}/executions/{execution_id:str}", sync_to_thread=True)
def execution_page(request: Request, tenant: str, execution_id: str) -> Template:
    """One execution: its steps with their items as JSON, errors and timings; retry and cancel
    buttons only for roles that may use them (the POSTs check again)."""
    person, access = _workspace(request, tenant, "executions.read")
    shown = runtime_of(request).runs.show(execution_id, access.tenant_id)
    if shown is None:
        raise NotFound(f"no execution {execution_id!r} in this workspace")
    may = {p: role_at_least(access.role, PERMISSIONS[p]) for p in ("executions.retry", "executions.cancel")}
    return _workspace_page("execution.html", person, access, e=shown,
                           may_retry=may["executions.retry"] and shown["status"] == "failed",
                           may_cancel=may["executions.cancel"] and shown["status"] in ("queued", "running", "waiting"))


@post("/t/{tenant:str}/executions/{execution_id:str}/{action:str}", sync_to_thread=True, status_code=200)
def execution_action(request: Request, tenant: str, execution_id: str, action: str, data: Form) -> Redirect:
    person = _person(request)
    if person is None or data.get("csrf") != person.csrf:
        raise Forbidden("sign in again: the form's token does not match your session")
    if action not in ("retry", "cancel"):
        raise NotFound(f"no action {action!r}")
    rt = runtime_of(request)
    access = check_access(request, person, tenant, f"executions.{action}")
    if rt.runs.show(execution_id, access.tenant_id) is None:
        raise NotFound(f"no execution {execution_id!r} in this workspace")
    if action == "cancel":
        rt.cancel(execution_id)
    else:
        with contextlib.suppress(ValueError):  # no longer failed (retried meanwhile): the page shows how it is
            rt.retry(execution_id, access.tenant_id)
    audit(request, person, f"execution.{action}", tenant_id=access.tenant_id, target_type="execution",
          target_id=execution_id)
    return Redirect(f"/t/{tenant}/executions/{execution_id}")


#: What the profile page says after a change, by the `done` query parameter of its redirect.
_NOTICES = {"password": "Your password is changed; your other sessions ended.",
            "mfa-off": "Two-factor sign-in is off.", "sessions": "Your other sessions ended."}


@get("/profile", sync_to_thread=True)
def profile(request: Request) -> Template | Redirect:
    person = _person(request)
    if person is None:
        return Redirect("/sign-in?next=/profile")
    return _profile(request, person, notice=_NOTICES.get(request.query_params.get("done", "")))


@post("/profile/{action:str}", sync_to_thread=True, status_code=200)
def profile_action(request: Request, action: str, data: Form) -> Template | Redirect:
    """Password, two-factor sign-in and sessions of the signed-in person (each form carries the CSRF token)."""
    person = _person(request)
    if person is None or data.get("csrf") != person.csrf:
        raise Forbidden("sign in again: the form's token does not match your session")
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
    except _FORM_ERRORS as exc:
        return _profile(request, person, 422, error=_message(exc))
    audit(request, person, done, target_type="user", target_id=person.id)
    if shown:
        return _profile(request, identity.session_principal(cookie), **shown)
    return Redirect(f"/profile?done={notice}")  # post, redirect, get: a reload does not send the form again


def _profile(request: Request, person: Principal, status_code: int = 200, **context: Any) -> Template:
    identity = runtime_of(request).identity
    return _page("profile.html", status_code, person=person, csrf=person.csrf, user=identity.user(person.id),
                 sessions=identity.sessions(person.id), **context)


@get("/sign-in", sync_to_thread=True)
def sign_in_page(request: Request) -> Template | Redirect:
    if not runtime_of(request).identity.any_user():
        return Redirect("/setup")
    return _page("sign_in.html", next=_next(request))


@post("/sign-in", sync_to_thread=True, status_code=200)
def sign_in(request: Request, data: Form) -> Template | Redirect:
    try:
        user, token, _ = password_step(request, data.get("email", ""), data.get("password", ""))
    except _FORM_ERRORS as exc:
        return _page("sign_in.html", 401, error=str(exc), email=data.get("email", ""), next=_next(request))
    target = f"/sign-in/code?next={quote(_next(request))}" if user["mfa_enabled"] else _next(request)
    identity = runtime_of(request).identity
    return Redirect(target, cookies=[session_cookie(request, token, identity.session_ttl_s)])


@get("/sign-in/code", sync_to_thread=False)
def code_page(request: Request) -> Template:
    return _page("code.html", next=_next(request))


@post("/sign-in/code", sync_to_thread=True, status_code=200)
def code(request: Request, data: Form) -> Template | Redirect:
    try:
        code_step(request, data.get("code", ""))
    except _FORM_ERRORS as exc:
        return _page("code.html", 401, error=str(exc), next=_next(request))
    return Redirect(_next(request))


@post("/sign-out", sync_to_thread=True, status_code=200)
def sign_out(request: Request, data: Form) -> Redirect:
    person = _person(request)
    if person is not None and data.get("csrf") == person.csrf:
        runtime_of(request).identity.end_session(request.cookies[SESSION_COOKIE])
        audit(request, person, "auth.sign_out", target_type="user", target_id=person.id)
    return Redirect("/sign-in", cookies=[session_cookie(request, "", 0)])


@get("/setup", sync_to_thread=True)
def setup_page(request: Request) -> Template | Redirect:
    if runtime_of(request).identity.any_user():
        return Redirect("/sign-in")
    return _page("setup.html")


@post("/setup", sync_to_thread=True, status_code=200)
def setup(request: Request, data: Form) -> Template | Redirect:
    email = data.get("email", "")
    if data.get("password", "") != data.get("confirm", ""):
        return _page("setup.html", 422, error="the two passwords differ", email=email)
    try:
        user = runtime_of(request).identity.set_up(email, data.get("password", ""))
    except _FORM_ERRORS as exc:
        return _page("setup.html", 422, error=_message(exc), email=email)
    audit(request, Principal("user", user["id"], user["email"], True), "instance.set_up", target_type="user",
          target_id=user["id"], details={"email": user["email"]})
    return Redirect("/sign-in")


@get("/invitations/{token:str}", sync_to_thread=True)
def invitation_page(request: Request, token: str) -> Template:
    return _page("invitation.html", token=token, person=_person(request))


@post("/invitations/{token:str}", sync_to_thread=True, status_code=200)
def accept_invitation(request: Request, token: str, data: Form) -> Template | Redirect:
    identity = runtime_of(request).identity
    person = _person(request)
    try:
        user, invitation = identity.accept_invitation(token, data.get("password") or None, data.get("name", ""),
                                                      person)
    except _FORM_ERRORS as exc:
        return _page("invitation.html", 422, token=token, person=person, error=_message(exc))
    audit(request, Principal("user", user["id"], user["email"]), "invitation.accept",
          tenant_id=invitation["tenant_id"], target_type="invitation", target_id=invitation["id"],
          details={"role": invitation["role"]})
    return Redirect("/" if person else "/sign-in")


@get("/password-reset/{token:str}", sync_to_thread=False)
def reset_page(token: str) -> Template:
    return _page("reset.html", token=token)


@post("/password-reset/{token:str}", sync_to_thread=True, status_code=200)
def reset(request: Request, token: str, data: Form) -> Template | Redirect:
    if data.get("password", "") != data.get("confirm", ""):
        return _page("reset.html", 422, token=token, error="the two passwords differ")
    try:
        user = runtime_of(request).identity.reset_password(token, data.get("password", ""))
    except _FORM_ERRORS as exc:
        return _page("reset.html", 422, token=token, error=_message(exc))
    audit(request, Principal("user", user["id"], user["email"]), "user.password_reset", target_type="user",
          target_id=user["id"])
    return Redirect("/sign-in")


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, Invalid) else str(exc).strip("'\"")


def _no_cache(response: Response) -> Response:
    with contextlib.suppress(AttributeError):
        response.headers["cache-control"] = "no-store"
    return response


def _error_page(request: Request, exc: Exception) -> Template | Redirect:
    """A refused or missing workspace as a page (404 never says whether the workspace exists);
    anything else is logged with its traceback and shown as a plain apology."""
    if isinstance(exc, _SignInFirst):
        return Redirect(f"/sign-in?next={quote(request.url.path)}")
    if isinstance(exc, (Forbidden, NotFound)):
        status = 403 if isinstance(exc, Forbidden) else 404
        return _page("error.html", status, error=str(exc).strip("'\""), person=_person(request))
    if isinstance(exc, HTTPException):  # Litestar's own: a malformed form, a wrong method
        return _page("error.html", exc.status_code, error=exc.detail, person=_person(request))
    log.exception("console page %s %s failed", request.method, request.url.path)
    return _page("error.html", 500, error="something went wrong on our side; the error is in the server log")


router = Router(path="/", route_handlers=[home, profile, profile_action, flows_page, executions_page, execution_page,
                                          execution_action,
                                          sign_in_page, sign_in, code_page, code, sign_out, setup_page, setup,
                                          invitation_page, accept_invitation, reset_page, reset],
                include_in_schema=False, before_request=_refuse_cross_site, after_request=_no_cache,
                exception_handlers={Exception: _error_page})
