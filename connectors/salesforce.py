"""Salesforce: SOQL query, create, update and upsert records through the REST API.

Authentication is OAuth2: an `oauth2_client_credentials` credential (a connected app with the
client credentials flow; token URL https://MyDomain.my.salesforce.com/services/oauth2/token) or
an `oauth2_authorization_code` one; the SDK fetches and renews the token. Errors come back as a
list of `{"message", "errorCode"}`, all of which go into the NodeError. A query's records come
in batches: `done: false` with a `nextRecordsUrl` to fetch the next one.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from .sdk import NodeContext, NodeError, NodeType, Param, Registry
from .sdk.http import call

ICON = "salesforce.svg"
CATEGORY = "Salesforce"
API_VERSION = "v62.0"
MAX_BATCHES = 500


def _base(ctx: NodeContext) -> str:
    url = str(ctx.param("instance_url") or "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise NodeError("instance_url must be your org's URL, e.g. https://acme.my.salesforce.com")
    return url


def _data(ctx: NodeContext) -> str:
    return f"{_base(ctx)}/services/data/{ctx.param('api_version')}"


async def _request(ctx: NodeContext, method: str, url: str, **kwargs) -> httpx.Response:
    response = await call(ctx, method, url, raise_for_status=False, **kwargs)
    if response.status_code >= 400:
        try:
            found = response.json()
            errors = found if isinstance(found, list) else [found]
            message = "; ".join(f"{e.get('errorCode', 'ERROR')}: {e.get('message', '')}" for e in errors
                                if isinstance(e, dict))
        except ValueError:
            message = response.text[:300]
        raise NodeError(f"Salesforce {method} {url} answered HTTP {response.status_code}: {message}")
    return response


def _sobject(ctx: NodeContext, item: dict) -> str:
    name = ctx.param("sobject", item)
    if not name or not str(name).replace("_", "").isalnum():
        raise NodeError(f"sobject must be an object's API name, e.g. Account or Invoice__c, got {name!r}")
    return str(name)


async def _query(ctx: NodeContext, items: list[dict]) -> list[dict]:
    """Runs the SOQL once per item and outputs every record (following nextRecordsUrl)."""
    out: list[dict] = []
    for item in items:
        soql = ctx.param("soql", item)
        page = (await _request(ctx, "GET", f"{_data(ctx)}/query", params={"q": soql})).json()
        for _ in range(MAX_BATCHES):
            out += page.get("records", [])
            limit = ctx.param("limit", item)
            if limit and len(out) >= limit:
                return out[:limit]
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                break
            page = (await _request(ctx, "GET", _base(ctx) + page["nextRecordsUrl"])).json()
    return out


async def _create(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        response = await _request(ctx, "POST", f"{_data(ctx)}/sobjects/{_sobject(ctx, item)}",
                                  json=ctx.param("fields", item))
        out.append(response.json())
    return out


async def _update(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        record_id = ctx.param("id", item)
        await _request(ctx, "PATCH", f"{_data(ctx)}/sobjects/{_sobject(ctx, item)}/{quote(str(record_id), safe='')}",
                       json=ctx.param("fields", item))
        out.append({"id": record_id, "success": True})
    return out


async def _upsert(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        field, value = ctx.param("external_id_field", item), ctx.param("external_id", item)
        url = f"{_data(ctx)}/sobjects/{_sobject(ctx, item)}/{quote(str(field), safe='')}/{quote(str(value), safe='')}"
        response = await _request(ctx, "PATCH", url, json=ctx.param("fields", item))
        found = response.json() if response.content else {}
        out.append({"id": found.get("id"), "created": response.status_code == 201, "success": True})
    return out


def register(registry: Registry) -> None:
    common = {"category": CATEGORY, "icon": ICON,
              "credential_types": ("oauth2_client_credentials", "oauth2_authorization_code")}
    org = {
        "instance_url": Param("string", required=True, description="your org's URL, https://acme.my.salesforce.com"),
        "api_version": Param("string", default=API_VERSION, description="REST API version, e.g. v62.0"),
    }
    sobject = Param("string", required=True, description="object API name, e.g. Account, Contact, Invoice__c")
    fields = Param("object", required=True, description="field API name -> value, e.g. {Name: Acme, Phone: ...}")
    add = registry.add
    add(NodeType("salesforce.query", _query, label="SOQL query", params={
        **org, "soql": Param("string", required=True, description="e.g. SELECT Id, Name FROM Account"),
        "limit": Param("integer", default=0, description="most records to output (0: all)"),
    }, description="Runs a SOQL query, following nextRecordsUrl; one item per record.", **common))
    add(NodeType("salesforce.create", _create, label="Create record", params={**org, "sobject": sobject,
                                                                               "fields": fields},
                 description="Creates a record; outputs id, success, errors.", **common))
    add(NodeType("salesforce.update", _update, label="Update record", params={
        **org, "sobject": sobject, "id": Param("string", required=True, description="the record's Id"),
        "fields": fields,
    }, description="Updates fields of a record by Id.", **common))
    add(NodeType("salesforce.upsert", _upsert, label="Upsert record", params={
        **org, "sobject": sobject,
        "external_id_field": Param("string", required=True, description="external id field, e.g. Ext_Id__c"),
        "external_id": Param("string", required=True, description="its value for this record"), "fields": fields,
    }, description="Creates or updates the record with this external id; outputs id and created.", **common))
