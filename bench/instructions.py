"""CPU instructions per synchronous webhook and per step of a long flow, counted by valgrind: figures that
do not move with the load.

Throughput on a shared 2-core VM moves by 20 % from one minute to the next, which hides a regression of
10 %. Instructions do not: the web application (webhook -> set -> respond, every execution recorded in
runs.db, telemetry set up as `flowfuse web` does) is called in this process through its ASGI interface,
on uvloop as under `flowfuse web` but without uvicorn or sockets, under `valgrind --tool=cachegrind`; two runs of different lengths cancel
start-up out, and their difference divided by the extra requests is the figure. It repeats to 0.1 %.

Caveat: valgrind runs Python some 50 times slower, so work a background thread does once a second (the
step metrics flush, heartbeats) counts for more requests' worth here than in real time.

The second figure is benchmark 2's per step: the worker's engine path (`Runtime.run_queued`, 64 runs at
a time on one uvloop loop, every step committed, telemetry set up as `flowfuse worker` does) runs the
100-step flows already queued in a data directory, without Huey; the difference of two runs of different
numbers of flows, divided by the extra steps, is the figure.

The third splits that figure: the same step rows (one per commit, 64 runs at a time) go through
`RunStore.commit` with no engine, so it is what the store costs (the commit path, the group commit and
SQLite); the rest of the second figure is the engine's.

`bench/run.py --only instructions` prints all three; `python bench/instructions.py webhooks|steps|store
DATA_DIR N` is the harness that `count` runs under valgrind.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"amount": 21, "customer": "c-1"}'
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
         "path": "/hooks/default/bench-sync", "raw_path": b"/hooks/default/bench-sync", "query_string": b"",
         "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                      (b"content-length", str(len(BODY)).encode())],
         "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


def count(harness: str, data: Path, n: int) -> int:
    """Instructions valgrind counted for a whole run of a harness: `n` webhooks, or the `n` queued flows."""
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, __file__, harness, str(data), str(n)], capture_output=True, text=True,
                         cwd=ROOT)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode or not found:
        raise SystemExit(f"the instruction count failed: {out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _webhooks(data: Path, requests: int) -> None:
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

    uvloop.run(run())  # the loop `flowfuse web` runs on
    telemetry.shutdown()


def _worker(data: Path, flows: int):
    """A worker's Runtime over `data` (telemetry and logs as `flowfuse worker` sets them up) and the ids
    of the `flows` executions queued there."""
    sys.path.insert(0, str(ROOT))
    from appliance import logs, telemetry
    from appliance.runtime import Runtime
    from appliance.settings import load

    settings = load(env={**os.environ, "FLOWFUSE_STORAGE_DATA_DIR": str(data),
                         "FLOWFUSE_ENGINE_CHECKPOINT": "every_step"})
    telemetry.setup(settings, "worker")
    logs.setup(settings, "worker", stream=io.StringIO())
    runtime = Runtime(settings, role="worker")
    queued = runtime.runs_db.query("SELECT id, tenant_id FROM executions WHERE status='queued' ORDER BY id")
    if len(queued) != flows:
        raise SystemExit(f"{len(queued)} flows are queued in {data}, not {flows}")
    return runtime, queued


def _each_at_64(runtime, queued, fn) -> None:
    """`await fn(row)` for every queued row, 64 at a time (worker.concurrency, as in benchmark 2), on uvloop."""
    from appliance.runtime import tune_gc

    async def run() -> None:
        runtime.use_loop(asyncio.get_running_loop())
        tune_gc()
        slots = asyncio.Semaphore(64)

        async def one(row) -> None:
            async with slots:
                await fn(row)

        await asyncio.gather(*(one(row) for row in queued))

    uvloop.run(run())


def _steps(data: Path, flows: int) -> None:
    runtime, queued = _worker(data, flows)
    _each_at_64(runtime, queued, lambda row: runtime.run_queued(row["id"]))
    done = runtime.runs_db.one("SELECT count(*) FROM executions WHERE status='succeeded'")[0]
    _close(runtime)
    if done != flows:
        raise SystemExit(f"{flows - done} of {flows} flows did not succeed")


def _store(data: Path, flows: int) -> None:
    """The step rows of `_steps`, committed one per commit as the engine does, without the engine."""
    import msgspec

    from engine import SUCCEEDED, ExecutionRef, StepRecord

    runtime, queued = _worker(data, flows)
    output = msgspec.json.encode({"main": [{"acc": 1, "step": 0}]})

    async def run(row) -> None:
        ref = ExecutionRef(row["id"], row["tenant_id"])
        for seq in range(101):  # the trigger and 100 set nodes
            now = time.time()
            step = StepRecord(f"s{seq}", f"s{seq}", 1, SUCCEEDED, 1, now, now, outputs_json=output, seq=seq)
            await runtime.runs.commit(ref, [step], None)

    _each_at_64(runtime, queued, run)
    stored = runtime.runs_db.one("SELECT count(*) FROM steps")[0]
    _close(runtime)
    if stored != flows * 101:
        raise SystemExit(f"{stored} steps were stored, not {flows * 101}")


def _close(runtime) -> None:
    from appliance import telemetry

    runtime.close()
    telemetry.shutdown()


if __name__ == "__main__":
    {"webhooks": _webhooks, "steps": _steps, "store": _store}[sys.argv[1]](Path(sys.argv[2]), int(sys.argv[3]))
