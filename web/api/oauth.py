"""Connecting an OAuth2 authorization-code credential (RFC 6749 section 4.1, with PKCE, RFC 7636).

`GET /api/v1/tenants/{t}/credentials/{id}/oauth/start` (an editor: credentials.write) redirects the
browser to the provider's authorization URL. The provider sends it back to
`GET /api/v1/oauth/callback?code&state`, which exchanges the code at the token endpoint and keeps
the tokens (access, refresh, expiry) encrypted in the vault with the credential; from then on
connectors.sdk.auth uses and refreshes them.

`state` carries the tenant, the credential, the person and an expiry, signed with the vault's
signing key: a callback with a state this appliance did not make, made for another person (a
forged link), or older than STATE_TTL_S is refused, and the person must still be allowed to
change the tenant's credentials. The PKCE verifier is derived from the state with the signing key,
so nothing is stored between the two requests. The redirect URI is `{server.base_url}/api/v1/oauth/callback`:
register that at the provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from litestar import Request, Response, get
from litestar.params import QueryParameter
from litestar.response import Redirect

from appliance.identity import Access, Invalid, Principal
from connectors.sdk.auth import TOKEN_TIMEOUT_S, token_fields, token_request
from engine.executor import NodeError

from .base import audit, check_access, problem, runtime_of

TYPE = "oauth2_authorization_code"
STATE_TTL_S = 600
CALLBACK = "/api/v1/oauth/callback"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def redirect_uri(request: Request) -> str:
    return runtime_of(request).settings.base_url + CALLBACK


def _verifier(request: Request, payload: str) -> str:
    """The PKCE code verifier of a state (43+ characters of the unreserved alphabet)."""
    vault = runtime_of(request).vault
    return vault.sign("oauth-pkce", payload) + vault.sign("oauth-pkce-2", payload)


def _state(request: Request, tenant_id: str, credential_id: str, principal: Principal) -> str:
    payload = _b64(json.dumps({"t": tenant_id, "c": credential_id, "p": principal.id,
                               "e": int(time.time()) + STATE_TTL_S, "n": secrets.token_hex(8)}).encode())
    return f"{payload}.{runtime_of(request).vault.sign('oauth-state', payload)}"


def _open_state(request: Request, state: str, principal: Principal) -> tuple[dict[str, Any], str]:
    payload, _, signature = state.partition(".")
    expected = runtime_of(request).vault.sign("oauth-state", payload)
    if not payload or not secrets.compare_digest(expected, signature):
        raise Invalid("state", "this authorization answer was not started here; start again from the credential")
    found = json.loads(_unb64(payload))
    if found["e"] < time.time():
        raise Invalid("state", "the authorization took longer than 10 minutes; start again from the credential")
    if found["p"] != principal.id:
        raise Invalid("state", "this authorization was started by someone else; start it yourself")
    return found, payload


def _oauth_credential(request: Request, tenant_id: str, credential_id: str) -> tuple[dict[str, Any], Any]:
    vault = runtime_of(request).vault
    meta = vault.describe(tenant_id, credential_id)  # LookupError (404) when it is not this tenant's
    if meta["type"] != TYPE:
        raise Invalid("credential", f"credential {meta['name']!r} is of type {meta['type']!r}; only {TYPE} "
                                    "credentials are connected through the browser")
    return meta, vault.get(tenant_id, meta["name"])


@get("/tenants/{tenant:str}/credentials/{credential_id:str}/oauth/start", sync_to_thread=True, status_code=302,
     summary="Connect an OAuth2 authorization-code credential: redirects to the provider's authorization page",
     opt={"permission": "credentials.write"})
def oauth_start(request: Request, principal: Principal, access: Access, tenant: str, credential_id: str) -> Redirect:
    meta, credential = _oauth_credential(request, access.tenant_id, credential_id)
    auth_url = str(credential.get("auth_url") or "")
    if urlsplit(auth_url).scheme not in ("http", "https"):
        raise Invalid("auth_url", f"credential {meta['name']!r} needs an http(s) auth_url")
    state = _state(request, access.tenant_id, credential_id, principal)
    challenge = _b64(hashlib.sha256(_verifier(request, state.partition(".")[0]).encode()).digest())
    query = {"response_type": "code", "client_id": credential["client_id"], "redirect_uri": redirect_uri(request),
             "state": state, "code_challenge": challenge, "code_challenge_method": "S256"}
    if credential.get("scope"):
        query["scope"] = credential["scope"]
    audit(request, principal, "credential.oauth_start", tenant_id=access.tenant_id, target_type="credential",
          target_id=credential_id, details={"name": meta["name"]})
    return Redirect(auth_url + ("&" if "?" in auth_url else "?") + urlencode(query), status_code=302)


@get(CALLBACK.removeprefix("/api/v1"), sync_to_thread=True,
     summary="Where the OAuth2 provider sends the browser back: exchanges the code and keeps the tokens")
def oauth_callback(request: Request, principal: Principal, oauth_state: str = QueryParameter(name="state", default=""),
                   code: str = "", error: str | None = None, error_description: str | None = None) -> Response:
    found, payload = _open_state(request, oauth_state, principal)
    rt = runtime_of(request)
    slug = rt.catalog.tenant_by_id(found["t"])["slug"]
    access = check_access(request, principal, slug, "credentials.write")
    meta, credential = _oauth_credential(request, access.tenant_id, found["c"])
    details = {"name": meta["name"]}
    if error or not code:
        reason = f"{error or 'no code'}" + (f": {error_description}" if error_description else "")
        audit(request, principal, "credential.oauth_connect", tenant_id=access.tenant_id, target_type="credential",
              target_id=found["c"], outcome="refused", details={**details, "reason": reason})
        return problem(400, "Not connected", f"the provider did not authorize the connection ({reason})")
    kwargs = token_request(credential, {"grant_type": "authorization_code", "code": code,
                                        "redirect_uri": redirect_uri(request),
                                        "code_verifier": _verifier(request, payload)})
    try:
        with httpx.Client(timeout=TOKEN_TIMEOUT_S, headers={"User-Agent": "FlowFuse"}) as client:
            fields = token_fields(client.post(**kwargs), kwargs["url"])
    except (httpx.HTTPError, NodeError) as exc:
        audit(request, principal, "credential.oauth_connect", tenant_id=access.tenant_id, target_type="credential",
              target_id=found["c"], outcome="failed", details={**details, "reason": str(exc)[:300]})
        return problem(502, "Not connected", f"the code could not be exchanged for tokens: {exc}")
    fields.setdefault("refresh_token", None)  # a new connection replaces an old refresh token
    rt.vault.update(access.tenant_id, found["c"], data=fields)
    audit(request, principal, "credential.oauth_connect", tenant_id=access.tenant_id, target_type="credential",
          target_id=found["c"], details={**details, "refresh_token": bool(fields.get("refresh_token"))})
    described = rt.vault.describe(access.tenant_id, found["c"])
    if "text/html" in request.headers.get("accept", ""):
        return Redirect(f"/t/{slug}/credentials/{found['c']}", status_code=303)
    return Response({"connected": True, "credential": described}, status_code=200)


HANDLERS = [oauth_start, oauth_callback]
