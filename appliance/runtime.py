"""The composition root: opens the data directory and wires storage, queue, vault and engine.

`Runtime` is what the CLI, the web app and the worker share. It starts executions (inline for
synchronous webhooks, queued for everything else), runs or resumes them, and implements the
engine's `Services` port (credentials, sub-flows, resume URLs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any

from connectors import default_registry
from connectors.http import try_credential
from engine import (
    FAILED,
    FINAL,
    RUNNING,
    SUCCEEDED,
    WAITING,
    ExecutionRef,
    Executor,
    Flow,
    FlowInvalid,
    Limits,
    NodeError,
    Outcome,
    Run,
)
from engine.executor import pinned_outputs, secret_values
from engine.flow import ancestors, descendants

from . import logs, schema
from .audit import AuditLog
from .catalog import Catalog, FlowRow, NotFound, QuotaExceeded
from .db import Database, Writer, check_known, migrate, pending_migrations
from .identity import Identity, Invalid
from .queue import make_queue
from .quotas import QuotaBook, TenantGate
from .runs import ClaimLost, RunStore, execution_row
from .settings import Settings
from .vault import Vault

log = logging.getLogger("flowfuse")
#: Huey's own statement for a new message (SqliteStorage.enqueue), batched by our writer.
ENQUEUE_SQL = "INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)"
#: The trigger of an execution started from the console's editor (see Runtime.start_test_run).
TEST = "test"


class NoData(ValueError):
    """A partial run needs the output of a node that has none anywhere (the API's 422)."""


class NotInitialised(RuntimeError):
    pass


@dataclass
class Started:
    """An execution that was queued: its id, or None when its dedup key had fired before."""

    id: str | None


def tune_gc() -> None:
    """Garbage collection for a long-running server process.

    What start-up made lives for good: freeze it out of every collection. And collect the young
    generation after 20,000 new container objects instead of 700: executions hold many short-lived
    dicts that reference counting frees anyway, and scanning them that often cost about a quarter
    of the engine's time on long flows (measured with bench/run.py --only long).
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def init_data_dir(settings: Settings) -> dict[str, Any]:
    """Create the data directory, apply migrations, create the master key and the tenant 'default'."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # credentials' keys, sessions and execution data: for the service's user alone
    backups = data / "backups"  # each database that holds data is copied here before migrations change it
    for name, migrations in (("flowfuse.db", schema.control), ("runs.db", schema.runs), ("audit.db", schema.audit)):
        check_known(data / name, migrations)  # a newer data directory changes nothing, not even one database
    applied = {"flowfuse.db": migrate(data / "flowfuse.db", schema.control, backups),
               "runs.db": migrate(data / "runs.db", schema.runs, backups),
               "audit.db": migrate(data / "audit.db", schema.audit, backups)}
    runtime = Runtime(settings, role="cli")
    try:
        runtime.vault.initialise()  # flowfuse.key (0600) unless a key is configured, and its check value
        tenant = runtime.catalog.ensure_tenant()
    finally:
        runtime.close()
    return {"data_dir": str(data.resolve()), "migrations": applied, "tenant": tenant}


class Runtime:
    def __init__(self, settings: Settings, role: str = "cli"):
        self.settings = settings
        data = settings.data_dir
        if not (data / "flowfuse.db").exists():
            raise NotInitialised(f"no data directory at {data}; run `flowfuse init --data-dir {data}` first")
        check_known(data / "flowfuse.db", schema.control)  # a binary older than the data directory stops here
        check_known(data / "runs.db", schema.runs)
        opts = dict(synchronous=settings.storage.synchronous.upper(), busy_timeout_ms=settings.storage.busy_timeout_ms,
                    max_batch=settings.storage.group_commit_max)
        self.control = Database(data / "flowfuse.db", **opts)
        self.runs_db = Database(data / "runs.db", **opts)
        self.audit = AuditLog(data / "audit.db", opts["synchronous"], opts["busy_timeout_ms"])
        self.registry = default_registry(data / "plugins")  # built-ins, entry points, plugins
        self.catalog = Catalog(self.control, self.registry)
        self.runs = RunStore(self.runs_db)
        self.runs.flow_of = self.flow_of
        #: Compiled drafts of test runs by execution id (a few: the console's current runs).
        self._drafts: dict[str, Flow] = {}
        self.quotas = QuotaBook(settings.quotas, self.catalog, self.runs_db)
        self.catalog.active_flow_quota = self.quotas.active_flows
        #: The worker's per-tenant concurrency quota (see run_queued).
        self.gate = TenantGate()
        self.vault = Vault(self.control, data / "flowfuse.key", self.registry)
        self.vault.check()  # a missing or wrong master key stops every process here, changing nothing
        self.identity = Identity(self.control, self.vault)
        self.process_id = f"{role}-{os.getpid()}-{secrets.token_hex(3)}"
        self.role = role
        self.executor = Executor(self.runs, self, Limits(
            settings.engine.inline_wait_max_s, settings.engine.max_step_output_bytes,
            checkpoint_every_step=settings.engine.checkpoint == "every_step"))
        self.huey, self._task = make_queue(self, data / "queue.db", settings)
        #: Executions running in this process: id -> (task, run) so they can be cancelled.
        self.active: dict[str, tuple[asyncio.Task, Run]] = {}
        self._queue_writer: Writer | None = None
        #: The worker's engine loop (Huey threads hand it coroutines); None outside the worker.
        self.loop_thread = None

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit on this event loop (the web process's, or the worker's engine loop)."""
        self.control.use_loop(loop)
        self.runs_db.use_loop(loop)
        self.audit.use_loop(loop)

    def migrations_pending(self) -> list[str]:
        return (pending_migrations(self.control.path, schema.control) +
                pending_migrations(self.runs_db.path, schema.runs))

    #: Below this much free space on the data directory's file system the console warns.
    LOW_DISK_BYTES = 64 << 20

    def storage_alert(self) -> str | None:
        """Why new work cannot be stored, for the console's banner: a write of this process that failed
        for want of space (until a write succeeds again), or a nearly full file system."""
        for db in (self.runs_db, self.control):
            if db.disk_full:
                return db.disk_full
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
        except OSError:
            return None
        if free < self.LOW_DISK_BYTES:
            return (f"only {free >> 20} MiB free on the file system of {self.settings.data_dir}: new executions "
                    "will fail when it is full; free space or lower quotas.retention_days")
        return None

    def close(self) -> None:
        self.control.close()
        self.runs_db.close()
        self.audit.close()
        if self._queue_writer is not None:
            self._queue_writer.close()

    def delete_tenant(self, tenant_id: str) -> dict[str, int]:
        """Delete a tenant and everything it owns, in flowfuse.db and runs.db; returns what went."""
        def runs_part(conn) -> dict[str, int]:
            counts = {"executions": conn.execute("DELETE FROM executions WHERE tenant_id=?", (tenant_id,)).rowcount}
            counts["steps"] = conn.execute("DELETE FROM steps WHERE tenant_id=?", (tenant_id,)).rowcount
            conn.execute("DELETE FROM resume_payloads WHERE tenant_id=?", (tenant_id,))
            conn.execute("DELETE FROM schedule_state WHERE tenant_id=?", (tenant_id,))
            conn.execute("DELETE FROM trigger_cursors WHERE tenant_id=?", (tenant_id,))
            return counts

        def control_part(conn) -> int:
            flows = conn.execute("SELECT count(*) FROM flows WHERE tenant_id=?", (tenant_id,)).fetchone()[0]
            for table in ("pins", "flow_versions", "flows", "variables", "credentials", "api_keys", "invitations",
                          "memberships"):
                conn.execute(f"DELETE FROM {table} WHERE tenant_id=?", (tenant_id,))
            conn.execute("DELETE FROM tenants WHERE id=?", (tenant_id,))
            return flows

        # suspended first, so that no webhook or schedule starts a run while runs.db is emptied
        self.control.execute("UPDATE tenants SET status='suspended' WHERE id=?", (tenant_id,))
        self.catalog.invalidate()
        counts = self.runs_db.write(runs_part)
        counts["flows"] = self.control.write(control_part)
        self.catalog.invalidate()
        return counts

    # -- starting executions ----------------------------------------------------------------------------
    def tenant_id(self, slug: str | None) -> str:
        return self.catalog.tenant(slug or "default")["id"]

    def _message(self, execution_id: str, eta: float | None) -> bytes:
        when = dt.datetime.fromtimestamp(eta, dt.timezone.utc) if eta else None
        return self.huey.serialize_task(self._task.s(execution_id, eta=when))

    def enqueue(self, execution_id: str, eta: float | None = None) -> None:
        """Hand an execution to the worker (at `eta`, epoch seconds, if given)."""
        self.huey.storage.enqueue(self._message(execution_id, eta), None)

    async def aenqueue(self, execution_id: str, eta: float | None = None) -> None:
        """`enqueue` for coroutines: messages queued at the same moment share one commit to queue.db."""
        if self._queue_writer is None:
            opts = self.settings.storage
            self._queue_writer = Writer(self.settings.data_dir / "queue.db", opts.synchronous.upper(),
                                        opts.busy_timeout_ms, opts.group_commit_max)
        row = (self.huey.storage.name, self._message(execution_id, eta), 0)
        await self._queue_writer.awrite(None, [(ENQUEUE_SQL, [row])])

    def queue_execution(self, flow: FlowRow, trigger: str, items: list[dict], meta: dict | None = None,
                        dedup_key: str | None = None, parent_id: str | None = None) -> Started:
        """Durably record a queued execution, then hand it to the worker through Huey.

        Raises QuotaExceeded past the tenant's monthly executions."""
        self.quotas.admit(flow.tenant_id)
        row = execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name, flow_version=flow.version,
                            trigger=trigger, items=items, meta=meta, dedup_key=dedup_key, parent_id=parent_id)
        if not self.runs.insert(row):
            self.quotas.forget(flow.tenant_id)
            return Started(None)
        self.enqueue(row["id"])
        return Started(row["id"])

    async def aqueue_execution(self, flow: FlowRow, trigger: str, items: list[dict], meta: dict | None = None) -> str:
        self.quotas.admit(flow.tenant_id)
        row = execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name, flow_version=flow.version,
                            trigger=trigger, items=items, meta=meta)
        await self.runs.ainsert(row)
        await self.aenqueue(row["id"])
        return row["id"]

    async def run_inline(self, flow: FlowRow, trigger: str, items: list[dict], meta: dict | None = None,
                         parent_id: str | None = None, dedup_key: str | None = None,
                         execution_id: str | None = None) -> tuple[str, Outcome]:
        """Run a new execution in this process (synchronous webhooks, `flowfuse run`, sub-flows).

        Raises QuotaExceeded past the tenant's monthly executions."""
        self.quotas.admit(flow.tenant_id)
        compiled = self.catalog.compiled(flow.id, flow.version)
        row = execution_row(tenant_id=flow.tenant_id, flow_id=flow.id, flow_name=flow.name, flow_version=flow.version,
                            trigger=trigger, items=items, status=RUNNING, meta=meta, parent_id=parent_id,
                            dedup_key=dedup_key, owner=self.process_id, id=execution_id)
        ref = ExecutionRef(row["id"], flow.tenant_id, flow.id, persisted=False, row=row)
        run = Run(ref, compiled, items, row["created_at"], trigger=trigger, vars=self.catalog.variables(flow.tenant_id),
                  meta=meta or {})
        outcome = await self._execute(run)
        await self._after(run, outcome)
        return row["id"], outcome

    # -- running queued executions (the worker) -----------------------------------------------------------
    async def run_execution(self, execution_id: str) -> Outcome | None:
        """Run or resume a recorded execution unless it is finished or running elsewhere."""
        if execution_id in self.active:
            return None  # a duplicate message for a run in progress here
        # No await between this check and `_execute` registering the run in `active`, so a duplicate
        # message cannot slip in; against other processes the claim in the first commit decides.
        run = self._prepare(execution_id)
        if run is None:
            return None
        return await self._run_prepared(run)

    async def _run_prepared(self, run: Run) -> Outcome | None:
        try:
            outcome = await self._execute(run)
        except ClaimLost:
            return None  # cancelled, or taken over, before it committed anything: nothing to do here
        await self._after(run, outcome)
        return outcome

    async def run_queued(self, execution_id: str) -> None:
        """What a queue message does: `run_execution` within the tenant's concurrent_executions quota.

        At the quota the execution waits in `self.gate` and this message ends, freeing its worker slot
        for other tenants; when one of the tenant's executions ends, its coroutine goes on with the
        first one waiting (so those start in order, each holding the slot of the one before).
        """
        run = None if execution_id in self.active else self._prepare(execution_id)
        if run is None:
            return
        tenant_id = run.ref.tenant_id
        if not self.gate.enter(tenant_id, execution_id, self.quotas.concurrency(tenant_id)):
            return
        while True:
            try:
                if run is not None:
                    await self._run_prepared(run)
            except Exception:  # logged, not raised: the slot must go on to the next one waiting
                log.exception("execution %s failed in the worker", run.ref.id)
            execution_id = self.gate.leave(tenant_id, self.quotas.concurrency(tenant_id))
            if execution_id is None:
                return
            try:  # None: cancelled, finished or taken elsewhere while it waited
                run = None if execution_id in self.active else self._prepare(execution_id)
            except Exception:
                log.exception("execution %s could not be started", execution_id)
                run = None

    def _prepare(self, execution_id: str) -> Run | None:
        """The Run to resume or start, or None if the execution is not this process's to run now."""
        loaded = self.runs.load(execution_id)
        if loaded is None or loaded.row["status"] in FINAL:
            return None
        row = loaded.row
        if row["status"] == RUNNING and row["owner"] != self.process_id and \
                row["id"] not in self.runs.orphans(self.process_id, self.settings.worker.stale_after_s):
            return None  # another live process is running it
        if row["status"] == WAITING and not loaded.resume_items and row["resume_at"] is None:
            return None  # waits for its resume URL
        if row["status"] == WAITING and row["resume_at"] and row["resume_at"] > time.time() + 0.01 \
                and not loaded.resume_items:
            return None  # resumed too early (e.g. a duplicate message); its scheduled resume will come
        meta = json.loads(row["meta"]) if row["meta"] else {}
        flow = self._draft(row, meta["definition"]) if row["trigger"] == TEST and "definition" in meta \
            else self.catalog.compiled(row["flow_id"], row["flow_version"])
        # Claimed with the run's first commit (see ExecutionRef.claim): one commit fewer per execution.
        ref = ExecutionRef(row["id"], row["tenant_id"], row["flow_id"], row=dict(row),
                           claim=(row["status"], row["owner"], self.process_id))
        started = meta.get("retried_at") or row["created_at"]  # a retry gets the flow's whole time-out again
        run = Run(ref, flow, loaded.items, started, trigger=row["trigger"], steps=loaded.steps,
                  resume_items=loaded.resume_items, vars=self.catalog.variables(row["tenant_id"]), meta=meta)
        if row["trigger"] == TEST:  # pins, partial run and step mode as fixed when it was started
            test = meta.get("test") or {}
            run.pins = test.get("pins") or {}
            run.given = {nid: tuple(given) for nid, given in (test.get("given") or {}).items()}
            run.skip = frozenset(test.get("skip") or ())
            run.step_mode = bool(test.get("step_mode"))
            run.checkpoint_every_step = True  # the console streams every step as it is committed
        return run

    async def _execute(self, run: Run) -> Outcome:
        task = asyncio.current_task()
        self.active[run.ref.id] = (task, run)
        try:
            return await self.executor.run(run)
        finally:
            self.active.pop(run.ref.id, None)

    async def _after(self, run: Run, outcome: Outcome) -> None:
        if outcome.status == WAITING and outcome.resume_at is not None:
            await self.aenqueue(run.ref.id, outcome.resume_at)
        elif outcome.status == FAILED and run.flow.error_flow and run.trigger not in ("error", TEST):
            await asyncio.to_thread(self._start_error_flow, run, outcome)

    def _start_error_flow(self, run: Run, outcome: Outcome) -> None:
        try:
            target = self.catalog.flow(run.ref.tenant_id, run.flow.error_flow)
        except NotFound:
            log.warning("flow %r names the error flow %r, which does not exist", run.flow.name, run.flow.error_flow)
            return
        item = {"execution": {"id": run.ref.id, "flow": run.flow.name, "trigger": run.trigger,
                              "started_at": run.started_at, "error": outcome.error}}
        try:
            self.queue_execution(target, "error", [item], dedup_key=f"error:{run.ref.id}", parent_id=run.ref.id)
        except QuotaExceeded as exc:
            log.warning("error flow %r not started for execution %s: %s", target.name, run.ref.id, exc)

    # -- test runs (debugging from the console) -----------------------------------------------------------------
    def start_test_run(self, flow: FlowRow, *, definition: dict | None = None, items: list[dict] | None = None,
                       input_from: str | None = None, start_at: str | None = None, step_mode: bool = False,
                       by: str | None = None) -> str:
        """Queue a test run of a flow (a draft `definition`, or its latest version); returns its id.

        Everything it runs with is fixed now and kept in the execution's meta, so that a resume after
        a crash, a `continue` in step mode or a retry runs the same: the draft (never a flow version),
        the flow's pins, and for a partial run from `start_at` the output of every node it needs but
        does not run (pinned, else that node's output in `input_from`, else in the newest execution
        of the flow where it succeeded). Raises FlowInvalid, Invalid, NoData or QuotaExceeded."""
        if definition is not None:
            if definition.get("name", flow.name) != flow.name:
                raise Invalid("definition.name", f"the draft names the flow {definition.get('name')!r} "
                                                 f"but the URL names {flow.name!r}")
            definition = {**definition, "name": flow.name}
            compiled = self.catalog.validate(definition, flow.tenant_id)
        else:
            compiled = self.catalog.compiled(flow.id, flow.version)
        if input_from is not None:
            if items is not None:
                raise Invalid("input_from", "give either input or input_from, not both")
            source = self.runs_db.one("SELECT input FROM executions WHERE id=? AND tenant_id=? AND flow_id=?",
                                      (input_from, flow.tenant_id, flow.id))
            if source is None:
                raise Invalid("input_from", f"flow {flow.name!r} has no execution {input_from!r}")
            items = json.loads(source["input"])
        pins = {nid: found for nid, found in self.catalog.pins(flow.id).items() if nid in compiled.nodes}
        given: dict[str, tuple[str, dict, int]] = {}
        skip: frozenset[str] = frozenset()
        if start_at is not None:
            node = compiled.nodes.get(start_at)
            if node is None:
                raise Invalid("start_at", f"the flow has no node {start_at!r}")
            if node.loop_owner is not None:
                raise Invalid("start_at", f"node {start_at!r} is inside the loop of {node.loop_owner!r}; "
                                          "start at the loop node")
            runs = {start_at} | descendants(compiled, start_at)
            needed = ancestors(compiled, runs)
            if items is not None and compiled.trigger.id in needed:  # the trigger runs with the items given
                needed.discard(compiled.trigger.id)
                runs.add(compiled.trigger.id)
            for nid in (n for n in compiled.order if n in needed):
                if nid in pins:
                    given[nid] = ("pinned", pinned_outputs(compiled.nodes[nid], pins[nid]), 0)
                    continue
                found = self.runs.step_output(input_from, nid) if input_from else None
                found = found or self.runs.latest_output(flow.tenant_id, flow.id, nid)
                if found is None:
                    raise NoData(f"node {nid!r} has no data to start from: pin its output or run the flow once")
                given[nid] = ("replayed", found[0], found[1])
            skip = frozenset(compiled.nodes) - runs - needed
        test = {"draft": definition is not None, "start_at": start_at, "step_mode": step_mode,
                "input_from": input_from, "pins": pins, "given": given, "skip": sorted(skip)}
        meta: dict[str, Any] = {"by": by, "test": test}
        if definition is not None:
            meta["definition"] = definition  # kept with the execution: never saved as a version
        return self.queue_execution(flow, TEST, items if items is not None else [{}], meta=meta).id

    def continue_paused(self, execution_id: str, tenant_id: str) -> str:
        """Run the next node of a step-mode execution (see RunStore.continue_paused); returns that node."""
        node = self.runs.continue_paused(execution_id, tenant_id)
        self.enqueue(execution_id)
        return node

    def flow_of(self, row: Any) -> Flow | None:
        """The compiled flow an execution ran: a test run's draft, else its version; None if gone."""
        try:
            if row["trigger"] == TEST and row["meta"] and '"definition"' in row["meta"]:
                meta = json.loads(row["meta"])
                if isinstance(meta.get("definition"), dict):
                    return self._draft(row, meta["definition"])
            if row["flow_id"] and row["flow_version"]:
                return self.catalog.compiled(row["flow_id"], row["flow_version"])
        except (NotFound, FlowInvalid):
            return None
        return None

    def _draft(self, row: Any, definition: dict) -> Flow:
        """A test run's draft, compiled with its tenant's node types (imported ones included)."""
        found = self._drafts.get(row["id"])
        if found is None:
            if len(self._drafts) >= 64:
                self._drafts.pop(next(iter(self._drafts)))
            found = self._drafts[row["id"]] = self.catalog.validate(definition, row["tenant_id"])
        return found

    def try_credential(self, tenant_id: str, credential_id: str, url: str) -> dict[str, Any]:
        """Test a credential against a URL (see connectors.http.try_credential)."""
        name = self.vault.describe(tenant_id, credential_id)["name"]
        return try_credential(self.vault.get(tenant_id, name), url)

    def retry(self, execution_id: str, tenant_id: str) -> list[str]:
        """Run a failed execution again from its failed step(s) (see RunStore.retry)."""
        nodes = self.runs.retry(execution_id, tenant_id)
        self.enqueue(execution_id)
        return nodes

    def cancel(self, execution_id: str) -> str | None:
        """Cancel an execution: at once if queued or waiting, else by its owner within a moment."""
        before = self.runs.request_cancel(execution_id)
        if before == RUNNING:
            self.cancel_local(execution_id)
        return before

    def cancel_local(self, execution_id: str) -> bool:
        found = self.active.get(execution_id)
        if found is None:
            return False
        task, run = found
        run.cancel_requested = True
        task.get_loop().call_soon_threadsafe(task.cancel)
        return True

    # -- the engine's Services port ----------------------------------------------------------------------------
    def credential(self, tenant_id: str, name: str) -> dict[str, Any]:
        found = self.vault.get(tenant_id, name)
        logs.remember_secrets(secret_values(found))  # out of every later log record of this process
        return found

    def save_credential_fields(self, tenant_id: str, name: str, fields: dict[str, Any]) -> None:
        """Keep fields a connector changed in a credential (refreshed OAuth2 tokens; see
        connectors.sdk.auth), encrypted in the vault with the credential's other fields."""
        row = self.control.one("SELECT id FROM credentials WHERE tenant_id=? AND name=?", (tenant_id, name))
        if row is None:
            raise LookupError(f"credential {name!r} does not exist any more")
        self.vault.update(tenant_id, row["id"], data=fields)

    def resume_url(self, ref: ExecutionRef) -> str | None:
        slug = self.catalog.tenant_by_id(ref.tenant_id)["slug"]
        return f"{self.settings.base_url}/hooks/{slug}/_resume/{ref.id}/{self.vault.sign('resume', ref.id)}"

    async def run_subflow(self, parent: ExecutionRef, name: str, items: list[dict], key: str) -> list[dict]:
        try:
            flow = self.catalog.flow(parent.tenant_id, name)
        except NotFound as exc:
            raise NodeError(str(exc)) from None
        dedup = f"subflow:{key}"
        existing = self.runs_db.one("SELECT id, status FROM executions WHERE dedup_key=?", (dedup,))
        if existing is not None:  # the parent is being replayed after a crash: reuse the child
            child_id = existing["id"]
            while (outcome := await self.run_execution(child_id)) is None:
                shown = self.runs.show(child_id)
                if shown["status"] in FINAL or shown["status"] == WAITING:
                    outcome = Outcome(shown["status"], output=shown["output"] or [], error=shown["error"])
                    break
                # Being run by another message (recovery queues orphaned children too): wait for its end.
                await asyncio.sleep(0.1)
        else:
            try:
                child_id, outcome = await self.run_inline(flow, "subflow", items, parent_id=parent.id,
                                                          dedup_key=dedup)
            except QuotaExceeded as exc:
                raise NodeError(f"sub-flow {name!r} not started: {exc}") from None
        if outcome.status == SUCCEEDED:
            return outcome.output
        if outcome.status == WAITING:
            raise NodeError(f"sub-flow {name!r} (execution {child_id}) is waiting; execute_flow needs flows that "
                            "finish without waiting")
        message = (outcome.error or {}).get("message", outcome.status)
        raise NodeError(f"sub-flow {name!r} (execution {child_id}) {outcome.status}: {message}")

