"""The flow builder and the execution view: one canvas (web/static/js/canvas.js) on two pages.

The pages only render the frame and the facts a role decides (`may`); the canvas reads and writes
through the REST API (`/api/v1/...`) with the session cookie and its CSRF token, so every save,
activation, test run and pin goes through the API's guard, validation and audit.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any
from urllib.parse import quote

from litestar import Request, get, post
from litestar.response import Redirect, Template

from appliance.catalog import NotFound
from appliance.identity import PERMISSIONS, Access, role_at_least

from ..api.base import audit, runtime_of
from ..api.flows import definition_of
from .base import Form, acting, workspace, workspace_page

#: What a new flow's name may look like in the URL of /flows/new?name=... (the API checks again on save).
_NAME = re.compile(r"^[\w.\- ]{1,100}$")


@get("/t/{tenant:str}/flows/new", sync_to_thread=True)
def new_flow(request: Request, tenant: str) -> Template | Redirect:
    """An empty draft in the builder; it becomes a flow at its first save. `?name=` of a flow that
    already exists opens that flow instead (so the link is safe to follow twice)."""
    person, access = workspace(request, tenant, "flows.write")
    name = request.query_params.get("name", "").strip()
    if name and not _NAME.match(name):
        return workspace_page(request, "builder.html", person, access, flow_name="", is_new=True,
                              error="a flow name is 1 to 100 letters, digits, spaces and . _ -")
    if name:
        with contextlib.suppress(NotFound):
            runtime_of(request).catalog.flow(access.tenant_id, name)
            return Redirect(f"/t/{quote(tenant, safe='')}/flows/{quote(name, safe='')}/edit")
    return workspace_page(request, "builder.html", person, access, flow_name=name, is_new=True)


@get("/t/{tenant:str}/flows/{name:str}/edit", sync_to_thread=True)
def edit_flow(request: Request, tenant: str, name: str) -> Template:
    """The builder for a saved flow: read-only for roles without flows.write (the API refuses their writes)."""
    person, access = workspace(request, tenant, "flows.read")
    runtime_of(request).catalog.flow(access.tenant_id, name)  # 404 page for a flow that does not exist
    return workspace_page(request, "builder.html", person, access, flow_name=name, is_new=False)


@get("/t/{tenant:str}/executions/{execution_id:str}", sync_to_thread=True)
def execution_page(request: Request, tenant: str, execution_id: str) -> Template:
    """One execution: the executed version's graph with each node's status and items, its steps
    with their items as JSON, errors and timings; retry and cancel buttons only for roles that may
    use them (the POSTs check again). Live updates come from the API's events stream."""
    person, access = workspace(request, tenant, "executions.read")
    rt = runtime_of(request)
    shown = rt.runs.show(execution_id, access.tenant_id)
    if shown is None:
        raise NotFound(f"no execution {execution_id!r} in this workspace")
    may = {p: role_at_least(access.role, PERMISSIONS[p]) for p in ("executions.retry", "executions.cancel")}
    return workspace_page(request, "execution.html", person, access, e=shown,
                          definition=_executed_definition(request, access, execution_id, shown),
                          may_retry=may["executions.retry"] and shown["status"] == "failed",
                          may_cancel=may["executions.cancel"] and shown["status"] in ("queued", "running", "waiting"))


def _executed_definition(request: Request, access: Access, execution_id: str,
                         shown: dict[str, Any]) -> dict[str, Any] | None:
    """The flow JSON the execution ran: a test run's draft kept with it, else its saved version
    (None when the flow or the version is gone: the page then shows the steps only)."""
    if shown["trigger"] == "test":
        row = runtime_of(request).runs.db.one("SELECT meta FROM executions WHERE id=?", (execution_id,))
        meta = json.loads(row["meta"] or "{}") if row else {}
        if isinstance(meta.get("definition"), dict):
            return meta["definition"]
    if not shown.get("flow_version"):
        return None
    try:
        return definition_of(request, access, shown["flow"], shown["flow_version"])
    except NotFound:
        return None


@post("/t/{tenant:str}/executions/{execution_id:str}/{action:str}", sync_to_thread=True, status_code=200)
def execution_action(request: Request, tenant: str, execution_id: str, action: str, data: Form) -> Redirect:
    if action not in ("retry", "cancel"):
        raise NotFound(f"no action {action!r}")
    rt = runtime_of(request)
    person, access = acting(request, tenant, f"executions.{action}", data)
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


routes = [new_flow, edit_flow, execution_page, execution_action]
