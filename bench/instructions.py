"""CPU instructions per synchronous webhook, counted by valgrind: a figure that does not move with the load.

Throughput on a shared 2-core VM moves by 20 % from one minute to the next, which hides a regression of
10 %. Instructions do not: the web application (webhook -> set -> respond, every execution recorded in
runs.db, telemetry set up as `flowfuse web` does) is called in this process through its ASGI interface,
without uvicorn or sockets, under `valgrind --tool=cachegrind`; two runs of different lengths cancel
start-up out, and their difference divided by the extra requests is the figure. It repeats to 0.1 %.

Caveat: valgrind runs Python some 50 times slower, so work a background thread does once a second (the
step metrics flush, heartbeats) counts for more requests' worth here than in real time.

`bench/run.py --only instructions` prints it; `python bench/instructions.py DATA_DIR N` is the harness
that `count` runs under valgrind.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"amount": 21, "customer": "c-1"}'
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
         "path": "/hooks/default/bench-sync", "raw_path": b"/hooks/default/bench-sync", "query_string": b"",
         "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                      (b"content-length", str(len(BODY)).encode())],
         "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


def count(data: Path, requests: int) -> int:
    """Instructions valgrind counted for a whole run of the harness with `requests` webhooks."""
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, __file__, str(data), str(requests)], capture_output=True, text=True,
                         cwd=ROOT)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode or not found:
        raise SystemExit(f"the instruction count failed: {out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _harness(data: Path, requests: int) -> None:
    sys.path.insert(0, str(ROOT))
    from appliance import logs, telemetry
    from appliance.settings import load
    from web.app import create_app

    settings = load(env={**os.environ, "FLOWFUSE_STORAGE_DATA_DIR": str(data)})
    telemetry.setup(settings, "web")
    logs.setup(settings, "web", stream=io.StringIO())
    app = create_app(settings)

    async def run() -> None:
        started, stop = asyncio.Event(), asyncio.Event()
        messages = [{"type": "lifespan.startup"}]

        async def lifespan_receive():
            if messages:
                return messages.pop()
            await stop.wait()
            return {"type": "lifespan.shutdown"}

        async def lifespan_send(message):
            if message["type"].endswith("failed"):
                raise SystemExit(message)
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                           lifespan_receive, lifespan_send))
        await started.wait()
        statuses = []

        async def one() -> None:
            sent = False

            async def receive():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": BODY, "more_body": False}
                await stop.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app({**SCOPE, "state": {}}, receive, send)

        async def client(n: int) -> None:
            for _ in range(n):
                await one()

        await asyncio.gather(*(client(requests // 50) for _ in range(50)))  # 50 at a time, as benchmark 1
        stop.set()
        await lifespan
        if len(statuses) != requests // 50 * 50 or set(statuses) != {200}:
            raise SystemExit(f"webhooks answered {sorted(set(statuses))}")

    asyncio.run(run())
    telemetry.shutdown()


if __name__ == "__main__":
    _harness(Path(sys.argv[1]), int(sys.argv[2]))
