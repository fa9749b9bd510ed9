"""GraphQL: run a query or mutation with variables against any GraphQL endpoint.

The request is `POST {"query", "variables", "operationName"}` as JSON (GraphQL over HTTP). A
GraphQL server may answer HTTP 200 with `errors` beside partial `data`: errors fail the node,
with each error's message and path, unless `allow_partial` is set (then they are output too).
"""

from __future__ import annotations

from typing import Any

from .sdk import NodeContext, NodeError, NodeType, Param, Registry
from .sdk.http import call

ICON = "graphql.svg"
CATEGORY = "GraphQL"


def _errors_text(errors: list) -> str:
    parts = []
    for e in errors:
        if isinstance(e, dict):
            path = ".".join(str(p) for p in e.get("path") or [])
            parts.append(f"{e.get('message', e)}" + (f" (at {path})" if path else ""))
        else:
            parts.append(str(e))
    return "; ".join(parts)


async def _graphql(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        url = ctx.param("url", item)
        body: dict[str, Any] = {"query": ctx.param("query", item), "variables": ctx.param("variables", item) or {}}
        if ctx.param("operation_name", item):
            body["operationName"] = ctx.param("operation_name", item)
        headers = {str(k): str(v) for k, v in (ctx.param("headers", item) or {}).items()}
        headers.setdefault("Accept", "application/graphql-response+json, application/json")
        response = await call(ctx, "POST", url, json=body, headers=headers, raise_for_status=False,
                              credential=ctx.credential or False)
        try:
            answer = response.json()
        except ValueError:
            raise NodeError(f"POST {url} answered HTTP {response.status_code} without JSON: "
                            f"{response.text[:200]!r}") from None
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if errors and not (ctx.param("allow_partial", item) and answer.get("data") is not None):
            raise NodeError(f"GraphQL errors from {url}: {_errors_text(errors)}")
        if response.status_code >= 400:
            raise NodeError(f"POST {url} answered HTTP {response.status_code}: {response.text[:200]}")
        result = {"data": answer.get("data")}
        if errors:
            result["errors"] = errors
        out.append(result)
    return out


def register(registry: Registry) -> None:
    registry.add(NodeType("graphql.request", _graphql, label="GraphQL", category=CATEGORY, icon=ICON,
                          credential_types=("bearer", "api_key", "basic", "header", "oauth2_client_credentials",
                                            "oauth2_authorization_code"), params={
        "url": Param("string", required=True, description="the GraphQL endpoint, e.g. https://api.example.com/graphql"),
        "query": Param("string", required=True, description="the query or mutation document"),
        "variables": Param("object", description="variables; values may be expressions, e.g. {id: '{{ json.id }}'}"),
        "operation_name": Param("string", description="which operation to run when the document has several"),
        "headers": Param("object", description="extra request headers"),
        "allow_partial": Param("boolean", default=False,
                               description="output partial data with its errors instead of failing"),
    }, description="Runs a GraphQL query or mutation per item; outputs data (errors fail the node)."))
