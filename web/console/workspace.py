"""Workspace pages: flows and executions."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

from litestar import Request, get, post
from litestar.response import Redirect, Template

from appliance.catalog import NotFound
from appliance.identity import PERMISSIONS, Forbidden, role_at_least

from ..api.base import audit, check_access, runtime_of
from .base import Form, person_of, workspace, workspace_page


@get("/go", sync_to_thread=False)
def switch_workspace(request: Request) -> Redirect:
    """The workspace switcher's target: the chosen workspace's dashboard (its page checks access)."""
    slug = request.query_params.get("workspace", "")
    return Redirect(f"/t/{quote(slug, safe='')}" if slug else "/")


@get("/t/{tenant:str}/flows", sync_to_thread=True)
def flows_page(request: Request, tenant: str) -> Template:
    person, access = workspace(request, tenant, "flows.read")
    rt = runtime_of(request)
    rows = rt.catalog.flows(access.tenant_id)
    last = rt.runs.last_per_flow(access.tenant_id, [f.id for f in rows])
    flows = [{"name": f.name, "version": f.version, "active": f.active, "trigger": f.trigger_type,
              "last": last.get(f.id)} for f in rows]
    return workspace_page(request, "flows.html", person, access, flows=flows, query=request.query_params.get("q", ""))


@get("/t/{tenant:str}/executions", sync_to_thread=True)
def executions_page(request: Request, tenant: str) -> Template:
    """The list, newest first; with HX-Request only its rows (htmx refreshes them every 2 s)."""
    person, access = workspace(request, tenant, "executions.read")
    status = request.query_params.get("status") or None
    rows = runtime_of(request).runs.list(access.tenant_id, status=status, limit=50)
    name = "execution_rows.html" if request.headers.get("hx-request") else "executions.html"
    return workspace_page(request, name, person, access, rows=rows, status=status or "")


@get("/t/{tenant:str}/executions/{execution_id:str}", sync_to_thread=True)
def execution_page(request: Request, tenant: str, execution_id: str) -> Template:
    """One execution: its steps with their items as JSON, errors and timings; retry and cancel
    buttons only for roles that may use them (the POSTs check again)."""
    person, access = workspace(request, tenant, "executions.read")
    shown = runtime_of(request).runs.show(execution_id, access.tenant_id)
    if shown is None:
        raise NotFound(f"no execution {execution_id!r} in this workspace")
    may = {p: role_at_least(access.role, PERMISSIONS[p]) for p in ("executions.retry", "executions.cancel")}
    return workspace_page(request, "execution.html", person, access, e=shown,
                           may_retry=may["executions.retry"] and shown["status"] == "failed",
                           may_cancel=may["executions.cancel"] and shown["status"] in ("queued", "running", "waiting"))


@post("/t/{tenant:str}/executions/{execution_id:str}/{action:str}", sync_to_thread=True, status_code=200)
def execution_action(request: Request, tenant: str, execution_id: str, action: str, data: Form) -> Redirect:
    person = person_of(request)
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


routes = [switch_workspace, flows_page, executions_page, execution_page, execution_action]
