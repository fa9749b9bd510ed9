"""The Huey queue on queue.db: one task, `run_execution`, that the worker consumes.

Everything that runs outside a synchronous webhook goes through it: asynchronous webhooks,
cron firings, retries and waits parked for later (scheduled with an `eta`), resumes. The task
only carries an execution id; the execution itself is already durable in runs.db, and running
it is idempotent (see `Runtime.run_execution`), so a duplicate or replayed message is harmless.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from huey import Huey
from huey.storage import SqliteStorage

log = logging.getLogger("flowfuse.worker")

if TYPE_CHECKING:
    from .runtime import Runtime
    from .settings import Settings


class QueueStorage(SqliteStorage):
    """SqliteStorage with our synchronous setting (Huey's fsync flag knows only FULL and OFF)."""

    def __init__(self, *args, synchronous: str = "NORMAL", **kwargs):
        self._synchronous = synchronous
        super().__init__(*args, **kwargs)

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn


class Queue(Huey):
    """Huey without task revocation.

    FlowFuse cancels executions in runs.db and never revokes a Huey task, so the revocation
    look-up and clean-up that Huey wraps around every task (two more queue.db transactions, a
    quarter of the worker's time on short executions) are skipped.
    """

    def is_revoked(self, task, timestamp=None, peek=True) -> bool:
        return False

    def delete(self, key) -> bool:  # Huey calls it only to clear revocation flags (we keep no results)
        return False


class EventLoopThread:
    """One asyncio loop on a background thread, where the worker runs its executions.

    Huey's threads only take messages off the queue and `submit` them here; they wait only when
    `limit` executions are already in flight. So a few consumer threads keep many executions going
    (an execution mostly waits on I/O), without each one holding a thread.
    """

    def __init__(self, limit: int = 64) -> None:
        self.loop = _new_loop()
        self.slots = threading.BoundedSemaphore(limit)
        self.thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)
        self.thread.start()

    def run(self, coro) -> object:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, coro) -> concurrent.futures.Future:
        """Start a coroutine on the loop once a slot is free; do not wait for it to finish."""
        self.slots.acquire()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future) -> None:
        self.slots.release()
        if not future.cancelled() and future.exception() is not None:
            log.error("execution failed in the worker", exc_info=future.exception())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        return asyncio.new_event_loop()


def make_queue(runtime: "Runtime", path: Path, settings: "Settings"):
    huey = Queue("flowfuse", storage_class=QueueStorage, filename=str(path), results=False, utc=True,
                synchronous=settings.storage.synchronous.upper(), timeout=settings.storage.busy_timeout_ms / 1000)

    @huey.task(name="run_execution")
    def run_execution(execution_id: str) -> None:
        if runtime.loop_thread is None:
            raise RuntimeError("the worker's event loop is not running")
        # Not awaited: the execution is durable in runs.db; if this process dies before it is
        # claimed, start-up recovery queues every 'queued' execution again.
        runtime.loop_thread.submit(runtime.run_queued(execution_id))

    return huey, run_execution
