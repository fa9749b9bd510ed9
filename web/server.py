"""Run the web app under uvicorn (httptools and uvloop, one process)."""

from __future__ import annotations

import uvicorn

from appliance.settings import Settings

from .app import create_app


def run_web(settings: Settings, *, expect_worker: bool = False) -> None:
    app = create_app(settings, expect_worker=expect_worker)
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, loop="uvloop", http="httptools",
                log_level=settings.logging.level.lower(), access_log=False, lifespan="on",
                timeout_graceful_shutdown=10)
