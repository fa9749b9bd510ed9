"""A tenant's connectors imported from OpenAPI documents: import (text or URL), list, delete.

The node types of an imported connector are the tenant's alone: its flows may use them at once
(validation, the builder's palette with `GET /node-types?tenant=...`, runs), other tenants never
see them. A document that cannot be imported is a 422 whose detail names the place in the
document (`paths./pets.get.parameters[0]: ...`). A URL is fetched through the same client and
network policy as the http_request node, with a size and a time cap (see connectors.openapi).
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, delete, get, post

from appliance.identity import Access, Invalid, Principal
from connectors import openapi

from .base import Body, audit, runtime_of


class ImportIn(Body):
    #: The connector's name: it prefixes its actions (`name.operationId`).
    name: str
    #: The OpenAPI 3.0/3.1 document, JSON or YAML.
    spec: str | None = None
    #: Or where to fetch it from (http or https).
    url: str | None = None


@post("/tenants/{tenant:str}/connectors/openapi", status_code=201, opt={"permission": "flows.write"},
      summary="Import an OpenAPI document as a connector: every operation becomes an action",
      request_max_body_size=2 * openapi.MAX_SPEC_BYTES + 65536)
async def import_openapi(request: Request, principal: Principal, access: Access, tenant: str,
                         data: ImportIn) -> Response[dict]:
    if (data.spec is None) == (data.url is None):
        raise Invalid("spec", "give the document as \"spec\" (JSON or YAML text) or its address as \"url\", not both")
    try:
        document: str | bytes = data.spec if data.spec is not None else await openapi.fetch(data.url or "")
    except openapi.SpecError as exc:
        raise Invalid("url", exc.message) from None
    source = data.url or "request body"
    rt = runtime_of(request)

    def store() -> dict[str, Any]:
        try:
            made = rt.catalog.import_connector(access.tenant_id, data.name, document, source)
        except openapi.SpecError as exc:
            raise Invalid("name" if exc.where == "name" else "spec", str(exc)) from None
        audit(request, principal, "connector.import", tenant_id=access.tenant_id, target_type="connector",
              target_id=data.name, details={"source": source, "actions": len(made["node_types"])})
        return made
    return Response(await asyncio.to_thread(store), status_code=201)


@get("/tenants/{tenant:str}/connectors", sync_to_thread=True, opt={"permission": "flows.read"},
     summary="The tenant's imported connectors and their actions")
def list_connectors(request: Request, principal: Principal, access: Access, tenant: str) -> dict:
    return {"connectors": runtime_of(request).catalog.connectors(access.tenant_id)}


@delete("/tenants/{tenant:str}/connectors/{name:str}", sync_to_thread=True, status_code=204,
        opt={"permission": "flows.write"}, summary="Delete an imported connector (no flow may still use it)")
def delete_connector(request: Request, principal: Principal, access: Access, tenant: str, name: str) -> None:
    runtime_of(request).catalog.delete_connector(access.tenant_id, name)
    audit(request, principal, "connector.delete", tenant_id=access.tenant_id, target_type="connector",
          target_id=name)


HANDLERS = [import_openapi, list_connectors, delete_connector]

__all__ = ["HANDLERS"]
