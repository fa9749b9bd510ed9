"""Webhooks at /hooks/{tenant}/{path}: the hot path, written as a bare ASGI app mounted in Litestar.

Synchronous (`respond: when_done`) webhooks run the flow inline in this process and answer with
its result; asynchronous ones (`immediately`) answer 202 once the execution is in runs.db and its
message in the queue. Unknown path 404, wrong method 405, malformed JSON 400, body over the limit
413: none of these creates an execution. The flow is found in memory (see Catalog.route).

A connector's webhook trigger (any node type with trigger_kind "webhook") is routed like the core
webhook. If it has `verify`, the request (raw body, every header, query, the node's params and
decrypted credential) is checked first: `Unverified` answers 401 with its message and starts
nothing. If it has `respond`, a handshake (Slack's url_verification) is answered before any
execution when it returns (status, headers, body).

Tenant quotas are checked from memory too (see appliance.quotas and web.limits): past
webhook_requests_per_minute, or executions_per_month, a request gets 429 with Retry-After and
creates no execution. Synchronous webhooks count against concurrent_executions in this process:
past it they wait their turn in arrival order; one still waiting at server.sync_timeout_s is
queued for the worker instead and answered 202, like an asynchronous webhook, so none is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import msgspec

from appliance.catalog import QuotaExceeded
from appliance.db import DiskFull
from appliance.runs import new_id
from appliance.runtime import Runtime
from engine import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, WAITING, Outcome
from engine.nodes import Unverified, WebhookRequest

from .limits import RateLimiter, SyncSlots

log = logging.getLogger("flowfuse.hooks")
_encode = msgspec.json.Encoder().encode
_json_decoder = msgspec.json.Decoder()

#: Request headers never recorded in execution data.
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key", "x-auth-token"})
JSON = [(b"content-type", b"application/json")]


class _Rejected(Exception):
    """A request answered with a 4xx before any execution exists."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


async def _send(send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    if isinstance(body, (bytes, bytearray)):
        payload, head = bytes(body), list(headers or [])
    elif isinstance(body, str):
        payload, head = body.encode(), [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])]
    else:
        payload, head = _encode(body), [*JSON, *(headers or [])]
    head.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


async def _read_items(scope, receive, limit: int, content_type: str, query: dict[str, Any]) -> list[dict]:
    """The request body as trigger items; 413 over `limit` bytes, 400 for malformed JSON."""
    return _parse_items(await _read_body(scope, receive, limit), content_type, query)


def _parse_items(body: bytes, content_type: str, query: dict[str, Any]) -> list[dict]:
    try:
        return _items(body, content_type, query)
    except msgspec.DecodeError as exc:
        raise _Rejected(400, f"body is not valid JSON: {exc}") from None


async def _read_body(scope, receive, limit: int) -> bytes:
    """The raw request body; 413 over `limit` bytes."""
    too_large = _Rejected(413, f"body is larger than {limit} bytes")
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _items(body: bytes, content_type: str, query: dict[str, Any]) -> list[dict]:
    """The trigger items: a JSON object is one item, a list of objects several; anything else is wrapped."""
    if not body.strip():
        return [dict(query)]
    if "json" in content_type:
        value = _json_decoder.decode(body)  # msgspec.DecodeError -> 400
    elif "application/x-www-form-urlencoded" in content_type:
        value = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(body.decode(errors="replace")).items()}
    else:
        value = body.decode(errors="replace")
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        return value
    return [{"body": value}]


def _response(execution_id: str, outcome: Outcome) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
    headers = [(b"x-flowfuse-execution", execution_id.encode())]
    if outcome.response is not None and outcome.status != FAILED:
        r = outcome.response
        extra = [(k.lower().encode(), str(v).encode()) for k, v in r["headers"].items()]
        body = r["body"]
        if isinstance(body, str):
            payload, content_type = body.encode(), b"text/plain; charset=utf-8"
        else:
            payload, content_type = _encode(body), b"application/json"
        if not any(k == b"content-type" for k, _ in extra):
            extra.append((b"content-type", content_type))
        return r["status"], payload, headers + extra
    if outcome.status == SUCCEEDED:
        output = outcome.output
        return 200, output[0] if len(output) == 1 else output, headers
    if outcome.status == WAITING:
        return 202, {"execution_id": execution_id, "status": "waiting"}, headers
    if outcome.status == CANCELLED:
        return 409, {"execution_id": execution_id, "status": "cancelled"}, headers
    error = outcome.error or {}
    return 500, {"execution_id": execution_id, "status": "failed", "node": error.get("node"),
                 "error": error.get("message")}, headers


class Hooks:
    """The ASGI app for /hooks; `runtime` is set when the web app starts."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.background: set[asyncio.Task] = set()
        self.rate = RateLimiter()
        self.slots = SyncSlots()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._handle(scope, receive, send)
        except _Rejected as rejected:
            await _send(send, rejected.status, {"error": rejected.message})
        except QuotaExceeded as exc:  # raised before any answer or execution
            await _send(send, 429, {"error": str(exc), "quota": exc.quota},
                        [(b"retry-after", str(max(1, math.ceil(exc.retry_after or 1))).encode())])
        except DiskFull as exc:  # nothing was stored; what was stored before is intact
            log.error("webhook %s %s refused: %s", scope["method"], scope["path"], exc)
            with contextlib.suppress(Exception):
                await _send(send, 507, {"error": str(exc)})
        except Exception:
            log.exception("webhook %s %s failed", scope["method"], scope["path"])
            with contextlib.suppress(Exception):  # fails harmlessly if the answer had already started
                await _send(send, 500, {"error": "internal error; the server log has the details"})

    async def _handle(self, scope, receive, send) -> None:
        rt = self.runtime
        tenant, _, hook_path = scope["path"].removeprefix("/hooks/").partition("/")
        if hook_path.startswith("_resume/"):
            return await self._resume(scope, receive, send, tenant, hook_path)
        flow = rt.catalog.route(tenant, hook_path) if rt and tenant and hook_path else None
        if flow is None:
            return await _send(send, 404, {"error": f"no active webhook at /hooks/{tenant}/{hook_path}"})
        method = scope["method"]
        if method != flow.webhook_method:
            return await _send(send, 405, {"error": f"this webhook accepts {flow.webhook_method}, not {method}"},
                               [(b"allow", flow.webhook_method.encode())])
        limits = rt.quotas.limits(flow.tenant_id)
        if limits.webhook_requests_per_minute:
            self._check_rate(tenant, flow.tenant_id, limits.webhook_requests_per_minute)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "").lower()
        qs = scope["query_string"]
        query = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(qs.decode("latin-1")).items()} if qs else {}
        compiled = rt.catalog.compiled(flow.id, flow.version)
        body = await _read_body(scope, receive, rt.settings.server.max_body_bytes)
        spec = compiled.trigger.spec
        if spec.verify is not None or spec.respond is not None:
            handshake = await self._check(flow, compiled.trigger, body, dict(headers), query)
            if handshake is not None:
                status, extra, answer = handshake
                return await _send(send, status, answer, [(str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
                                                          for k, v in (extra or {}).items()])
        items = _parse_items(body, content_type, query)
        for name in SECRET_HEADERS.intersection(headers):
            del headers[name]
        meta = {"request": {"method": method, "path": hook_path, "query": query, "headers": headers}}
        respond = compiled.trigger.raw_params.get("respond")
        if respond is None and (declared := spec.params.get("respond")) is not None:
            respond = declared.default  # a trigger type's own default (the core webhook's is when_done)
        if respond == "immediately":
            execution_id = await rt.aqueue_execution(flow, "webhook", items, meta)
            return await _send(send, 202, {"execution_id": execution_id, "status": "queued"},
                               [(b"x-flowfuse-execution", execution_id.encode())])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rt.settings.server.sync_timeout_s
        if not limits.concurrent_executions:
            return await self._run_sync(send, flow, items, meta, deadline)
        if not await self.slots.acquire(flow.tenant_id, limits.concurrent_executions, deadline):
            execution_id = await rt.aqueue_execution(flow, "webhook", items, meta)  # no slot in time: the worker's
            return await _send(send, 202, {"execution_id": execution_id, "status": "queued"},
                               [(b"x-flowfuse-execution", execution_id.encode())])
        try:
            await self._run_sync(send, flow, items, meta, deadline)
        finally:
            self.slots.release(flow.tenant_id, rt.quotas.concurrency(flow.tenant_id))

    async def _check(self, flow, trigger, body: bytes, headers: dict[str, str],
                     query: dict[str, Any]) -> tuple[int, dict, Any] | None:
        """Run the trigger's `verify` (401 on Unverified) and `respond` (a handshake answer, or None)."""
        credential = None
        if trigger.credential:
            try:
                credential = await asyncio.to_thread(self.runtime.credential, flow.tenant_id, trigger.credential)
            except LookupError as exc:
                log.warning("webhook of flow %s not verified: %s", flow.name, exc)
                raise _Rejected(401, "request not verified: the webhook's credential is not available") from None
        request = WebhookRequest(body=body, headers=headers, query=query, params=dict(trigger.raw_params),
                                 credential=credential, now=time.time())
        spec = trigger.spec
        try:
            if spec.verify is not None:
                checked = spec.verify(request)
                if asyncio.iscoroutine(checked):
                    await checked
            if spec.respond is not None:
                answer = spec.respond(request)
                return await answer if asyncio.iscoroutine(answer) else answer
        except Unverified as exc:
            log.info("webhook of flow %s refused a request: %s", flow.name, exc)
            raise _Rejected(401, str(exc) or "request not verified") from None
        return None

    def _check_rate(self, slug: str, tenant_id: str, per_minute: int) -> None:
        wait = self.rate.check(tenant_id, per_minute, time.monotonic())
        if wait:
            raise QuotaExceeded("webhook_requests_per_minute",
                                f"tenant {slug!r} may receive {per_minute} webhook requests a minute (quota "
                                f"webhook_requests_per_minute); try again in {math.ceil(wait)} s, or ask an "
                                "instance admin to raise the quota", retry_after=wait)

    async def _run_sync(self, send, flow, items: list[dict], meta: dict, deadline: float) -> None:
        """Run the flow here and answer with its result; at `deadline` answer 202 and let it finish."""
        rt = self.runtime
        execution_id = new_id()
        answered = False

        def answer_early() -> None:  # still running at sync_timeout_s: say so, and let it finish
            nonlocal answered
            answered = True
            task = asyncio.ensure_future(_send(send, 202, {"execution_id": execution_id, "status": "running"},
                                               [(b"x-flowfuse-execution", execution_id.encode())]))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

        timer = asyncio.get_running_loop().call_at(deadline, answer_early)
        try:
            _, outcome = await rt.run_inline(flow, "webhook", items, meta, execution_id=execution_id)
        finally:
            timer.cancel()
        if not answered:
            status, payload, extra = _response(execution_id, outcome)
            await _send(send, status, payload, extra)

    async def _resume(self, scope, receive, send, tenant: str, hook_path: str) -> None:
        rt = self.runtime
        parts = hook_path.split("/")
        if len(parts) != 3 or rt is None:
            return await _send(send, 404, {"error": "unknown resume URL"})
        _, execution_id, token = parts
        row = rt.runs_db.one("SELECT tenant_id, status FROM executions WHERE id=?", (execution_id,))
        try:
            tenant_id = rt.catalog.tenant(tenant)["id"]
        except LookupError:
            tenant_id = None
        expected = rt.vault.sign("resume", execution_id)
        if row is None or row["tenant_id"] != tenant_id or not secrets.compare_digest(expected, token):
            return await _send(send, 404, {"error": "unknown resume URL"})
        step = rt.runs_db.one("SELECT key FROM steps WHERE execution_id=? AND status='waiting' AND resume_at IS NULL "
                              "ORDER BY seq DESC LIMIT 1", (execution_id,))
        if row["status"] in (QUEUED, RUNNING):  # e.g. the URL was sent out before the flow reached its wait
            return await _send(send, 409, {"error": f"execution {execution_id} is {row['status']} and not waiting "
                                                    "for its resume URL yet; try again shortly"}, [(b"retry-after", b"1")])
        if row["status"] != WAITING or step is None:
            return await _send(send, 409, {"error": f"execution {execution_id} is {row['status']}, not waiting "
                                                    "for its resume URL"})
        content_type = next((v.decode("latin-1").lower() for k, v in scope["headers"] if k == b"content-type"), "")
        items = await _read_items(scope, receive, rt.settings.server.max_body_bytes, content_type, {})
        if not await asyncio.to_thread(rt.runs.add_resume_payload, execution_id, row["tenant_id"], step["key"], items):
            return await _send(send, 409, {"error": f"execution {execution_id} was resumed already"})
        await rt.aenqueue(execution_id)
        await _send(send, 202, {"execution_id": execution_id, "status": "resumed"})

