"""The Litestar application: health checks and the webhook mount (the console and REST API grow here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Response, get
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from appliance.runtime import Runtime
from appliance.settings import Settings

from .hooks import Hooks

log = logging.getLogger("flowfuse.web")


def create_app(settings: Settings, *, expect_worker: bool = False) -> Litestar:
    """The web app over the data directory in `settings`; `expect_worker` makes /readyz check the worker."""
    hooks = Hooks()
    state: dict[str, Runtime] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings, role="web")
        runtime.use_loop(asyncio.get_running_loop())
        hooks.runtime = state["runtime"] = runtime
        beat = asyncio.create_task(_heartbeat(runtime))
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

    @asgi("/hooks", is_mount=True, copy_scope=False)
    async def webhooks(scope: Scope, receive: Receive, send: Send) -> None:
        await hooks(scope, receive, send)

    return Litestar(route_handlers=[healthz, readyz, webhooks], lifespan=[lifespan], openapi_config=None,
                    logging_config=None)


async def _heartbeat(runtime: Runtime) -> None:
    """Report this process alive, and cancel the executions someone asked to cancel."""
    while True:
        try:
            await asyncio.to_thread(runtime.runs.heartbeat, runtime.process_id, "web")
            for execution_id in runtime.runs.cancel_requested(runtime.process_id):
                runtime.cancel_local(execution_id)
        except Exception:
            log.exception("heartbeat failed")
        await asyncio.sleep(runtime.settings.worker.heartbeat_s)
