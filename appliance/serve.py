"""`flowfuse serve`: start the web server and the worker as two child processes and supervise them.

A child that dies is started again (after a short pause that grows if it keeps dying); its
unfinished executions are resumed by the worker. SIGTERM or SIGINT stops both children (SIGTERM
to each, SIGKILL after a grace period) and then returns.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from .runtime import init_data_dir
from .settings import Settings

log = logging.getLogger("flowfuse.serve")
GRACE_S = 10.0


def _command(*args: str) -> list[str]:
    if getattr(sys, "frozen", False):  # a PyInstaller binary runs its sub-commands directly
        return [sys.executable, *args]
    return [sys.executable, "-m", "appliance", *args]


def supervise(settings: Settings, config: str | None) -> int:
    init_data_dir(settings)  # creates what is missing and applies migrations once, before the children start
    from web.server import ssl_context

    ssl_context(settings)  # a certificate or key that cannot be used stops start-up here, not in a restart loop
    common = (["--config", config] if config else [])
    data = ["--data-dir", str(settings.data_dir)]
    specs = {
        "web": _command(*common, "web", *data, "--host", settings.server.host, "--port", str(settings.server.port),
                        "--expect-worker"),
        "worker": _command(*common, "worker", *data),
    }
    # The worker has no --port: tell it the public URL so that the resume URLs it hands out point here.
    envs = {"web": None, "worker": {**os.environ, "FLOWFUSE_SERVER_BASE_URL": settings.base_url}}
    children: dict[str, subprocess.Popen] = {}
    failures = {name: 0 for name in specs}
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name, cmd in specs.items():
        children[name] = subprocess.Popen(cmd, env=envs[name])
        log.info("started %s (pid %d)", name, children[name].pid)
    log.info("FlowFuse is serving on %s", settings.base_url)
    started = {name: time.monotonic() for name in specs}
    while not stopping:
        time.sleep(0.2)
        for name, proc in list(children.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            failures[name] = failures[name] + 1 if time.monotonic() - started[name] < 30 else 1
            pause = min(30.0, 0.5 * 2 ** (failures[name] - 1))
            log.warning("%s exited with status %s; starting it again in %.1f s", name, code, pause)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and not stopping:
                time.sleep(0.1)
            if stopping:
                break
            children[name] = subprocess.Popen(specs[name], env=envs[name])
            started[name] = time.monotonic()
    log.info("stopping")
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0

