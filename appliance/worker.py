"""The worker process: a Huey consumer, the engine's event loop, cron, and recovery.

Huey's threads take `run_execution` messages and hand each to one asyncio loop, where the
engine runs many executions at once. A housekeeping thread beats the heartbeat, re-queues
executions whose process died (killed mid-run: they resume from their last committed step),
cancels what was asked to be cancelled, and fires cron triggers. Cron runs in one worker only:
the one holding `scheduler.lock` in the data directory. The same worker runs the polling and
event triggers of active flows (see TriggerRunner) as tasks on the engine's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import fcntl
import json
import logging
import threading
import time
import zoneinfo
from typing import Any

from croniter import croniter

from engine import QUEUED
from engine.flow import Node
from engine.nodes import POLL_INTERVAL_MIN_S, POLL_INTERVAL_S, EventContext, PollContext, PollResult

from .catalog import QuotaExceeded
from .queue import EventLoopThread
from .runs import EXEC_SQL, execution_row
from .runtime import Runtime, tune_gc
from .settings import Settings

log = logging.getLogger("flowfuse.worker")


class CronScheduler:
    """Fires every due time of each active schedule trigger exactly once, across restarts.

    The last due time handled is kept per flow in runs.db beside the executions it created, in
    the same transaction, and each firing has the dedup key `schedule:{flow}:{time}`.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def tick(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        started: list[str] = []
        for flow in self.runtime.catalog.active_schedules():
            try:
                started.extend(self._fire(flow, now))
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule of flow %s failed", flow.name)
        return started

    def _fire(self, flow, now: float) -> list[str]:
        settings = self.runtime.settings.schedule
        params = self.runtime.catalog.compiled(flow.id, flow.version).trigger.raw_params  # cached per version
        cron, tz = params["cron"], params.get("timezone") or "UTC"
        state = self.runtime.runs_db.one("SELECT last_due FROM schedule_state WHERE flow_id=?", (flow.id,))
        # From the last due time handled, or else from when the flow was saved or activated: looking
        # back only one tick would miss due times that fall between two ticks and never fire them.
        start = max(state["last_due"], flow.updated_at) if state else flow.updated_at
        it = croniter(cron, dt.datetime.fromtimestamp(start, zoneinfo.ZoneInfo(tz)))
        due: list[float] = []
        nxt = it.get_next(float)
        while nxt <= now and len(due) < 10_000:
            due.append(nxt)
            nxt = it.get_next(float)
        if not due:
            return []
        late = now - 2 * settings.tick_s - 1
        missed = [d for d in due if d < late]
        fire = (missed[-settings.catch_up:] if settings.catch_up > 0 else []) + [d for d in due if d >= late]
        fire = self._admit(flow, fire)
        rows = [execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name,
                              flow_version=flow.version, trigger="schedule", status=QUEUED,
                              items=[{"scheduled_at": _iso(d, tz), "timezone": tz}],
                              dedup_key=f"schedule:{flow.id}:{d:.0f}") for d in fire]

        def write(conn) -> list[str]:
            inserted = []
            for row in rows:
                if conn.execute("SELECT 1 FROM executions WHERE dedup_key=?", (row["dedup_key"],)).fetchone():
                    continue
                conn.execute(EXEC_SQL, row)
                inserted.append(row["id"])
            conn.execute("INSERT INTO schedule_state VALUES (?,?,?) ON CONFLICT (flow_id) DO UPDATE SET "
                         "last_due=excluded.last_due", (flow.id, flow.tenant_id, due[-1]))
            return inserted
        inserted = self.runtime.runs_db.write(write)
        if inserted:
            self.runtime.runs.meter.add(flow.tenant_id, len(inserted), 0, 0)
        if len(rows) > len(inserted):  # fired before (dedup): not new executions after all
            self.runtime.quotas.forget(flow.tenant_id, len(rows) - len(inserted))
        if len(due) > len(fire):
            log.info("flow %s: skipped %d due times missed while stopped", flow.name, len(due) - len(fire))
        for execution_id in inserted:
            self.runtime.enqueue(execution_id)
        return inserted

    def _admit(self, flow, fire: list[float]) -> list[float]:
        """The due times the tenant's monthly quota lets fire; the others are skipped (and logged), not kept."""
        for i in range(len(fire)):
            try:
                self.runtime.quotas.admit(flow.tenant_id)
            except QuotaExceeded as exc:
                log.warning("flow %s: %d schedule firing(s) skipped: %s", flow.name, len(fire) - i, exc)
                return fire[:i]
        return fire


def _iso(ts: float, tz: str) -> str:
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz)).isoformat()


#: How long one poll may take before it is abandoned (and repeated at the next interval).
POLL_TIMEOUT_S = 300.0
#: Back-off of an event listener that stopped or failed: doubles from the first, up to the last.
LISTEN_BACKOFF_S = (0.5, 60.0)


class TriggerRunner:
    """Runs the polling and event triggers of active flows, one task per flow on the engine loop.

    `sync` (called by the housekeeper of the worker holding scheduler.lock, so by one worker)
    starts a task for each active flow with such a trigger, restarts it when the flow gets a new
    version, and cancels it when the flow is deactivated, deleted or its tenant suspended.

    A polling trigger's new cursor is committed in the transaction that inserts the execution of
    the items its poll returned: a crash before that commit loses nothing (the next poll starts
    from the old cursor and finds the same items), one after it processes nothing twice.
    """

    KINDS = ("polling", "event")

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.tasks: dict[str, tuple[int, str, concurrent.futures.Future]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.runtime.loop_thread.loop

    def sync(self) -> None:
        wanted = {flow.id: flow for flow in self.runtime.catalog.active_triggers(self.KINDS)}
        for flow_id, (version, name, future) in list(self.tasks.items()):
            flow = wanted.get(flow_id)
            if flow is None or flow.version != version:  # (a task that could not start waits for a new version)
                future.cancel()  # thread-safe: cancels the task on its loop
                del self.tasks[flow_id]
                log.info("trigger of flow %s stopped", name)
        for flow_id, flow in wanted.items():
            if flow_id not in self.tasks:
                self.tasks[flow_id] = (flow.version, flow.name,
                                       asyncio.run_coroutine_threadsafe(self._run(flow), self.loop))

    def stop(self) -> None:
        for _, _, future in self.tasks.values():
            future.cancel()
        self.tasks.clear()

    async def _run(self, flow) -> None:
        rt = self.runtime
        try:
            compiled = await asyncio.to_thread(rt.catalog.compiled, flow.id, flow.version)
            trigger = compiled.trigger
            params = await asyncio.to_thread(self._params, trigger, flow.tenant_id)
            log.info("%s trigger of flow %s started", trigger.spec.trigger_kind, flow.name)
            if trigger.spec.trigger_kind == "polling":
                await self._poll_forever(flow, trigger, params)
            else:
                await self._listen_forever(flow, trigger, params)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the trigger of flow %s could not start", flow.name)

    def _params(self, trigger: Node, tenant_id: str) -> dict[str, Any]:
        """The trigger's params with their defaults, expressions evaluated against the tenant's variables."""
        scope = {"json": {}, "items": [], "nodes": {}, "vars": self.runtime.catalog.variables(tenant_id),
                 "execution": {}}
        return {name: value.evaluate(scope) if value.is_dynamic else value.source
                for name, value in trigger.params.items()}

    async def _credential(self, flow, trigger: Node):
        if not trigger.credential:
            return None
        return await asyncio.to_thread(self.runtime.credential, flow.tenant_id, trigger.credential)

    # -- polling ---------------------------------------------------------------------------------------------
    async def _poll_forever(self, flow, trigger: Node, params: dict[str, Any]) -> None:
        interval = max(POLL_INTERVAL_MIN_S, float(params.get("interval_s") or POLL_INTERVAL_S))
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.poll_once(flow, trigger, params), trigger.timeout_s or POLL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a connector raises: logged, tried again
                log.warning("poll of flow %s failed (tried again in %s s): %s", flow.name, interval,
                            str(exc) or type(exc).__name__)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def poll_once(self, flow, trigger: Node, params: dict[str, Any]) -> str | None:
        """One poll; returns the id of the execution it queued, if its poll found items."""
        rt = self.runtime
        state = await asyncio.to_thread(rt.runs_db.one, "SELECT cursor FROM trigger_cursors WHERE flow_id=?",
                                        (flow.id,))
        cursor = json.loads(state["cursor"]) if state and state["cursor"] is not None else None
        ctx = PollContext(params=params, credential=await self._credential(flow, trigger), cursor=cursor,
                          tenant_id=flow.tenant_id, flow_id=flow.id,
                          log=logging.getLogger(f"flowfuse.trigger.{trigger.type}"), services=rt,
                          credential_name=trigger.credential)
        result = await trigger.spec.poll(ctx)
        if not isinstance(result, PollResult) or not isinstance(result.items, list) or \
                not all(isinstance(item, dict) for item in result.items):
            raise TypeError(f"poll of {trigger.type} must return PollResult(items=[objects], cursor)")
        new_cursor = json.dumps(result.cursor)
        if not result.items:
            if state is None or state["cursor"] != new_cursor:
                await rt.runs_db.awrite(lambda conn: _save_cursor(conn, flow, new_cursor))
            return None
        try:
            rt.quotas.admit(flow.tenant_id)
        except QuotaExceeded as exc:  # the cursor stays: these items come again at the next poll
            log.warning("flow %s: poll found %d items but no execution was started: %s", flow.name,
                        len(result.items), exc)
            return None
        row = execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name, flow_version=flow.version,
                            trigger="polling", status=QUEUED, items=result.items)

        def write(conn) -> None:
            conn.execute(EXEC_SQL, row)
            _save_cursor(conn, flow, new_cursor)
        await rt.runs_db.awrite(write)
        rt.runs.meter.add(flow.tenant_id, 1, 0, 0)
        await rt.aenqueue(row["id"])
        return row["id"]

    # -- events ----------------------------------------------------------------------------------------------
    async def _listen_forever(self, flow, trigger: Node, params: dict[str, Any]) -> None:
        first, most = LISTEN_BACKOFF_S
        delay = first

        async def emit(items: list[dict], dedup_key: str | None) -> str | None:
            return await self.emit(flow, items, dedup_key)

        while True:
            started = time.monotonic()
            try:
                ctx = EventContext(params=params, credential=await self._credential(flow, trigger),
                                   tenant_id=flow.tenant_id, flow_id=flow.id,
                                   log=logging.getLogger(f"flowfuse.trigger.{trigger.type}"), emitter=emit,
                                   services=self.runtime, credential_name=trigger.credential)
                await trigger.spec.listen(ctx)
                log.warning("the listener of flow %s returned; starting it again in %s s", flow.name, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a connector raises: logged, started again
                log.warning("the listener of flow %s failed (started again in %s s): %s", flow.name, delay,
                            str(exc) or type(exc).__name__)
            if time.monotonic() - started > most:
                delay = first  # it ran a good while: a new failure starts the back-off again
            await asyncio.sleep(delay)
            delay = min(most, delay * 2)

    async def emit(self, flow, items: list[dict], dedup_key: str | None) -> str | None:
        """Durably queue one execution of the flow with these items; None if the dedup key was used before."""
        rt = self.runtime
        rt.quotas.admit(flow.tenant_id)  # QuotaExceeded goes to the listener, which may log or retry
        row = execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name, flow_version=flow.version,
                            trigger="event", status=QUEUED, items=items,
                            dedup_key=f"event:{flow.id}:{dedup_key}" if dedup_key is not None else None)

        def write(conn) -> bool:
            if row["dedup_key"] and conn.execute("SELECT 1 FROM executions WHERE dedup_key=?",
                                                 (row["dedup_key"],)).fetchone():
                return False
            conn.execute(EXEC_SQL, row)
            return True
        if not await rt.runs_db.awrite(write):
            rt.quotas.forget(flow.tenant_id)
            return None
        rt.runs.meter.add(flow.tenant_id, 1, 0, 0)
        await rt.aenqueue(row["id"])
        return row["id"]


def _save_cursor(conn, flow, cursor_json: str) -> None:
    conn.execute("INSERT INTO trigger_cursors (flow_id, tenant_id, cursor, polled_at) VALUES (?,?,?,?) "
                 "ON CONFLICT (flow_id) DO UPDATE SET cursor=excluded.cursor, polled_at=excluded.polled_at",
                 (flow.id, flow.tenant_id, cursor_json, time.time()))


class Housekeeper(threading.Thread):
    def __init__(self, runtime: Runtime):
        super().__init__(name="housekeeper", daemon=True)
        self.runtime = runtime
        self.stop_event = threading.Event()
        self.cron = CronScheduler(runtime)
        self.triggers = TriggerRunner(runtime) if runtime.loop_thread is not None else None
        self._lock_file: Any = None

    def _is_scheduler(self) -> bool:
        """Hold scheduler.lock for the life of the process: only its holder fires cron triggers."""
        if self._lock_file is None:
            handle = open(self.runtime.settings.data_dir / "scheduler.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._lock_file = handle
        return True

    def recover(self) -> None:
        """Queue again what a dead process left: running executions of dead owners, stranded queued ones."""
        rt = self.runtime
        for execution_id in rt.runs.orphans(rt.process_id, rt.settings.worker.stale_after_s):
            log.info("resuming execution %s left by a stopped process", execution_id)
            rt.enqueue(execution_id)
        for execution_id in rt.runs.due_waiting(time.time() - 5):
            rt.enqueue(execution_id)
        if rt.huey.storage.queue_size() == 0:  # queued executions but no messages: a process died in between
            for execution_id in rt.runs.queued(created_before=time.time() - 1):
                if execution_id in rt.active or rt.gate.holds(execution_id):
                    continue  # running here (claimed with its first commit), or waiting for its tenant's slot
                log.info("queueing execution %s again: its message was lost", execution_id)
                rt.enqueue(execution_id)
        for execution_id in rt.gate.startable(rt.quotas.concurrency):  # the tenant's quota was raised
            rt.enqueue(execution_id)

    def prune(self, budget_s: float = 0.5) -> bool:
        """Delete finished executions past their tenant's retention_days, a short transaction (100
        executions) at a time so that the engine's commits wait little, then give the space back
        (incremental vacuum); True if time ran out with more to do."""
        rt = self.runtime
        deadline = time.monotonic() + budget_s
        for row in rt.control.query("SELECT id FROM tenants"):
            days = rt.quotas.limits(row["id"]).retention_days
            if not days:
                continue
            before = time.time() - days * 86400
            while rt.runs.prune(row["id"], before) > 0:
                if time.monotonic() > deadline:
                    return True
        return self.vacuum(deadline)

    def vacuum(self, deadline: float, pages: int = 128) -> bool:
        """Give the pages freed by deletions back to the file system, `pages` (512 KiB at 4 KiB pages) in
        each short write so that the engine's commits wait little; True if time ran out first."""
        runs = self.runtime.runs
        if runs.free_pages() == 0:
            return False
        while runs.vacuum(pages) > 0:
            if time.monotonic() > deadline:
                return True
        return False

    def run(self) -> None:
        rt = self.runtime
        settings = rt.settings
        next_beat = next_recover = next_tick = next_prune = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    rt.runs.heartbeat(rt.process_id, "worker")
                    next_beat = now + settings.worker.heartbeat_s
                if now >= next_recover:
                    self.recover()
                    next_recover = now + max(1.0, settings.worker.stale_after_s / 3)
                for execution_id in rt.runs.cancel_requested(rt.process_id):
                    rt.cancel_local(execution_id)
                if now >= next_tick and self._is_scheduler():
                    self.cron.tick()
                    if self.triggers is not None:
                        self.triggers.sync()
                    next_tick = now + settings.schedule.tick_s
                if now >= next_prune and self._is_scheduler():
                    more = self.prune()
                    next_prune = time.monotonic() + (0.2 if more else settings.worker.retention_interval_s)
            except Exception:
                log.exception("housekeeping failed; trying again")
            self.stop_event.wait(0.2)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        if self.triggers is not None:
            self.triggers.stop()
        if self._lock_file is not None:
            self._lock_file.close()


def run_worker(settings: Settings) -> None:
    """Run the worker in this (main) thread until SIGTERM or SIGINT."""
    runtime = Runtime(settings, role="worker")
    runtime.loop_thread = EventLoopThread(settings.worker.concurrency)
    runtime.use_loop(runtime.loop_thread.loop)
    runtime.runs.heartbeat(runtime.process_id, "worker")
    keeper = Housekeeper(runtime)
    keeper.start()
    tune_gc()
    consumer = runtime.huey.create_consumer(
        workers=settings.worker.threads, worker_type="thread", periodic=False,
        initial_delay=settings.worker.poll_interval_s, backoff=1.15,
        max_delay=settings.worker.max_poll_interval_s, scheduler_interval=1, check_worker_health=True)
    logging.getLogger("huey").setLevel(max(logging.WARNING, log.getEffectiveLevel()))  # not two lines a task
    log.info("worker %s started: %d consumer threads, %d executions at once, queue %s", runtime.process_id,
             settings.worker.threads, settings.worker.concurrency, settings.data_dir / "queue.db")
    try:
        consumer.run()
    finally:
        keeper.stop()
        runtime.runs_db.execute("DELETE FROM processes WHERE id=?", (runtime.process_id,))
        runtime.loop_thread.stop()
        runtime.close()
