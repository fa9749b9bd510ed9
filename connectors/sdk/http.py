"""One way for connectors to call HTTP APIs: `await call(ctx, method, url, ...)`.

    from connectors.sdk.http import call

    async def create_customer(ctx, items):
        out = []
        for i, item in enumerate(items):
            response = await call(ctx, "POST", "https://api.example.com/v1/customers",
                                  data={"email": item["email"]}, idempotency=f"{ctx.idempotency_key}#{i}")
            out.append(response.json())
        return out

What it does, so that every connector behaves the same:

- authenticates with the node's credential (`ctx.credential`; pass `credential=` for another,
  `credential=False` for none) through `connectors.sdk.auth.CredentialAuth`;
- sends `Idempotency-Key` when asked (`idempotency=True` sends `ctx.idempotency_key`, a string
  sends that string): only for APIs that support the header, e.g. Stripe;
- answers 429 and 503 by waiting for `Retry-After` (seconds or an HTTP date; else 1, 2, 4 s...)
  and trying again, up to `retries` times, each wait at most `max_wait_s`, and never past the
  node's or the execution's time-out;
- raises `NodeError("POST https://... answered HTTP 402: Your card was declined.")` for a 4xx/5xx
  answer, with the message found in the body (`message`, `error.message`, `error_description`,
  `errors[0].message`, `detail`...), unless `raise_for_status=False`.

Requests go through the pooled client of connectors/http.py (one per event loop).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from typing import Any

import httpx

from engine.executor import NodeError

from .auth import CredentialAuth

RETRY_STATUSES = (429, 503)


def _deadline(ctx: Any, timeout_s: float) -> float:
    """The latest time (epoch seconds) a retry may still start: the execution's time-out and the node's."""
    deadline = getattr(getattr(ctx, "_state", None), "deadline", math.inf)
    node_timeout = getattr(getattr(ctx, "node", None), "timeout_s", None)
    if node_timeout:
        deadline = min(deadline, time.time() + node_timeout)
    return deadline


def retry_after(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before trying again: the Retry-After header (seconds or an HTTP date), else 2^attempt."""
    value = response.headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if value else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return float(2 ** attempt)


def error_message(response: httpx.Response) -> str:
    """The API's own message from an error answer, else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    found = _message_of(body) if body is not None else None
    if found:
        return found
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


def _message_of(body: Any) -> str | None:
    if isinstance(body, str):
        return body or None
    if isinstance(body, list):
        return next((m for m in (_message_of(b) for b in body) if m), None)
    if not isinstance(body, dict):
        return None
    for key in ("message", "error_description", "detail", "error_message", "title", "msg", "faultstring"):
        if isinstance(body.get(key), str) and body[key]:
            return body[key]
    for key in ("error", "errors", "fault"):
        if key in body:
            found = _message_of(body[key])
            if found:
                return found
    return None


async def call(ctx: Any, method: str, url: str, *, credential: Any = None, json: Any = None, data: Any = None,
               params: Any = None, headers: dict[str, str] | None = None, files: Any = None, content: Any = None,
               timeout_s: float = 30, idempotency: bool | str = False, retries: int = 4, max_wait_s: float = 60,
               raise_for_status: bool = True, follow_redirects: bool = True) -> httpx.Response:
    """Send one request (see the module docstring) and return the httpx response, body read."""
    from connectors.http import client, transport_error  # the pooled client (and whatever policy it applies)

    method = method.upper()
    if credential is None:
        credential = getattr(ctx, "credential", None)
    auth = CredentialAuth(credential, ctx) if credential else None
    headers = dict(headers or {})
    if idempotency:
        key = idempotency if isinstance(idempotency, str) else getattr(ctx, "idempotency_key", None)
        if key:
            headers.setdefault("Idempotency-Key", key)
    deadline = _deadline(ctx, timeout_s)
    attempt = 0
    while True:
        try:
            response = await client().request(method, url, json=json, data=data, params=params, headers=headers,
                                              files=files, content=content, auth=auth, timeout=timeout_s,
                                              follow_redirects=follow_redirects)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(method, url, timeout_s, exc) from None
        if response.status_code in RETRY_STATUSES and attempt < retries:
            wait = retry_after(response, attempt)
            if wait <= max_wait_s and time.time() + wait < deadline:
                attempt += 1
                await asyncio.sleep(wait)
                continue
        if response.status_code >= 400 and raise_for_status:
            hint = ""
            if response.status_code in RETRY_STATUSES:
                hint = f" (still after {attempt} retries)" if attempt else " (Retry-After is past the time-out)"
            raise NodeError(f"{method} {url} answered HTTP {response.status_code}{hint}: {error_message(response)}")
        return response


__all__ = ["call", "error_message", "retry_after"]
