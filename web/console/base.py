"""What every console page uses: templates, the signed-in person, the workspace guard, error pages.

Pages call the same functions as the API (`web.api`, `Identity`, `Catalog`, `RunStore`), so
throttling, audit and every rule are the same whichever door a person uses; a page's role check
is the API's `check_access` (refusals are audited).

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

from litestar import Request, Response
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

from ..api.base import TooManyAttempts, check_access, runtime_of

log = logging.getLogger("flowfuse.console")
TEMPLATES = Path(__file__).parent.parent / "templates"
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
FORM_ERRORS = (Unauthorized, Invalid, Conflict, NotFound, TooManyAttempts)

def _storage_alert(request: Request | None) -> str | None:
    """The full-disk banner of every page (see Runtime.storage_alert)."""
    try:
        return runtime_of(request).storage_alert() if request is not None else None
    except Exception:  # noqa: BLE001 - a banner must never break a page
        return None


def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = lambda epoch: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    engine.engine.globals["storage_alert"] = _storage_alert


template_config = TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_filters)


def person_of(request: Request) -> Principal | None:
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


def refuse_cross_site(request: Request) -> Template | None:
    """Every console form post must come from this site's own pages (see the module docstring)."""
    if request.method == "POST" and not _same_site(request):
        return page("error.html", 403, error="this form must be sent from this site's own pages")
    return None


def page(name: str, status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=name, context=context, status_code=status_code)


def next_path(request: Request) -> str:
    """Where to go after signing in: a local path only (no open redirect)."""
    target = request.query_params.get("next") or "/"
    return target if target.startswith("/") and not target.startswith("//") else "/"


class SignInFirst(Exception):
    """Raised by a page that needs a signed-in person; `error_page` turns it into a redirect."""


def workspace(request: Request, tenant: str, permission: str) -> tuple[Principal, Access]:
    """The signed-in person's access to a workspace through the one guard (NotFound/Forbidden
    propagate to the error pages; no session sends the browser to sign in)."""
    person = person_of(request)
    if person is None:
        raise SignInFirst
    return person, check_access(request, person, tenant, permission)  # the API's guard: refusals are audited


def poster(request: Request, data: dict[str, Any]) -> Principal:
    """The signed-in person behind a form post, whose form carries their session's CSRF token."""
    person = person_of(request)
    if person is None or data.get("csrf") != person.csrf:
        raise Forbidden("sign in again: the form's token does not match your session")
    return person


def acting(request: Request, tenant: str, permission: str, data: dict[str, Any]) -> tuple[Principal, Access]:
    """The person behind a workspace form post and their access: the form's token first, then the
    guard (whose refusals are audited)."""
    person = poster(request, data)
    return person, check_access(request, person, tenant, permission)


def status_of(exc: Exception) -> int:
    """The status of a form that comes back with its error, as the API would answer."""
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 422


def workspace_page(request: Request, name: str, person: Principal, access: Access, **context: Any) -> Template:
    """A page inside a workspace: the nav (tabs, the switcher of the person's workspaces) and `may`,
    the permissions of the person's role there, which templates use to hide controls the role may
    not use (the handlers check again)."""
    may = {p: role_at_least(access.role, least) for p, least in PERMISSIONS.items()}
    workspaces = runtime_of(request).identity.tenants_of(person)
    return page(name, person=person, csrf=person.csrf, tenant=access.tenant, role=access.role, may=may,
                workspaces=workspaces, **context)


def message(exc: Exception) -> str:
    return exc.message if isinstance(exc, Invalid) else str(exc).strip("'\"")


def no_cache(response: Response) -> Response:
    with contextlib.suppress(AttributeError):
        response.headers["cache-control"] = "no-store"
    return response


def error_page(request: Request, exc: Exception) -> Template | Redirect:
    """A refused or missing workspace as a page (404 never says whether the workspace exists);
    anything else is logged with its traceback and shown as a plain apology."""
    if isinstance(exc, SignInFirst):
        return Redirect(f"/sign-in?next={quote(request.url.path)}")
    if isinstance(exc, (Forbidden, NotFound)):
        status = 403 if isinstance(exc, Forbidden) else 404
        return page("error.html", status, error=str(exc).strip("'\""), person=person_of(request))
    if isinstance(exc, HTTPException):  # Litestar's own: a malformed form, a wrong method
        return page("error.html", exc.status_code, error=exc.detail, person=person_of(request))
    log.exception("console page %s %s failed", request.method, request.url.path)
    return page("error.html", 500, error="something went wrong on our side; the error is in the server log")


