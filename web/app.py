"""The web application: Litestar (health checks, the REST API, the console pages) and webhooks.

`/hooks/` is the hot path: the entry point hands it straight to the webhook handler, before
Litestar's routing and middleware (about a tenth of a webhook's CPU time); everything else,
lifespan included, goes to Litestar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar, Response, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import Receive, Scope, Send

from appliance.runtime import Runtime, tune_gc
from appliance.settings import Settings

from . import api, console
from .hooks import Hooks

log = logging.getLogger("flowfuse.web")
STATIC = Path(__file__).parent / "static"


class App:
    """The ASGI entry point (see the module docstring)."""

    def __init__(self, litestar: Litestar, hooks: Hooks):
        self.litestar, self.hooks = litestar, hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/hooks/"):
            await self.hooks(scope, receive, send)
        else:
            await self.litestar(scope, receive, send)


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
    docs = RedocRenderPlugin(js_url="/static/vendor/redoc/redoc.standalone.js", google_fonts=False, path="/docs",
                             favicon="<link rel='icon' href='data:,'>")
    openapi = OpenAPIConfig(title="FlowFuse API", version="1", path="/api", render_plugins=[JsonRenderPlugin(), docs],
                            description="The FlowFuse REST API. Authenticate with `Authorization: Bearer ffk_...`.")
    static = create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)
    litestar = Litestar(route_handlers=[healthz, readyz, api.router, console.router, static], lifespan=[lifespan],
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
