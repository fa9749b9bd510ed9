"""Workspace pages: the flows list (search, tags, create, duplicate, delete, import, export, activate)
and the executions list (filters, keyset pages, live rows).

Both lists are pages of 50 through an index, so they stay fast at 10,000 flows and a million
executions. Every form post carries the session's CSRF token, goes through the API's guard with the
permission the API uses for the same change, calls the same Catalog function, is audited with the
same action, and redirects (post/redirect/get); a refused or invalid one re-renders the list with
the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from appliance.catalog import Conflict, FlowInvalid, NotFound
from appliance.identity import Access, Principal

from ..api.base import audit, runtime_of
from .base import Form, acting, message, status_of, workspace, workspace_page

PAGE = 50
#: Names the console gives new flows (they go in URLs); flows saved through the API may have others.
_NAME = re.compile(r"^[\w.\- ]{1,100}$")
NAME_RULE = "a flow name is 1 to 100 letters, digits, spaces and . _ -"
#: Largest flow file the import form takes.
MAX_IMPORT = 1_000_000
STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
#: What a redirect's `did` says happened, shown once above the list.
DONE = {"created": "created", "imported": "saved", "duplicated": "created", "deleted": "deleted",
        "activated": "activated", "deactivated": "deactivated"}
Multipart = Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)]


@get("/go", sync_to_thread=False)
def switch_workspace(request: Request) -> Redirect:
    """The workspace switcher's target: the chosen workspace's dashboard (its page checks access)."""
    slug = request.query_params.get("workspace", "")
    return Redirect(f"/t/{quote(slug, safe='')}" if slug else "/")


# -- flows ---------------------------------------------------------------------------------------------------
@get("/t/{tenant:str}/flows", sync_to_thread=True)
def flows_page(request: Request, tenant: str) -> Template:
    """A page of flows by name: `q` searches names, `tag` filters, `after` is the last name of the
    previous page. `did`/`name` say what the last form did."""
    person, access = workspace(request, tenant, "flows.read")
    params = request.query_params
    done = DONE.get(params.get("did", ""))
    notice = f"Flow “{params.get('name', '')}” {done}." if done else None
    return _flows(request, person, access, notice=notice)


def _flows(request: Request, person: Principal, access: Access, *, error: str | None = None,
           errors: list[str] | None = None, notice: str | None = None, status_code: int = 200,
           form: dict[str, str] | None = None) -> Template:
    rt = runtime_of(request)
    params = request.query_params
    query, tag, after = params.get("q", "").strip(), params.get("tag", "").strip(), params.get("after", "")
    rows = rt.catalog.flows_page(access.tenant_id, query=query, tag=tag, after=after, limit=PAGE + 1)
    more, rows = len(rows) > PAGE, rows[:PAGE]
    last = rt.runs.last_per_flow(access.tenant_id, [f.id for f in rows])
    flows = [{"name": f.name, "path": quote(f.name, safe=""), "version": f.version, "active": f.active,
              "trigger": f.trigger_type, "tags": f.doc.get("tags") or [], "last": last.get(f.id)} for f in rows]
    filters = {k: v for k, v in (("q", query), ("tag", tag)) if v}
    page = workspace_page(
        request, "flows.html", person, access, flows=flows, query=query, tag=tag, after=after,
        tags=rt.catalog.tags(access.tenant_id), total=rt.catalog.flow_count(access.tenant_id, query=query, tag=tag),
        next_url=f"?{urlencode({**filters, 'after': rows[-1].name})}" if more else None,
        first_url=f"?{urlencode(filters)}" if after else None, back=f"?{urlencode({**filters, 'after': after})}",
        error=error, errors=errors or [], notice=notice, form=form or {})
    page.status_code = status_code
    return page


def _back(tenant: str, data: dict[str, Any], did: str, name: str) -> Redirect:
    """Back to the list as the person left it (a query string of this page only), saying what was done."""
    back = str(data.get("back") or "?")
    back = back if back.startswith("?") else "?"
    joiner = "&" if len(back) > 1 else ""
    return Redirect(f"/t/{quote(tenant, safe='')}/flows{back}{joiner}{urlencode({'did': did, 'name': name})}",
                    status_code=303)


def _refused(request: Request, person: Principal, access: Access, exc: Exception, form: dict[str, str]) -> Template:
    """The list again with why the change was refused (409 for a conflict, 422 for a bad flow or name)."""
    if isinstance(exc, FlowInvalid):
        errors = [f"node “{e.node}”: {e.message}" if e.node else e.message for e in exc.errors]
        return _flows(request, person, access, error=f"the flow has {len(errors)} problem(s); nothing was saved",
                      errors=errors, status_code=422, form=form)
    return _flows(request, person, access, error=message(exc), status_code=status_of(exc), form=form)


def _new_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(NAME_RULE)
    return name


def _must_be_new(request: Request, access: Access, name: str) -> None:
    try:
        runtime_of(request).catalog.flow(access.tenant_id, name)
    except NotFound:
        return
    raise Conflict(f"a flow named {name!r} already exists; choose another name")


def _saved(request: Request, person: Principal, access: Access, row: Any, **details: Any) -> None:
    """Audited as the API's POST /flows (`flow.save`)."""
    audit(request, person, "flow.save", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": row.name, "version": row.version, **details})


@post("/t/{tenant:str}/flows/create", sync_to_thread=True)
def create_flow(request: Request, tenant: str, data: Form) -> Redirect | Template:
    """A new flow with a manual trigger, saved as POST /api/v1/tenants/{t}/flows saves it; then the builder."""
    person, access = acting(request, tenant, "flows.write", data)
    try:
        name = _new_name(data.get("name", ""))
        _must_be_new(request, access, name)
        row = runtime_of(request).catalog.save_flow(
            access.tenant_id, {"name": name, "nodes": [{"id": "start", "type": "manual"}], "edges": []})
    except (ValueError, FlowInvalid) as exc:
        return _refused(request, person, access, exc, {"create": data.get("name", "")})
    _saved(request, person, access, row)
    return Redirect(f"/t/{quote(tenant, safe='')}/flows/{quote(row.name, safe='')}/edit", status_code=303)


@post("/t/{tenant:str}/flows/duplicate", sync_to_thread=True)
def duplicate_flow(request: Request, tenant: str, data: Form) -> Redirect | Template:
    """A copy of a flow's newest version under a new name, inactive (its webhook path stays the original's)."""
    person, access = acting(request, tenant, "flows.write", data)
    catalog = runtime_of(request).catalog
    try:
        source = catalog.flow(access.tenant_id, data.get("name", ""))
        name = _new_name(data.get("new_name", ""))
        _must_be_new(request, access, name)
        row = catalog.save_flow(access.tenant_id, {**source.doc, "name": name}, activate=False)
    except (LookupError, ValueError, FlowInvalid) as exc:
        return _refused(request, person, access, exc, {})
    _saved(request, person, access, row, duplicated_from=source.name)
    return _back(tenant, data, "duplicated", row.name)


@post("/t/{tenant:str}/flows/delete", sync_to_thread=True)
def delete_flow(request: Request, tenant: str, data: Form) -> Redirect | Template:
    person, access = acting(request, tenant, "flows.write", data)
    catalog = runtime_of(request).catalog
    name = data.get("name", "")
    try:
        row = catalog.flow(access.tenant_id, name)
        catalog.delete_flow(access.tenant_id, name)
    except LookupError as exc:
        return _refused(request, person, access, exc, {})
    audit(request, person, "flow.delete", tenant_id=access.tenant_id, target_type="flow", target_id=row.id,
          details={"name": name})
    return _back(tenant, data, "deleted", name)


@post("/t/{tenant:str}/flows/activate", sync_to_thread=True)
def activate_flow(request: Request, tenant: str, data: Form) -> Redirect | Template:
    return _set_active(request, tenant, data, True)


@post("/t/{tenant:str}/flows/deactivate", sync_to_thread=True)
def deactivate_flow(request: Request, tenant: str, data: Form) -> Redirect | Template:
    return _set_active(request, tenant, data, False)


def _set_active(request: Request, tenant: str, data: dict[str, Any], active: bool) -> Redirect | Template:
    """As the API's activate/deactivate: flows.write, Catalog.set_active (quota and webhook path checks)."""
    person, access = acting(request, tenant, "flows.write", data)
    try:
        row = runtime_of(request).catalog.set_active(access.tenant_id, data.get("name", ""), active)
    except (LookupError, ValueError) as exc:
        return _refused(request, person, access, exc, {})
    audit(request, person, "flow.activate" if active else "flow.deactivate", tenant_id=access.tenant_id,
          target_type="flow", target_id=row.id, details={"name": row.name})
    return _back(tenant, data, "activated" if active else "deactivated", row.name)


@post("/t/{tenant:str}/flows/import", sync_to_thread=True)
def import_flow(request: Request, tenant: str, data: Multipart) -> Redirect | Template:
    """A flow JSON from a file or pasted text, validated and saved as POST /flows does (a flow of that
    name gets a new version, as `flowfuse flow import`); problems are listed by node, nothing saved."""
    person, access = acting(request, tenant, "flows.write", data)
    pasted = str(data.get("text") or "")
    upload = data.get("file")
    try:
        raw = upload.file.read(MAX_IMPORT + 1) if isinstance(upload, UploadFile) else b""
        source = "the file"
        if not raw.strip():
            raw, source = pasted.encode(), "the pasted text"
        if not raw.strip():
            raise ValueError("choose a flow file (.json) or paste the flow's JSON")
        if len(raw) > MAX_IMPORT:
            raise ValueError(f"{source} is larger than {MAX_IMPORT:,} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{source} is not JSON: {exc}") from None
        row = runtime_of(request).catalog.save_flow(access.tenant_id, doc)
    except (ValueError, FlowInvalid) as exc:
        return _refused(request, person, access, exc, {"text": pasted})
    _saved(request, person, access, row, imported=True)
    return _back(tenant, data, "imported", row.name)


@get("/t/{tenant:str}/flows/{name:str}/export", sync_to_thread=True)
def export_flow(request: Request, tenant: str, name: str) -> Response:
    """The flow's newest version as stored: the JSON that import, the API and `flowfuse flow import` take."""
    _, access = workspace(request, tenant, "flows.read")
    row = runtime_of(request).catalog.flow(access.tenant_id, name)
    filename = re.sub(r"[^A-Za-z0-9._ -]", "_", row.name) + ".json"  # a header value: ASCII only
    return Response(row.definition, media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


# -- executions ------------------------------------------------------------------------------------------------
@get("/t/{tenant:str}/executions", sync_to_thread=True)
def executions_page(request: Request, tenant: str) -> Template:
    """Newest first, filtered by flow, status and creation time (UTC), 50 a page (`before` = the last
    id shown). The first page refreshes its rows every 2 s with htmx (HX-Request gets only the rows)."""
    person, access = workspace(request, tenant, "executions.read")
    rt = runtime_of(request)
    params = request.query_params
    filters = {k: params.get(k, "").strip() for k in ("flow", "status", "since", "until")}
    before = params.get("before") or None
    rows: list[dict[str, Any]] = []
    error = None
    try:
        if filters["status"] and filters["status"] not in STATUSES:
            raise ValueError(f"no status {filters['status']!r}; the statuses are {', '.join(STATUSES)}")
        since, until = _instant(filters["since"], "from"), _instant(filters["until"], "to")
        flow_id = rt.catalog.flow(access.tenant_id, filters["flow"]).id if filters["flow"] else None
        rows = rt.runs.list(access.tenant_id, flow_id=flow_id, status=filters["status"] or None, limit=PAGE,
                            before=before, since=since, until=until)
    except (ValueError, NotFound) as exc:
        error = message(exc)
    query = {k: v for k, v in filters.items() if v}
    name = "execution_rows.html" if request.headers.get("hx-request") else "executions.html"
    page = workspace_page(
        request, name, person, access, rows=rows, statuses=STATUSES, filters=filters, before=before,
        live=before is None and error is None, refresh_url=f"/t/{quote(tenant, safe='')}/executions?{urlencode(query)}",
        older_url=f"?{urlencode({**query, 'before': rows[-1]['id']})}" if len(rows) == PAGE else None,
        newest_url=f"?{urlencode(query)}" if before else None, error=error)
    page.status_code = 400 if error and not request.headers.get("hx-request") else 200
    return page


def _instant(value: str, field: str) -> float | None:
    """A `datetime-local` value (YYYY-MM-DDTHH:MM, read as UTC) or a date, as epoch seconds."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not a time; use YYYY-MM-DD HH:MM (UTC)") from None
    return when.replace(tzinfo=when.tzinfo or dt.UTC).timestamp()


routes = [switch_workspace, flows_page, create_flow, duplicate_flow, delete_flow, activate_flow, deactivate_flow,
          import_flow, export_flow, executions_page]
