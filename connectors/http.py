"""The http_request node: one request per input item, through a shared httpx client.

Auth comes from the node's credential, of a type registered here: `basic` (username, password),
`bearer` (token) or `header` (name, value); the engine redacts their secret fields from the
recorded output. `generic` (any fields, all secret) is registered here too, for nodes that take
secrets of no fixed shape. Every request carries the step's idempotency key so that a request
replayed after a crash can be recognised by the receiving side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import weakref
from typing import Any

import httpx

from connectors.sdk.auth import CredentialAuth
from engine.executor import redact_text

from .core import HTTP_METHODS
from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = weakref.WeakKeyDictionary()


def client() -> httpx.AsyncClient:
    """One pooled client per event loop (the worker and the web process each have one loop)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None or found.is_closed:
        found = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                                  headers={"User-Agent": "FlowFuse"})
        _clients[loop] = found
    return found


def transport_error(method: str, url: str, timeout_s: float, exc: Exception) -> NodeError:
    """What a request that got no answer (time-out, bad URL, refused connection) says to the user."""
    if isinstance(exc, httpx.TimeoutException):
        return NodeError(f"{method} {url} timed out after {timeout_s} s")
    if isinstance(exc, httpx.InvalidURL):
        return NodeError(f"invalid url {url!r}: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return NodeError(f"url {url!r} must start with http:// or https://")
    return NodeError(f"{method} {url} failed: {exc or type(exc).__name__}")


def try_credential(credential: dict, url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET `url` authenticated with the credential (the console's and API's "test" button):
    {"ok", "status"}, or {"ok": False, "message"} when no answer came. Secrets never appear in it."""
    try:
        with httpx.Client(timeout=timeout_s, headers={"User-Agent": "FlowFuse"}) as client:
            response = client.get(url, auth=CredentialAuth(credential) if credential else None)
    except (NodeError, httpx.HTTPError, httpx.InvalidURL) as exc:
        return {"ok": False, "message": redact_text(str(exc) or type(exc).__name__, credential)}
    return {"ok": response.status_code < 400, "status": response.status_code}


def _decode(response: httpx.Response, mode: str, content: bytes) -> Any:
    if mode == "binary":
        return {"data": base64.b64encode(content).decode(), "encoding": "base64",
                "content_type": response.headers.get("content-type", "")}
    text = content.decode(response.encoding or "utf-8", errors="replace")
    if mode == "json":
        if not content.strip():
            return None
        try:
            return json.loads(text)  # the response was streamed: response.json() would raise ResponseNotRead
        except ValueError:
            raise NodeError(f"response from {response.url} is not JSON (set response: text to take it as text): "
                            f"{text[:120]!r}") from None
    return text


async def _request(ctx: NodeContext, item: dict, idempotency_key: str) -> dict:
    p = ctx.params(item)
    method = str(p["method"]).upper()
    if method not in HTTP_METHODS:
        raise NodeError(f"method must be one of {', '.join(HTTP_METHODS)}, got {method!r}")
    headers = {str(k): str(v) for k, v in (p["headers"] or {}).items()}
    headers.setdefault("Idempotency-Key", idempotency_key)
    auth = CredentialAuth(ctx.credential, ctx) if ctx.credential else None
    kwargs: dict[str, Any] = {}
    body = p["body"]
    if body is not None and method not in ("GET", "HEAD"):
        if p["body_type"] == "json":
            kwargs["json"] = body
        elif p["body_type"] == "form":
            if not isinstance(body, dict):
                raise NodeError("a form body must be an object of fields")
            kwargs["data"] = {str(k): str(v) for k, v in body.items()}
        else:
            kwargs["content"] = body if isinstance(body, str) else str(body)
    try:
        request = client().build_request(method, p["url"], params=p["query"] or None, headers=headers,
                                         timeout=p["timeout_s"], **kwargs)
        response = await client().send(request, auth=auth, follow_redirects=p["follow_redirects"], stream=True)
        try:
            content = b""
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_RESPONSE_BYTES:
                    raise NodeError(f"response from {p['url']} is larger than {MAX_RESPONSE_BYTES} bytes")
        finally:
            await response.aclose()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise transport_error(method, p["url"], p["timeout_s"], exc) from None
    if response.status_code >= 400 and not p["ignore_status"]:
        raise NodeError(f"{method} {p['url']} answered HTTP {response.status_code}: "
                        f"{content[:200].decode(errors='replace')!r}")
    return {"status": response.status_code, "headers": dict(response.headers),
            "body": _decode(response, p["response"], content)}


async def _http_request(ctx: NodeContext, items: list[dict]) -> list[dict]:
    key = ctx.idempotency_key
    return [await _request(ctx, item, key if i == 0 else f"{key}#{i}") for i, item in enumerate(items)]


def _basic_header(fields: Any) -> list[str]:
    """The base64 of `username:password` that a Basic auth header carries."""
    user, password = fields.get("username"), fields.get("password")
    if not (isinstance(user, str) and isinstance(password, str)):
        return []
    return [base64.b64encode(f"{user}:{password}".encode()).decode()]


CREDENTIAL_TYPES = (
    CredentialType("basic", {"username": Field("User name", secret=False), "password": Field("Password")},
                   derived=_basic_header, description="HTTP Basic authentication."),
    CredentialType("bearer", {"token": Field("Token")}, description="An `Authorization: Bearer` token."),
    CredentialType("header", {"name": Field("Header name", secret=False), "value": Field("Header value")},
                   description="One request header, e.g. X-Api-Key."),
    CredentialType("generic", other=Field(required=False),
                   description="Any fields, all secret, for nodes that read them by name."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    registry.add(NodeType("http_request", _http_request, label="HTTP request", category="HTTP", credential=True,
                          params={
        "method": Param("string", default="GET"),
        "url": Param("string", required=True),
        "query": Param("object"),
        "headers": Param("object"),
        "body": Param("any"),
        "body_type": Param("string", default="json", choices=("json", "form", "raw")),
        "timeout_s": Param("number", default=30),
        "follow_redirects": Param("boolean", default=True),
        "response": Param("string", default="json", choices=("json", "text", "binary")),
        "ignore_status": Param("boolean", default=False, description="do not fail on HTTP 4xx/5xx"),
    }, description="Sends an HTTP request for each item; outputs status, headers and body."))
