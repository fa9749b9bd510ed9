"""Authenticate an HTTP request with any credential: the one helper every connector uses.

    from connectors.sdk.auth import CredentialAuth
    response = await client.get(url, auth=CredentialAuth(ctx.credential, ctx))

(`connectors.sdk.http.call` does this for you.) `CredentialAuth` is an `httpx.Auth` that knows
every built-in credential type:

- `api_key`: fields `key` (secret), `name` (the header or query parameter, default X-API-Key) and
  `in` (`header`, the default, or `query`).
- `bearer` (`token`), `basic` (`username`, `password`), `header` (`name`, `value`).
- `oauth2_client_credentials` (`token_url`, `client_id`, `client_secret`, `scope`): the access
  token is fetched from the token endpoint (RFC 6749 section 4.4), kept in memory until shortly
  before it expires, and fetched again once when the API answers 401.
- `oauth2_authorization_code` (`auth_url`, `token_url`, `client_id`, `client_secret`, `scope`):
  a person connects it once in the browser (`/api/v1/tenants/{t}/credentials/{id}/oauth/start`,
  see web/api/oauth.py); its tokens (`access_token`, `refresh_token`, `expires_at`) are kept in
  the vault with the credential. An expired token (or a 401) is refreshed with the refresh
  token, and the new tokens are written back to the vault.

A connector with a credential type of its own teaches this module how to apply it, once, with
`register_scheme("acme", lambda credential, request: request.headers.update(...))`.

Tokens fetched here are added to `ctx.credential` (as undeclared fields, which count as secret),
so the engine redacts them from everything the run records, like the credential's own secrets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import httpx

from engine.executor import NodeError
from engine.nodes import CredentialType, Field, Registry

log = logging.getLogger("flowfuse.connectors.auth")
#: A token this close to its expiry is fetched again before use.
EXPIRY_MARGIN_S = 30.0
TOKEN_TIMEOUT_S = 20.0

Scheme = Callable[[Mapping[str, Any], httpx.Request], None]
_schemes: dict[str, Scheme] = {}


def register_scheme(type_name: str, scheme: Scheme) -> Scheme:
    """Teach `CredentialAuth` how a credential type of your own authenticates a request."""
    _schemes[type_name] = scheme
    return scheme


# -- the static schemes ----------------------------------------------------------------------------------------------
def _field(credential: Mapping[str, Any], name: str) -> str:
    value = credential.get(name)
    if not value:
        raise NodeError(f"credential of type {credential.get('type')!r} lacks the field {name!r}")
    return str(value)


def apply(credential: Mapping[str, Any], headers: MutableMapping[str, str],
          params: MutableMapping[str, Any] | None = None) -> None:
    """Put a credential of a static type (api_key, bearer, basic, header, or one registered with
    `register_scheme`) into request headers (and query params for an api_key `in: query`).
    OAuth2 credentials need token requests: use `CredentialAuth` (or `connectors.sdk.http.call`)."""
    request = httpx.Request("GET", "http://placeholder/", headers=dict(headers), params=dict(params or {}))
    _apply_static(credential, request)
    headers.clear()
    headers.update({k: v for k, v in request.headers.items() if k.lower() not in ("host",)})
    if params is not None:
        params.clear()
        params.update(dict(request.url.params))


def _apply_static(credential: Mapping[str, Any], request: httpx.Request) -> bool:
    """Authenticate `request` in place; False for the OAuth2 types (which need a token first)."""
    kind = credential.get("type")
    if kind == "api_key":
        name, key = credential.get("name") or "X-API-Key", _field(credential, "key")
        where = (credential.get("in") or "header").lower()
        if where == "query":
            request.url = request.url.copy_merge_params({name: key})
        elif where == "header":
            request.headers[name] = key
        else:
            raise NodeError(f"an api_key credential's field 'in' must be 'header' or 'query', got {where!r}")
    elif kind == "bearer":
        request.headers["Authorization"] = f"Bearer {_field(credential, 'token')}"
    elif kind == "basic":
        pair = f"{_field(credential, 'username')}:{credential.get('password') or ''}"
        request.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif kind == "header":
        request.headers[_field(credential, "name")] = _field(credential, "value")
    elif kind in ("oauth2_client_credentials", "oauth2_authorization_code"):
        return False
    elif kind in _schemes:
        _schemes[kind](credential, request)
    else:
        raise NodeError(f"credential type {kind!r} cannot authenticate HTTP requests by itself (use api_key, bearer, "
                        "basic, header or an OAuth2 type, or register_scheme() for it)")
    return True


# -- OAuth2 tokens -----------------------------------------------------------------------------------------------------
def token_request(credential: Mapping[str, Any], grant: dict[str, str]) -> dict[str, Any]:
    """The httpx keyword arguments of a token endpoint request (RFC 6749 section 3.2): the grant as a
    form, the client authenticated with HTTP Basic, or in the form when `client_auth` is `post`."""
    data = dict(grant)
    kwargs: dict[str, Any] = {"url": _field(credential, "token_url"), "headers": {"Accept": "application/json"}}
    client_id, secret = _field(credential, "client_id"), str(credential.get("client_secret") or "")
    if (credential.get("client_auth") or "basic") == "post":
        data.update(client_id=client_id, client_secret=secret)
    else:
        from urllib.parse import quote

        kwargs["auth"] = httpx.BasicAuth(quote(client_id, safe=""), quote(secret, safe=""))
    kwargs["data"] = data
    return kwargs


def token_fields(response: httpx.Response, url: str, now: float | None = None) -> dict[str, str]:
    """The fields to keep from a token endpoint's answer; NodeError with its `error` if it refused."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400 or not isinstance(body, dict) or not body.get("access_token"):
        if isinstance(body, dict) and body.get("error"):
            reason = str(body["error"]) + (f": {body['error_description']}" if body.get("error_description") else "")
        else:
            reason = f"HTTP {response.status_code}: {response.text[:200]!r}"
        raise NodeError(f"the token endpoint {url} refused: {reason}")
    fields = {"access_token": str(body["access_token"])}
    if body.get("refresh_token"):
        fields["refresh_token"] = str(body["refresh_token"])
    expires_in = body.get("expires_in")
    if isinstance(expires_in, (int, float, str)) and str(expires_in).replace(".", "", 1).isdigit():
        fields["expires_at"] = str(int((time.time() if now is None else now) + float(expires_in)))
    else:
        fields["expires_at"] = ""
    return fields


def _expired(fields: Mapping[str, Any]) -> bool:
    expires_at = fields.get("expires_at")
    try:
        return bool(expires_at) and float(expires_at) - EXPIRY_MARGIN_S <= time.time()
    except (TypeError, ValueError):
        return False


def _http() -> httpx.AsyncClient:
    from connectors.http import client  # the pooled client of this event loop

    return client()


async def _post_token(credential: Mapping[str, Any], grant: dict[str, str]) -> dict[str, str]:
    kwargs = token_request(credential, grant)
    try:
        response = await _http().post(timeout=TOKEN_TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise NodeError(f"the token endpoint {kwargs['url']} could not be reached: {exc or type(exc).__name__}") \
            from None
    return token_fields(response, kwargs["url"])


#: Client-credentials tokens by (token_url, client_id, secret digest, scope): (token, expires_at).
_client_tokens: dict[tuple[str, ...], dict[str, str]] = {}
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _lock(key: Any) -> asyncio.Lock:
    """One lock per credential and event loop, so concurrent nodes fetch or refresh a token once."""
    per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(key, asyncio.Lock())


def _client_key(credential: Mapping[str, Any]) -> tuple[str, ...]:
    digest = hashlib.sha256(str(credential.get("client_secret") or "").encode()).hexdigest()
    return (str(credential.get("token_url")), str(credential.get("client_id")), digest,
            str(credential.get("scope") or ""))


async def client_credentials_token(credential: Mapping[str, Any], *, force: bool = False) -> str:
    """The access token of an oauth2_client_credentials credential, from the cache unless expired or `force`."""
    key = _client_key(credential)
    async with _lock(key):
        cached = _client_tokens.get(key)
        if force or cached is None or _expired(cached):
            grant = {"grant_type": "client_credentials"}
            if credential.get("scope"):
                grant["scope"] = str(credential["scope"])
            cached = _client_tokens[key] = await _post_token(credential, grant)
        return cached["access_token"]


def _where(ctx: Any) -> tuple[Any, str | None, str | None]:
    """(services, tenant id, credential name) of a node, polling or event context, to save tokens."""
    if ctx is None:
        return None, None, None
    services = getattr(ctx, "services", None)
    tenant_id = getattr(ctx, "tenant_id", None)
    name = getattr(ctx, "credential_name", None)
    run, node = getattr(ctx, "run", None), getattr(ctx, "node", None)
    if tenant_id is None and run is not None:
        tenant_id = run.ref.tenant_id
    if name is None and node is not None:
        name = getattr(node, "credential", None)
    return services, tenant_id, name


async def authorization_code_token(credential: MutableMapping[str, Any], ctx: Any = None, *,
                                   force: bool = False) -> str:
    """The access token of an oauth2_authorization_code credential, refreshed first when it has
    expired (or when `force`), the new tokens written back to the vault through the runtime."""
    if not credential.get("access_token") and not credential.get("refresh_token"):
        raise NodeError("the OAuth2 credential is not connected yet: an editor connects it with the console's "
                        "Connect button (GET /api/v1/tenants/{tenant}/credentials/{id}/oauth/start)")
    services, tenant_id, name = _where(ctx)
    async with _lock(("code", tenant_id, name, credential.get("client_id"))):
        if services is not None and tenant_id and name and hasattr(services, "credential"):
            # another execution may have refreshed it meanwhile: the vault has the newest tokens
            newest = await asyncio.to_thread(services.credential, tenant_id, name)
            for field in ("access_token", "refresh_token", "expires_at"):
                if newest.get(field) and newest.get(field) != credential.get(field):
                    credential[field] = newest[field]
                    force = force and field != "access_token"
        if credential.get("access_token") and not force and not _expired(credential):
            return str(credential["access_token"])
        if not credential.get("refresh_token"):
            raise NodeError("the OAuth2 access token has expired and the credential has no refresh token: connect "
                            "it again (GET /api/v1/tenants/{tenant}/credentials/{id}/oauth/start)")
        grant = {"grant_type": "refresh_token", "refresh_token": str(credential["refresh_token"])}
        if credential.get("scope"):
            grant["scope"] = str(credential["scope"])
        fields = await _post_token(credential, grant)
        fields.setdefault("refresh_token", str(credential["refresh_token"]))  # not every provider rotates it
        credential.update(fields)
        saver = getattr(services, "save_credential_fields", None)
        if saver is not None and tenant_id and name:
            await asyncio.to_thread(saver, tenant_id, name, fields)
        else:
            log.warning("refreshed the OAuth2 token of credential %r without a vault to keep it in", name)
        return fields["access_token"]


class CredentialAuth(httpx.Auth):
    """httpx authentication from any credential (see the module docstring). `ctx` (a node's, a
    poll's or an event listener's context) lets OAuth2 tokens be refreshed and saved."""

    requires_response_body = False

    def __init__(self, credential: Mapping[str, Any], ctx: Any = None):
        self.credential = credential
        self.ctx = ctx

    def sync_auth_flow(self, request: httpx.Request):
        if not _apply_static(self.credential, request):
            raise NodeError(f"a {self.credential.get('type')} credential needs an async client")
        yield request

    async def _token(self, force: bool) -> str:
        kind = self.credential.get("type")
        if kind == "oauth2_client_credentials":
            token = await client_credentials_token(self.credential, force=force)
        else:
            token = await authorization_code_token(self.credential, self.ctx, force=force)  # type: ignore[arg-type]
        if isinstance(self.credential, MutableMapping) and kind == "oauth2_client_credentials":
            self.credential["access_token"] = token  # an undeclared field: redacted like a secret
        return token

    async def async_auth_flow(self, request: httpx.Request):
        if _apply_static(self.credential, request):
            yield request
            return
        request.headers["Authorization"] = f"Bearer {await self._token(force=False)}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one new token, one more try
            request.headers["Authorization"] = f"Bearer {await self._token(force=True)}"
            yield request


CREDENTIAL_TYPES = (
    CredentialType("api_key", {"key": Field("API key"),
                               "name": Field("Header or query parameter name (default X-API-Key)", secret=False,
                                             required=False),
                               "in": Field("Where it goes: header (default) or query", secret=False, required=False)},
                   description="An API key sent in a header or a query parameter."),
    CredentialType("oauth2_client_credentials", {
        "token_url": Field("Token URL", secret=False),
        "client_id": Field("Client ID", secret=False),
        "client_secret": Field("Client secret"),
        "scope": Field("Scopes (space separated)", secret=False, required=False),
        "client_auth": Field("Client authentication: basic (default) or post", secret=False, required=False),
    }, description="OAuth2 client credentials: the access token is fetched, cached and renewed automatically."),
    CredentialType("oauth2_authorization_code", {
        "auth_url": Field("Authorization URL", secret=False),
        "token_url": Field("Token URL", secret=False),
        "client_id": Field("Client ID", secret=False),
        "client_secret": Field("Client secret"),
        "scope": Field("Scopes (space separated)", secret=False, required=False),
        "client_auth": Field("Client authentication: basic (default) or post", secret=False, required=False),
        "access_token": Field("Access token (set by Connect)", required=False),
        "refresh_token": Field("Refresh token (set by Connect)", required=False),
        "expires_at": Field("Access token expiry, epoch seconds (set by Connect)", secret=False, required=False),
    }, description="OAuth2 authorization code: connect it once in the browser; tokens are kept in the vault and "
                   "refreshed automatically."),
)


def register(registry: Registry) -> None:
    """Register the credential types this module adds (api_key and the OAuth2 types)."""
    for credential_type in CREDENTIAL_TYPES:
        if registry.credential_type(credential_type.name) is None:
            registry.add_credential_type(credential_type)


__all__ = ["CREDENTIAL_TYPES", "CredentialAuth", "apply", "authorization_code_token", "client_credentials_token",
           "register", "register_scheme", "token_fields", "token_request"]
