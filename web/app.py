"""The web application: Litestar (health checks, the REST API, the console pages) and webhooks.

`/hooks/` is the hot path: the entry point hands it straight to the webhook handler, before
Litestar's routing and middleware (about a tenth of a webhook's CPU time); everything else,
lifespan included, goes to Litestar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar, Response, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import Receive, Scope, Send

from appliance import logs, telemetry
from appliance.runtime import Runtime, tune_gc
from appliance.settings import Settings

from . import api, console, metrics
from .hooks import Hooks

log = logging.getLogger("flowfuse.web")
STATIC = Path(__file__).parent / "static"
#: Every response's Content-Security-Policy: scripts, styles and connections only from this server (no inline
#: script or style, no eval), images also from data: URLs (the favicon), never framed, no plugins.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'")
#: /api/docs only: Redoc styles the page through <style> elements it creates at run time (styled-components),
#: and runs its search index in a Worker made from a blob: URL.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'") + "; worker-src blob:"
DOCS_PATH = "/api/docs"


def security_headers(csp: str, tls: bool) -> list[tuple[bytes, bytes]]:
    """The headers added to every console, API and static response; HSTS only over HTTPS."""
    headers = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
               (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
               (b"cross-origin-opener-policy", b"same-origin")]
    return _with_hsts(headers, tls)


def webhook_headers(tls: bool) -> list[tuple[bytes, bytes]]:
    """The headers added to every webhook response. What a flow answers is its own content, never a page
    of this origin: even as text/html it loads nothing, runs no script and cannot be framed (a sandbox
    with no allowances). Fewer and shorter than the console's: webhooks are the hot path."""
    return _with_hsts([(b"content-security-policy", WEBHOOK_CSP.encode()), (b"x-content-type-options", b"nosniff")],
                      tls)


def _with_hsts(headers: list[tuple[bytes, bytes]], tls: bool) -> list[tuple[bytes, bytes]]:
    return [*headers, (b"strict-transport-security", b"max-age=31536000")] if tls else headers


WEBHOOK_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
#: (kind, is https) -> the headers to add, computed once; kind is "hooks", "docs" or "" (everything else).
SECURITY_HEADERS = {(kind, tls): webhook_headers(tls) if kind == "hooks" else
                    security_headers(DOCS_CSP if kind == "docs" else CSP, tls)
                    for kind in ("hooks", "docs", "") for tls in (False, True)}


class Redoc(RedocRenderPlugin):
    """Redoc without inline script: the bundle (deferred) finds <redoc spec-url> and loads the schema itself."""

    def render(self, request, openapi_schema) -> bytes:
        title = openapi_schema["info"]["title"].replace("&", "&amp;").replace("<", "&lt;")
        return (f"<!DOCTYPE html><html><head><title>{title}</title>{self.favicon}<meta charset='utf-8'>"
                "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<script src='{self.js_url}' defer></script></head>"
                "<body><redoc spec-url='/api/openapi.json'></redoc></body></html>").encode()


class App:
    """The ASGI entry point (see the module docstring), and the one wrapper around every HTTP request:
    a request id (in log records and the X-Request-Id response header), the security headers, a
    server span when tracing is on, webhook latency and a DEBUG access line (web.metrics)."""

    def __init__(self, litestar: Litestar, hooks: Hooks):
        self.litestar, self.hooks = litestar, hooks
        self.tracing = telemetry.tracer() is not None  # appliance.telemetry.setup ran before the app is made

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.litestar(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        hook = path.startswith("/hooks/")
        rid = metrics.request_id(scope)
        token = logs.request_id.set(rid)
        kind = "hooks" if hook else "docs" if path.startswith(DOCS_PATH) else ""
        extra = [*SECURITY_HEADERS[kind, scope.get("scheme") == "https"], (b"x-request-id", rid.encode())]
        status = 0

        async def send_secured(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        span = metrics.start_span(scope, rid) if self.tracing else None
        try:
            await (self.hooks if hook else self.litestar)(scope, receive, send_secured)
        finally:
            metrics.observe_request(scope, hook, status, time.perf_counter() - started, span)
            logs.request_id.reset(token)


def create_app(settings: Settings, *, expect_worker: bool = False) -> App:
    """The web app over the data directory in `settings`; `expect_worker` makes /readyz check the worker."""
    hooks = Hooks()
    state: dict[str, Runtime] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings, role="web")
        runtime.use_loop(asyncio.get_running_loop())
        hooks.runtime = state["runtime"] = app.state.runtime = runtime
        beat = asyncio.create_task(_heartbeat(runtime))
        tune_gc()
        if logs.configured:  # uvicorn configured its own loggers after ours: send them through ours (JSON, redacted).
            # not uvicorn.access: its INFO line per request cost a tenth of the web process's CPU under
            # load; App writes one at DEBUG (flowfuse.access)
            logs.adopt("uvicorn", "uvicorn.error")
        try:
            yield
        finally:
            beat.cancel()
            for task in list(hooks.background):
                task.cancel()
            await asyncio.to_thread(runtime.runs_db.execute, "DELETE FROM processes WHERE id=?", (runtime.process_id,))
            runtime.close()

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response[dict]:
        """Migrations are applied and, under `flowfuse serve`, the worker's heartbeat is fresh."""
        runtime = state.get("runtime")
        problems = []
        if runtime is None:
            problems.append("starting")
        else:
            pending = runtime.migrations_pending()
            if pending:
                problems.append(f"migrations not applied: {', '.join(pending)}")
            if expect_worker and not runtime.runs.worker_alive(settings.worker.stale_after_s):
                problems.append("the worker has not reported in the last "
                                f"{settings.worker.stale_after_s:g} s")
        if problems:
            return Response({"status": "not ready", "problems": problems}, status_code=503)
        return Response({"status": "ready"})

    # the docs page loads Redoc from this server (web/static/vendor), never from a CDN
    docs = Redoc(js_url="/static/vendor/redoc/redoc.standalone.js", google_fonts=False, path="/docs",
                 favicon="<link rel='icon' href='data:,'>")
    openapi = OpenAPIConfig(title="FlowFuse API", version="1", path="/api", render_plugins=[JsonRenderPlugin(), docs],
                            description="The FlowFuse REST API. Authenticate with `Authorization: Bearer ffk_...`.")
    static = create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)
    litestar = Litestar(route_handlers=[healthz, readyz, metrics.metrics, api.router, console.router, static], lifespan=[lifespan],
                        openapi_config=openapi, template_config=console.template_config, logging_config=None)
    return App(litestar, hooks)


async def _heartbeat(runtime: Runtime) -> None:
    """Report this process alive, and cancel the executions someone asked to cancel."""
    while True:
        try:
            await asyncio.to_thread(runtime.runs.heartbeat, runtime.process_id, "web")
            for execution_id in await asyncio.to_thread(runtime.runs.cancel_requested, runtime.process_id):
                runtime.cancel_local(execution_id)
        except Exception:
            log.exception("heartbeat failed")
        await asyncio.sleep(runtime.settings.worker.heartbeat_s)
