"""Workspace management pages: credentials, variables, members and invitations, API keys, the
audit log and settings.

Each page is a thin layer over the functions the REST API handlers call (web/api/flows.py,
people.py, tenants.py), which also write the audit entries, so a change made here is checked,
refused and audited exactly as through the API. Every form posts the session's CSRF token; the
guard (`check_access`) runs before anything is read from the form. After a change the browser is
redirected (post, redirect, get) except where the answer shows something once (a new API key, an
invitation link), as the API's answer does.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from appliance.catalog import NotFound
from appliance.identity import (
    PERMISSIONS,
    ROLES,
    Access,
    Forbidden,
    Identity,
    Invalid,
    Principal,
    role_at_least,
    tenant_settings,
)
from appliance.quotas import NAMES as QUOTA_NAMES

from ..api.base import check_access, runtime_of
from ..api.flows import (
    change_credential,
    remove_credential,
    remove_variable,
    store_credential,
    store_variable,
    try_credential,
)
from ..api.people import revoke_invitation, send_invitation
from ..api.tenants import (
    audit_entries,
    change_quotas,
    change_role,
    change_settings,
    change_tenant,
    drop_member,
    end_key,
    make_key,
)
from .base import FORM_ERRORS, Form, acting, message, status_of, workspace, workspace_page

#: What may go wrong in an action because of what was asked (shown at the form, never a 500): the
#: stores' and the vault's ValueErrors, and a rule of the role (admins cannot grant owner) as Forbidden.
ACTION_ERRORS = (*FORM_ERRORS, ValueError, Forbidden)
#: How many "other field" rows the form of a credential type without a fixed schema (generic) offers.
EXTRA_ROWS = 3
AUDIT_PAGE = 50


def render(request: Request, template_name: str, person: Principal, access: Access, status_code: int = 200,
           **context: Any) -> Template:
    """A workspace page with a status of its own (422 and the like when a form comes back with its error).
    (No context key may be called `name`: workspace_page takes the template's name under it.)"""
    template = workspace_page(request, template_name, person, access, **context)
    template.status_code = status_code
    return template


def back(path: str, **query: Any) -> Redirect:
    """Post, redirect, get: a reload does not send the form again."""
    shown = {k: v for k, v in query.items() if v is not None and v != ""}
    return Redirect(path + (f"?{urlencode(shown)}" if shown else ""))


# -- credentials ----------------------------------------------------------------------------------------------
def credential_fields(spec) -> list[dict[str, Any]]:
    """The declared fields of a credential type as the form shows them."""
    return [{"name": name, "label": f.label or name, "secret": f.secret, "required": f.required}
            for name, f in spec.fields.items()]


def _types(request: Request) -> list[dict[str, Any]]:
    registry = runtime_of(request).registry
    return [{"name": n, "description": registry.credential_type(n).description}
            for n in registry.credential_type_names()]


def _credentials(request: Request, person: Principal, access: Access, status_code: int = 200,
                 type_: str | None = None, **context: Any) -> Template:
    rt = runtime_of(request)
    names = rt.registry.credential_type_names()
    chosen = type_ if type_ in names else ("basic" if "basic" in names else names[0])
    spec = rt.registry.credential_type(chosen)
    notice = {"saved": "Credential saved.", "deleted": "Credential deleted."}.get(request.query_params.get("done", ""))
    return render(request, "credentials.html", person, access, status_code,
                          credentials=rt.vault.list(access.tenant_id), types=_types(request), chosen=chosen,
                          spec=spec, fields=credential_fields(spec), extra_rows=EXTRA_ROWS if spec.other else 0,
                          notice=notice, values=context.pop("values", {}), **context)


@get("/t/{tenant:str}/credentials", sync_to_thread=True)
def credentials_page(request: Request, tenant: str) -> Template:
    """The list (names, types, which fields are set; never values) and, for editors, the form for a
    new one, generated from the schema of the type chosen in `?type=`."""
    person, access = workspace(request, tenant, "credentials.read")
    return _credentials(request, person, access, type_=request.query_params.get("type"))


def _form_data(spec, data: dict[str, str], keep_blank: bool) -> dict[str, str | None]:
    """The credential fields in a posted form: declared fields as `field.<name>`, others (types such as
    generic) as `extra_name_N`/`extra_value_N` pairs. A blank field is left out (kept, on the edit
    form); on the edit form `remove.<name>` removes a field that is not required."""
    fields: dict[str, str | None] = {}
    for name in spec.fields:
        value = data.get(f"field.{name}", "")
        if value != "":
            fields[name] = value
    if spec.other is not None:
        for i in range(1, EXTRA_ROWS + 1):
            name, value = data.get(f"extra_name_{i}", "").strip(), data.get(f"extra_value_{i}", "")
            if name and value != "":
                fields[name] = value
            elif value != "" and not name:
                raise Invalid("fields", f"other field {i} has a value but no name")
    if keep_blank:
        for key, value in data.items():
            if key.startswith("remove.") and value:
                fields[key.removeprefix("remove.")] = None
    return fields


@post("/t/{tenant:str}/credentials", sync_to_thread=True, status_code=200)
def create_credential(request: Request, tenant: str, data: Form) -> Template | Redirect:
    person, access = acting(request, tenant, "credentials.write", data)
    spec = runtime_of(request).registry.credential_type(data.get("type", ""))
    name = data.get("name", "").strip()
    try:
        if spec is None:
            raise Invalid("type", "choose one of the credential types")
        store_credential(request, person, access, name, spec.name, _form_data(spec, data, False))
    except ACTION_ERRORS as exc:
        kept = {f: data.get(f"field.{f}", "") for f, s in (spec.fields.items() if spec else []) if not s.secret}
        return _credentials(request, person, access, status_of(exc), type_=data.get("type"), error=message(exc),
                            entered_name=name, values=kept)
    return back(f"/t/{tenant}/credentials", done="saved")


def _credential(request: Request, person: Principal, access: Access, credential_id: str,
                status_code: int = 200, **context: Any) -> Template:
    rt = runtime_of(request)
    try:
        meta = rt.vault.describe(access.tenant_id, credential_id)
    except LookupError:
        raise NotFound(f"no credential {credential_id!r} in this workspace") from None
    spec = rt.registry.credential_type(meta["type"])
    fields = credential_fields(spec) if spec else []
    declared = {f["name"] for f in fields}
    others = [f for f in (meta["fields"] or []) if f not in declared]
    q = request.query_params
    result = None
    if q.get("tested"):
        result = {"ok": q.get("tested") == "ok", "status": q.get("status"), "message": q.get("message")}
    return render(request, "credential_form.html", person, access, status_code, c=meta,
                          spec=spec, fields=fields, others=others, extra_rows=EXTRA_ROWS if spec and spec.other else 0,
                          result=result, url=context.pop("url", q.get("url", "")),
                          notice="Credential saved." if q.get("done") == "saved" else None, **context)


@get("/t/{tenant:str}/credentials/{credential_id:str}", sync_to_thread=True)
def credential_page(request: Request, tenant: str, credential_id: str) -> Template:
    """Edit one credential: every field is blank (secrets are never sent back); blank keeps a value."""
    person, access = workspace(request, tenant, "credentials.write")
    return _credential(request, person, access, credential_id)


@post("/t/{tenant:str}/credentials/{credential_id:str}/{action:str}", sync_to_thread=True, status_code=200)
def credential_action(request: Request, tenant: str, credential_id: str, action: str,
                      data: Form) -> Template | Redirect:
    """update, test (GET a URL with it, as POST .../test of the API) or delete."""
    person, access = acting(request, tenant, "credentials.write", data)
    if action not in ("update", "test", "delete"):
        raise NotFound(f"no action {action!r}")
    here = f"/t/{tenant}/credentials/{credential_id}"
    try:
        if action == "delete":
            remove_credential(request, person, access, credential_id)
            return back(f"/t/{tenant}/credentials", done="deleted")
        if action == "test":
            url = data.get("url", "").strip()
            if not url:
                raise Invalid("url", "give a URL to GET with the credential")
            result = try_credential(request, person, access, credential_id, url)
            return back(here, tested="ok" if result["ok"] else "failed", status=result.get("status"),
                        message=result.get("message"), url=url)
        meta = runtime_of(request).vault.describe(access.tenant_id, credential_id)
        spec = runtime_of(request).registry.credential_type(meta["type"])
        if spec is None:
            raise Invalid("type", f"no installed connector provides the type {meta['type']!r}")
        name = data.get("name", "").strip()
        change_credential(request, person, access, credential_id, name if name != meta["name"] else None,
                          _form_data(spec, data, True))
    except LookupError as exc:  # the vault's "no credential with id ..."
        if isinstance(exc, NotFound):
            raise
        raise NotFound(str(exc).strip("'\"")) from None
    except ACTION_ERRORS as exc:
        return _credential(request, person, access, credential_id, status_of(exc), error=message(exc),
                           url=data.get("url", ""))
    return back(here, done="saved")


# -- variables ------------------------------------------------------------------------------------------------
def _variables(request: Request, person: Principal, access: Access, status_code: int = 200,
               **context: Any) -> Template:
    found = runtime_of(request).catalog.variables(access.tenant_id)
    rows = [{"name": k, "value": json.dumps(v, ensure_ascii=False)} for k, v in sorted(found.items())]
    notice = {"set": "Variable saved.", "deleted": "Variable deleted."}.get(request.query_params.get("done", ""))
    return render(request, "variables.html", person, access, status_code, variables=rows,
                          notice=notice, **context)


@get("/t/{tenant:str}/variables", sync_to_thread=True)
def variables_page(request: Request, tenant: str) -> Template:
    person, access = workspace(request, tenant, "variables.read")
    return _variables(request, person, access)


def variable_value(text: str, kind: str) -> Any:
    """A form's value: the text as it is, or, with kind "json", the JSON value it spells."""
    if kind != "json":
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Invalid("value", f"is not valid JSON ({exc})") from None


@post("/t/{tenant:str}/variables", sync_to_thread=True, status_code=200)
def set_variable(request: Request, tenant: str, data: Form) -> Template | Redirect:
    person, access = acting(request, tenant, "variables.write", data)
    name = data.get("name", "").strip()
    try:
        store_variable(request, person, access, name, variable_value(data.get("value", ""), data.get("kind", "")))
    except ACTION_ERRORS as exc:
        return _variables(request, person, access, status_of(exc), error=message(exc), entered_name=name,
                          value=data.get("value", ""), kind=data.get("kind", ""))
    return back(f"/t/{tenant}/variables", done="set")


@post("/t/{tenant:str}/variables/{name:str}/delete", sync_to_thread=True, status_code=200)
def delete_variable(request: Request, tenant: str, name: str, data: Form) -> Template | Redirect:
    person, access = acting(request, tenant, "variables.write", data)
    try:
        remove_variable(request, person, access, name)
    except ACTION_ERRORS as exc:
        return _variables(request, person, access, status_of(exc), error=message(exc))
    return back(f"/t/{tenant}/variables", done="deleted")


# -- members and invitations ---------------------------------------------------------------------------------
def grantable(access: Access) -> list[str]:
    """The roles this person may give: all but owner, which only owners grant (Identity.set_role)."""
    return [r for r in ROLES if r != "owner" or access.role == "owner"]


def _members(request: Request, person: Principal, access: Access, status_code: int = 200,
             **context: Any) -> Template:
    identity = runtime_of(request).identity
    manage = role_at_least(access.role, PERMISSIONS["members.manage"])
    invitations = []
    if manage:
        now = dt.datetime.now(dt.UTC).timestamp()
        invitations = [i for i in identity.invitations(access.tenant_id)
                       if i["accepted_at"] is None and i["expires_at"] > now]
    notice = {"role": "Role changed.", "removed": "Member removed.",
              "revoked": "Invitation withdrawn."}.get(request.query_params.get("done", ""))
    return render(request, "members.html", person, access, status_code,
                          members=identity.members(access.tenant_id), invitations=invitations,
                          roles=grantable(access), notice=notice, **context)


@get("/t/{tenant:str}/members", sync_to_thread=True)
def members_page(request: Request, tenant: str) -> Template:
    person, access = workspace(request, tenant, "members.read")
    return _members(request, person, access)


@post("/t/{tenant:str}/members/{user_id:str}/{action:str}", sync_to_thread=True, status_code=200)
def member_action(request: Request, tenant: str, user_id: str, action: str, data: Form) -> Template | Redirect:
    """role (change it) or remove; the owner rules and their messages are Identity's, as in the API."""
    person, access = acting(request, tenant, "members.manage", data)
    if action not in ("role", "remove"):
        raise NotFound(f"no action {action!r}")
    try:
        if action == "role":
            change_role(request, person, access, user_id, data.get("role", ""))
        else:
            drop_member(request, person, access, user_id)
    except ACTION_ERRORS as exc:
        return _members(request, person, access, status_of(exc), error=message(exc))
    return back(f"/t/{tenant}/members", done="role" if action == "role" else "removed")


@post("/t/{tenant:str}/invitations", sync_to_thread=True, status_code=200)
def create_invitation(request: Request, tenant: str, data: Form) -> Template:
    """The answer shows the invitation link once (when it was not mailed), like the API's, so it is
    rendered rather than redirected."""
    person, access = acting(request, tenant, "members.manage", data)
    try:
        invited = send_invitation(request, person, access, data.get("email", "").strip(), data.get("role", ""))
    except ACTION_ERRORS as exc:
        return _members(request, person, access, status_of(exc), error=message(exc), email=data.get("email", ""),
                        invite_role=data.get("role", ""))
    return no_store(_members(request, person, access, 201, invited=invited))


@post("/t/{tenant:str}/invitations/{invitation_id:str}/revoke", sync_to_thread=True, status_code=200)
def revoke_invitation_action(request: Request, tenant: str, invitation_id: str, data: Form) -> Template | Redirect:
    person, access = acting(request, tenant, "members.manage", data)
    try:
        revoke_invitation(request, person, access, invitation_id)
    except ACTION_ERRORS as exc:
        return _members(request, person, access, status_of(exc), error=message(exc))
    return back(f"/t/{tenant}/members", done="revoked")


def no_store(template: Template) -> Template:
    """Pages that show a secret once (the console marks every page no-store; this says so here too)."""
    template.headers["cache-control"] = "no-store"
    return template


# -- API keys -------------------------------------------------------------------------------------------------
def _keys(request: Request, person: Principal, access: Access, status_code: int = 200, **context: Any) -> Template:
    now = dt.datetime.now(dt.UTC).timestamp()
    keys = runtime_of(request).identity.keys(access.tenant_id)
    for k in keys:
        k["state"] = ("revoked" if k["revoked_at"] else "expired" if k["expires_at"] and k["expires_at"] <= now
                      else "active")
    notice = "Key revoked: it stops working at once." if request.query_params.get("done") == "revoked" else None
    roles = [r for r in ROLES if role_at_least(access.role, r)]
    return render(request, "keys.html", person, access, status_code, keys=keys, roles=roles,
                          notice=notice, **context)


@get("/t/{tenant:str}/keys", sync_to_thread=True)
def keys_page(request: Request, tenant: str) -> Template:
    person, access = workspace(request, tenant, "api_keys.manage")
    return _keys(request, person, access)


def expiry(text: str) -> float | None:
    """The end (UTC) of the day chosen in the form's date field, as epoch seconds; None if none."""
    if not text.strip():
        return None
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise Invalid("expires", "give a date as YYYY-MM-DD") from None
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()


@post("/t/{tenant:str}/keys", sync_to_thread=True, status_code=200)
def create_key(request: Request, tenant: str, data: Form) -> Template:
    """The answer holds the key, shown this once (only its hash is kept), so it is rendered, not redirected."""
    person, access = acting(request, tenant, "api_keys.manage", data)
    try:
        made = make_key(request, person, access, data.get("name", ""), data.get("role", ""),
                        expiry(data.get("expires", "")))
    except ACTION_ERRORS as exc:
        return _keys(request, person, access, status_of(exc), error=message(exc), entered_name=data.get("name", ""))
    return no_store(_keys(request, person, access, 201, made=made))


@post("/t/{tenant:str}/keys/{key_id:str}/revoke", sync_to_thread=True, status_code=200)
def revoke_key(request: Request, tenant: str, key_id: str, data: Form) -> Template | Redirect:
    person, access = acting(request, tenant, "api_keys.manage", data)
    try:
        end_key(request, person, access, key_id)
    except ACTION_ERRORS as exc:
        return _keys(request, person, access, status_of(exc), error=message(exc))
    return back(f"/t/{tenant}/keys", done="revoked")


# -- the audit log --------------------------------------------------------------------------------------------
def epoch(text: str | None, field: str) -> float | None:
    """A `datetime-local` field's value, read as UTC (the console shows times in UTC)."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise Invalid(field, "give a time as YYYY-MM-DDTHH:MM") from None


@get("/t/{tenant:str}/audit", sync_to_thread=True)
def audit_page(request: Request, tenant: str) -> Template:
    """The workspace's audit log, newest first, filtered as GET /tenants/{t}/audit is, a page at a time
    (`before` = the last seq shown), with the state of the whole log's hash chain."""
    person, access = workspace(request, tenant, "audit.read")
    q = request.query_params
    filters = {k: (q.get(k) or "").strip() for k in ("actor", "action", "target", "from", "to")}
    error, page_, status_code = None, {"items": [], "next": None}, 200
    try:
        before = q.get("before")
        if before is not None and not before.isdigit():
            raise Invalid("before", "must be a whole number (the last entry number of the previous page)")
        page_ = audit_entries(request, access.tenant_id, actor=filters["actor"] or None,
                              action=filters["action"] or None, target=filters["target"] or None,
                              since=epoch(filters["from"], "from"), until=epoch(filters["to"], "to"),
                              before=int(before) if before else None, limit=AUDIT_PAGE)
    except Invalid as exc:
        error, status_code = message(exc), 422
    chain, walked = runtime_of(request).audit.verify_since_last()
    shown = {k: v for k, v in filters.items() if v}
    return render(request, "audit.html", person, access, status_code, entries=page_["items"],
                          next_url=f"?{urlencode({**shown, 'before': page_['next']})}" if page_["next"] else None,
                          filters=filters, query=urlencode(shown), chain=chain, walked=walked, error=error)


@get("/t/{tenant:str}/audit/export", sync_to_thread=True)
def audit_export(request: Request, tenant: str) -> Response:
    """The workspace's whole log, oldest first, as `flowfuse audit export` writes it (AuditLog.export):
    CSV, or JSON lines; each entry's hash can be recomputed from the file."""
    _, access = workspace(request, tenant, "audit.read")
    fmt = request.query_params.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        raise NotFound("export as csv or jsonl")
    out = io.StringIO()
    runtime_of(request).audit.export(out, fmt, tenant_id=access.tenant_id)
    slug = access.tenant["slug"]
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
    return Response(out.getvalue(), media_type=media,
                    headers={"content-disposition": f'attachment; filename="audit-{slug}.{fmt}"'})


# -- settings -------------------------------------------------------------------------------------------------
def _settings(request: Request, person: Principal, access: Access, status_code: int = 200,
              **context: Any) -> Template:
    notice = {"name": "Name saved.", "security": "Security settings saved.",
              "quotas": "Quotas saved."}.get(request.query_params.get("done", ""))
    return render(request, "settings.html", person, access, status_code,
                          settings=tenant_settings(access.tenant), quotas=runtime_of(request).quotas.view(
                              access.tenant_id), quota_names=QUOTA_NAMES, notice=notice, **context)


@get("/t/{tenant:str}/settings", sync_to_thread=True)
def settings_page(request: Request, tenant: str) -> Template:
    person, access = workspace(request, tenant, "tenant.settings")
    return _settings(request, person, access)


def quota_changes(data: dict[str, str]) -> dict[str, int | None]:
    """Every quota in the form: blank goes back to the instance default, else a whole number (0: unlimited)."""
    changes: dict[str, int | None] = {}
    for name in QUOTA_NAMES:
        text = data.get(f"quota.{name}", "").strip()
        if text and not text.isdigit():
            raise Invalid(name, "must be a whole number of 0 or more (0: unlimited), or blank for the instance default")
        if len(text) > 12:
            raise Invalid(name, "is too large; 0 is unlimited")
        changes[name] = int(text) if text else None
    return changes


@post("/t/{tenant:str}/settings/{action:str}", sync_to_thread=True, status_code=200)
def settings_action(request: Request, tenant: str, action: str, data: Form) -> Template | Redirect:
    """name (rename), security (require two-factor sign-in) or quotas (instance admins, as
    PATCH /tenants/{t}/quotas)."""
    person, access = acting(request, tenant, "tenant.settings", data)
    if action not in ("name", "security", "quotas"):
        raise NotFound(f"no action {action!r}")
    try:
        if action == "name":
            change_tenant(request, person, access, name=data.get("name", "").strip())
        elif action == "security":
            change_settings(request, person, access, {"require_mfa": data.get("require_mfa") == "on"})
        else:
            Identity.require_admin(person, "changing quotas")
            change_quotas(request, person, access.tenant_id, quota_changes(data))
    except ACTION_ERRORS as exc:
        fresh = check_access(request, person, tenant, "tenant.settings")
        return _settings(request, person, fresh, status_of(exc), error=message(exc))
    return back(f"/t/{tenant}/settings", done=action)


routes = [credentials_page, create_credential, credential_page, credential_action, variables_page, set_variable,
          delete_variable, members_page, member_action, create_invitation, revoke_invitation_action, keys_page,
          create_key, revoke_key, audit_page, audit_export, settings_page, settings_action]
