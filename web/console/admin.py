"""Instance admin pages: system health, every tenant (create, rename, suspend and resume, delete)
and every user (create, password reset links).

Only instance admins see them: anyone else signed in gets 403, as the API's admin-only endpoints
answer (`Identity.require_admin`). The actions call the same functions as those endpoints
(web/api/tenants.py, people.py), which write the audit entries.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any

from litestar import Request, get, post
from litestar.response import Redirect, Template

from appliance.catalog import NotFound
from appliance.identity import Identity, Invalid, Principal
from appliance.runtime import Runtime

from ..api.base import check_access, runtime_of
from ..api.people import add_user, password_reset_link
from ..api.tenants import add_tenant, change_tenant, remove_tenant
from .base import Form, SignInFirst, message, page, person_of, poster, status_of
from .manage import ACTION_ERRORS, back, no_store


def admin(request: Request, what: str = "the instance pages") -> Principal:
    """The signed-in instance admin (403 for anyone else, as the API; sign in first without a session)."""
    person = person_of(request)
    if person is None:
        raise SignInFirst
    Identity.require_admin(person, what)
    return person


def acting_admin(request: Request, data: dict[str, str], what: str) -> Principal:
    person = poster(request, data)
    Identity.require_admin(person, what)
    return person


def admin_page(name: str, person: Principal, status_code: int = 200, **context: Any) -> Template:
    return page(name, status_code, person=person, csrf=person.csrf, **context)


# -- health ---------------------------------------------------------------------------------------------------
def version() -> str:
    try:
        return importlib.metadata.version("flowfuse")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def health(rt: Runtime) -> dict[str, Any]:
    """What an operator checks first: is the worker alive (its heartbeat in runs.db, as /readyz
    reads it), how much waits in the Huey queue, how big the database files are, which version runs."""
    stale = rt.settings.worker.stale_after_s
    beat = rt.runs_db.one("SELECT max(heartbeat_at) AS beat FROM processes WHERE kind='worker'")
    beat_at = beat["beat"] if beat else None
    files = []
    data: Path = rt.settings.data_dir
    for path in sorted(data.iterdir()):
        if path.is_file() and (path.suffix == ".db" or path.name.endswith(("-wal", "-shm"))):
            files.append({"name": path.name, "bytes": path.stat().st_size})
    return {"worker_alive": rt.runs.worker_alive(stale), "stale_after_s": stale,
            "heartbeat_age_s": None if beat_at is None else max(0.0, time.time() - beat_at),
            "queued": rt.huey.pending_count(), "scheduled": rt.huey.scheduled_count(), "files": files,
            "total_bytes": sum(f["bytes"] for f in files), "version": version(), "data_dir": str(data)}


@get("/admin", sync_to_thread=True)
def health_page(request: Request) -> Template:
    person = admin(request)
    return admin_page("admin_health.html", person, tab="health", health=health(runtime_of(request)))


# -- tenants --------------------------------------------------------------------------------------------------
def _tenants(request: Request, person: Principal, status_code: int = 200, **context: Any) -> Template:
    rt = runtime_of(request)
    tenants = [{**t, "quotas": rt.quotas.view(t["id"]),
                "members": rt.control.one("SELECT count(*) FROM memberships WHERE tenant_id=?", (t["id"],))[0]}
               for t in rt.identity.tenants_of(person)]
    notice = {"created": "Workspace created.", "renamed": "Workspace renamed.", "suspended": "Workspace suspended: "
              "its webhooks and schedules stopped.", "resumed": "Workspace resumed.",
              "deleted": "Workspace deleted with all its data."}.get(request.query_params.get("done", ""))
    return admin_page("admin_tenants.html", person, status_code, tab="tenants", tenants=tenants, notice=notice,
                      **context)


@get("/admin/tenants", sync_to_thread=True)
def tenants_page(request: Request) -> Template:
    return _tenants(request, admin(request))


@post("/admin/tenants", sync_to_thread=True, status_code=200)
def create_tenant(request: Request, data: Form) -> Template | Redirect:
    person = acting_admin(request, data, "creating a tenant")
    try:
        add_tenant(request, person, data.get("slug", "").strip(), data.get("name", "").strip() or None)
    except ACTION_ERRORS as exc:
        return _tenants(request, person, status_of(exc), error=message(exc), slug=data.get("slug", ""),
                        entered_name=data.get("name", ""))
    return back("/admin/tenants", done="created")


@post("/admin/tenants/{tenant:str}/{action:str}", sync_to_thread=True, status_code=200)
def tenant_action(request: Request, tenant: str, action: str, data: Form) -> Template | Redirect:
    """rename, suspend, resume, or delete (the form must repeat the tenant's slug)."""
    what = {"rename": "renaming a tenant", "suspend": "suspending or resuming a tenant",
            "resume": "suspending or resuming a tenant", "delete": "deleting a tenant"}.get(action)
    if what is None:
        raise NotFound(f"no action {action!r}")
    person = acting_admin(request, data, what)
    try:
        if action == "delete":
            found = runtime_of(request).identity.tenant(tenant)
            if data.get("confirm", "").strip() != found["slug"]:
                raise Invalid("confirm", f"type the workspace's slug ({found['slug']}) to confirm deleting it")
            remove_tenant(request, person, found["slug"])
            return back("/admin/tenants", done="deleted")
        access = check_access(request, person, tenant, "tenant.settings")  # as PATCH /tenants/{t}
        if action == "rename":
            change_tenant(request, person, access, name=data.get("name", "").strip())
        else:
            change_tenant(request, person, access, status="suspended" if action == "suspend" else "active")
    except ACTION_ERRORS as exc:
        return _tenants(request, person, status_of(exc), error=message(exc))
    return back("/admin/tenants", done={"rename": "renamed", "suspend": "suspended", "resume": "resumed"}[action])


# -- users ----------------------------------------------------------------------------------------------------
def _users(request: Request, person: Principal, status_code: int = 200, **context: Any) -> Template:
    rt = runtime_of(request)
    users = [dict(r) for r in rt.control.query(
        "SELECT u.id, u.email, u.name, u.is_admin, u.status, u.mfa_enabled, u.created_at, "
        "(SELECT count(*) FROM memberships m WHERE m.user_id=u.id) AS workspaces FROM users u ORDER BY u.email")]
    notice = "User created." if request.query_params.get("done") == "created" else None
    return admin_page("admin_users.html", person, status_code, tab="users", users=users, notice=notice, **context)


@get("/admin/users", sync_to_thread=True)
def users_page(request: Request) -> Template:
    return _users(request, admin(request))


@post("/admin/users", sync_to_thread=True, status_code=200)
def create_user(request: Request, data: Form) -> Template | Redirect:
    person = acting_admin(request, data, "creating a user")
    email = data.get("email", "").strip()
    try:
        if data.get("password", "") != data.get("confirm", ""):
            raise Invalid("confirm", "the two passwords differ")
        add_user(request, person, email, data.get("password", ""), data.get("name", "").strip(),
                 data.get("is_admin") == "on")
    except ACTION_ERRORS as exc:
        return _users(request, person, status_of(exc), error=message(exc), email=email,
                      entered_name=data.get("name", ""))
    return back("/admin/users", done="created")


@post("/admin/users/{user_id:str}/reset", sync_to_thread=True, status_code=200)
def reset_link(request: Request, user_id: str, data: Form) -> Template:
    """A one-use password reset link: mailed if [smtp] is set up, else shown once here (as the API answers)."""
    person = acting_admin(request, data, "resetting a password")
    try:
        made = password_reset_link(request, person, user_id)
    except ACTION_ERRORS as exc:
        return _users(request, person, status_of(exc), error=message(exc))
    made["email"] = runtime_of(request).identity.user(user_id)["email"]
    return no_store(_users(request, person, 201, reset=made))


routes = [health_page, tenants_page, create_tenant, tenant_action, users_page, create_user, reset_link]
