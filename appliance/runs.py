"""runs.db: executions and their steps. Implements the engine's ExecutionStore port.

Ids are time-ordered (12 hex digits of milliseconds, then random) so lists page by keyset:
`WHERE id < ? ORDER BY id DESC LIMIT ?`, served by the (tenant_id, ...) indexes.
"""

from __future__ import annotations

import json
import operator
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from engine import FAILED, FINAL, QUEUED, RETRY, RUNNING, SUCCEEDED, WAITING, ExecutionRef, Finish, Flow, StepRecord

from .db import Database
from .usage import UsageMeter

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

STEP_SQL = ("INSERT INTO steps (execution_id, seq, tenant_id, key, node, attempt, status, input_count, output, "
            "error, resume_at, truncated, started_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
#: What the engine's commits write: STEP_SQL (still used for rows of no particular origin, by retry
#: and bench/run.py) plus the step's origin (pinned or replayed, see StepRecord.origin).
_STEP_ORIGIN_SQL = ("INSERT INTO steps (execution_id, seq, tenant_id, key, node, attempt, status, input_count, "
                    "output, error, resume_at, truncated, started_at, ended_at, origin) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
EXEC_SQL = ("INSERT INTO executions (id, tenant_id, flow_id, flow_name, flow_version, status, trigger, input, meta, "
            "output, error, parent_id, dedup_key, resume_at, owner, created_at, finished_at, updated_at) VALUES "
            "(:id, :tenant_id, :flow_id, :flow_name, :flow_version, :status, :trigger, :input, :meta, :output, :error, "
            ":parent_id, :dedup_key, :resume_at, :owner, :created_at, :finished_at, :created_at)")

# The engine's commits are the hot path (a synchronous webhook is one execution row and a step row per
# node), and Python's sqlite3 binds some values far slower than others: a named parameter is looked up
# by a new str each time, and None and bytes go through its adapter registry (about 0.5 and 0.9 us a
# value, against 0.1 for an int; bytearray takes the fast path). So those rows go positionally, blobs
# as bytearray, and a step that ran plainly leaves its always-NULL columns out of the statement:
# about a sixth less SQLite work per run (measured with valgrind).
_EXEC_COLUMNS = ("id", "tenant_id", "flow_id", "flow_name", "flow_version", "status", "trigger", "input", "meta",
                 "output", "error", "parent_id", "dedup_key", "resume_at", "owner", "created_at", "finished_at")
_EXEC_VALUES_SQL = (f"INSERT INTO executions ({', '.join(_EXEC_COLUMNS)}, updated_at) "
                    f"VALUES ({'?, ' * len(_EXEC_COLUMNS)}?)")
_exec_values = operator.itemgetter(*_EXEC_COLUMNS, "created_at")
_STEP_PLAIN_SQL = ("INSERT INTO steps (execution_id, seq, tenant_id, key, node, attempt, status, input_count, output, "
                   "truncated, started_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


_last_id = [0, 0]  # [milliseconds, sequence] of the last id made in this process


def new_id() -> str:
    """Time-ordered ids: milliseconds, a sequence within the millisecond, 24 random bits.

    Ids made by one process sort in the order they were made; the random part keeps ids of
    different processes apart. Not a secret (resume URLs are signed, see Vault.sign).
    """
    ms = int(time.time() * 1000)
    if ms <= _last_id[0]:
        ms, seq = _last_id[0], _last_id[1] + 1
    else:
        seq = 0
    _last_id[:] = [ms, seq]
    return f"{ms:012x}{seq:04x}{random.getrandbits(24):06x}"


def execution_row(*, tenant_id: str, flow_id: str | None, flow_name: str, flow_version: int | None, trigger: str,
                  items: list[dict], status: str = QUEUED, meta: dict | None = None, parent_id: str | None = None,
                  dedup_key: str | None = None, owner: str | None = None, id: str | None = None) -> dict[str, Any]:
    return {"id": id or new_id(), "tenant_id": tenant_id, "flow_id": flow_id, "flow_name": flow_name,
            "flow_version": flow_version, "status": status, "trigger": trigger, "input": _encode(items),
            "meta": _encode(meta).decode() if meta else None, "parent_id": parent_id, "dedup_key": dedup_key,
            "owner": owner, "created_at": time.time(), "output": None, "error": None, "resume_at": None,
            "finished_at": None}


def _blob(value: bytes | None) -> bytearray | None:
    return None if value is None else bytearray(value)


def _step_rows(ref: ExecutionRef, steps: list[StepRecord]) -> tuple[list[tuple[str, list[tuple]]], int]:
    """The rows that store these steps (see _STEP_PLAIN_SQL), and their output bytes (for the meter)."""
    plain, other, nbytes = [], [], 0
    for s in steps:
        output = s.outputs_json
        if output is not None:
            nbytes += len(output)
            output = bytearray(output)
        if s.error is None and s.resume_at is None and s.origin is None and output is not None:
            plain.append((ref.id, s.seq, ref.tenant_id, s.key, s.node, s.attempt, s.status, s.input_count,
                          output, int(s.truncated), s.started_at, s.ended_at))
        else:
            other.append((ref.id, s.seq, ref.tenant_id, s.key, s.node, s.attempt, s.status, s.input_count,
                          output, s.error, s.resume_at, int(s.truncated), s.started_at, s.ended_at, s.origin))
    return [(sql, rows) for sql, rows in ((_STEP_PLAIN_SQL, plain), (_STEP_ORIGIN_SQL, other)) if rows], nbytes


@dataclass
class Loaded:
    row: sqlite3.Row
    steps: list[StepRecord]
    resume_items: dict[str, list[dict]]

    @property
    def items(self) -> list[dict]:
        return _decode(self.row["input"])


class ClaimLost(Exception):
    """The execution was cancelled, or taken by another process, before this one's claim committed."""


class RunStore:
    """Writes and reads of runs.db. `commit` is the engine's ExecutionStore port."""

    def __init__(self, db: Database):
        self.db = db
        self.meter = UsageMeter(db)
        #: The compiled flow an execution row ran (its version, or a test run's draft), or None when
        #: gone; set by the runtime, which has the catalog. `show` derives each step's input from it.
        self.flow_of: Callable[[sqlite3.Row], Flow | None] = lambda row: None

    # -- the engine port -------------------------------------------------------------------------
    async def commit(self, ref: ExecutionRef, steps: list[StepRecord], finish: Finish | None) -> None:
        """Write a run's new steps (and how it ended) in the next group commit.

        The execution row and the steps go as rows (batched across runs by the writer); the status
        change of an already stored execution is an UPDATE after them.
        """
        rows, nbytes = _step_rows(ref, steps)
        if finish is None and ref.persisted and ref.claim is None:  # the hot path: steps of a running run
            written = self.db.awrite(None, rows)
            self.meter.add(ref.tenant_id, 0, len(steps), nbytes)
            try:
                await written
            except Exception:
                self.meter.add(ref.tenant_id, 0, -len(steps), -nbytes)  # nothing of it was stored
                raise
            return
        row = None if ref.persisted else ref.row
        update = claim = None
        if ref.claim is not None:
            claim = self._claim_fn(ref.id, *ref.claim)
        if finish is not None:
            now = time.time()
            final = (finish.status, finish.output_json, json.dumps(finish.error) if finish.error else None,
                     finish.resume_at, now if finish.status in FINAL else None)
            if row is not None:  # the whole run in one commit: insert the row as it ended
                row = {**row, **dict(zip(("status", "output", "error", "resume_at", "finished_at"), final))}
            else:
                def update(conn: sqlite3.Connection) -> None:
                    conn.execute("UPDATE executions SET status=?, output=?, error=?, resume_at=?, finished_at=?, "
                                 "paused_at=?, updated_at=? WHERE id=? AND status NOT IN "
                                 "('succeeded', 'failed', 'cancelled')", (*final, finish.paused_at, now, ref.id))
        if row is not None:
            blobs = {"input": _blob(row["input"]), "output": _blob(row["output"])}
            rows.insert(0, (_EXEC_VALUES_SQL, [_exec_values({**row, **blobs})]))
        fn = update
        if claim is not None:
            def fn(conn: sqlite3.Connection) -> None:
                claim(conn)
                if update is not None:
                    update(conn)
        written = self.db.awrite(fn, rows)
        counted = (0 if ref.persisted else 1, len(steps), nbytes)  # an inline run is created here
        self.meter.add(ref.tenant_id, *counted)
        ended = row is not None and row["status"] in FINAL  # for the outcomes rollup (no INSERT trigger: usage.py)
        if ended:
            self.meter.finished(ref.tenant_id, row["created_at"], row["status"])
        try:
            await written
        except Exception:
            self.meter.add(ref.tenant_id, *(-n for n in counted))
            if ended:
                self.meter.finished(ref.tenant_id, row["created_at"], row["status"], -1)
            raise
        ref.persisted = True
        ref.claim = None

    @staticmethod
    def _claim_fn(execution_id: str, status: str, previous_owner: str | None, owner: str):
        def claim(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE executions SET status='running', owner=?, resume_at=NULL, updated_at=? "
                               "WHERE id=? AND status=? AND owner IS ?",
                               (owner, time.time(), execution_id, status, previous_owner))
            if cur.rowcount != 1:
                raise ClaimLost(f"execution {execution_id} changed before it could be claimed")
        return claim

    # -- creating and claiming ---------------------------------------------------------------------
    def insert(self, row: dict[str, Any]) -> bool:
        """Insert a new execution; False when its dedup_key was already used (nothing written)."""
        def write(conn: sqlite3.Connection) -> bool:
            try:
                conn.execute(EXEC_SQL, row)
                return True
            except sqlite3.IntegrityError:
                if row.get("dedup_key") and conn.execute("SELECT 1 FROM executions WHERE dedup_key=?",
                                                         (row["dedup_key"],)).fetchone():
                    return False
                raise
        inserted = self.db.write(write)
        if inserted:
            self.meter.add(row["tenant_id"], 1, 0, 0)
        return inserted

    async def ainsert(self, row: dict[str, Any]) -> None:
        written = self.db.awrite(None, [(EXEC_SQL, [row])])
        self.meter.add(row["tenant_id"], 1, 0, 0)
        try:
            await written
        except Exception:
            self.meter.add(row["tenant_id"], -1, 0, 0)
            raise

    def load(self, execution_id: str) -> Loaded | None:
        row = self.db.one("SELECT * FROM executions WHERE id=?", (execution_id,))
        if row is None:
            return None
        steps = [StepRecord(key=r["key"], node=r["node"], attempt=r["attempt"], status=r["status"],
                            input_count=r["input_count"], started_at=r["started_at"], ended_at=r["ended_at"],
                            outputs_json=r["output"], error=r["error"], resume_at=r["resume_at"],
                            truncated=bool(r["truncated"]), seq=r["seq"], origin=r["origin"])
                 for r in self.db.query("SELECT * FROM steps WHERE execution_id=? ORDER BY seq", (execution_id,))]
        resume = {r["key"]: _decode(r["items"]) for r in
                  self.db.query("SELECT key, items FROM resume_payloads WHERE execution_id=?", (execution_id,))}
        return Loaded(row, steps, resume)

    def add_resume_payload(self, execution_id: str, tenant_id: str, key: str, items: list[dict]) -> bool:
        """Store what a resume URL received for a waiting step; False if that step was resumed
        already (the first call wins, so two concurrent POSTs cannot both resume it)."""
        return self.db.execute("INSERT INTO resume_payloads VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                               (execution_id, tenant_id, key, _encode(items), time.time())) == 1

    def request_cancel(self, execution_id: str) -> str | None:
        """Cancel at once if not running; returns the status before. Running ones are cancelled by their owner."""
        def write(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT status FROM executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in (QUEUED, WAITING):
                conn.execute("UPDATE executions SET status='cancelled', error=?, finished_at=?, updated_at=? "
                             "WHERE id=?", (json.dumps({"node": None, "message": "cancelled"}), time.time(),
                                            time.time(), execution_id))
            elif row["status"] == RUNNING:
                conn.execute("UPDATE executions SET meta=json_set(coalesce(meta, '{}'), '$.cancel', 1) WHERE id=?",
                             (execution_id,))
            return row["status"]
        return self.db.write(write)

    def retry(self, execution_id: str, tenant_id: str) -> list[str]:
        """Queue a failed execution again: its succeeded steps are reused, and each node whose last
        record failed gets a `retry` record, so it runs again with a fresh set of attempts. Returns
        the nodes that will run again; Conflict-like ValueError if the execution has not failed."""
        def write(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute("SELECT status, meta FROM executions WHERE id=? AND tenant_id=?",
                               (execution_id, tenant_id)).fetchone()
            if row is None:
                raise LookupError(f"no execution {execution_id!r}")
            if row["status"] != FAILED:
                raise ValueError(f"only a failed execution can be retried; this one is {row['status']}")
            latest: dict[str, sqlite3.Row] = {}
            seq = -1
            for step in conn.execute("SELECT * FROM steps WHERE execution_id=? ORDER BY seq", (execution_id,)):
                latest[step["key"]] = step
                seq = step["seq"]
            now = time.time()
            failed = [s for s in latest.values() if s["status"] == FAILED]
            for i, step in enumerate(failed, start=seq + 1):
                conn.execute(STEP_SQL, (execution_id, i, tenant_id, step["key"], step["node"], step["attempt"], RETRY,
                                        step["input_count"], None, None, None, 0, now, now))
            meta = {**json.loads(row["meta"] or "{}"), "retried_at": now}
            conn.execute("UPDATE executions SET status='queued', output=NULL, error=NULL, finished_at=NULL, "
                         "resume_at=NULL, owner=NULL, meta=?, updated_at=? WHERE id=?",
                         (json.dumps(meta), now, execution_id))
            return [s["node"] for s in failed]
        return self.db.write(write)

    def prune(self, tenant_id: str, finished_before: float, limit: int = 100) -> int:
        """Delete up to `limit` of the tenant's executions that finished before then, with their steps and
        resume payloads, in one short transaction; returns how many went. Unfinished ones stay.

        Ids begin with their creation time, and an execution finishes after it is created, so `id <`
        bounds the scan (index executions_status) to executions created before then.
        """
        bound = f"{int(finished_before * 1000) + 1:012x}"

        def write(conn: sqlite3.Connection) -> int:
            ids = [(r[0],) for r in conn.execute(
                "SELECT id FROM executions WHERE tenant_id=? AND status IN ('succeeded', 'failed', 'cancelled') "
                "AND id < ? AND finished_at < ? LIMIT ?", (tenant_id, bound, finished_before, limit))]
            conn.executemany("DELETE FROM steps WHERE execution_id=?", ids)
            conn.executemany("DELETE FROM resume_payloads WHERE execution_id=?", ids)
            conn.executemany("DELETE FROM executions WHERE id=?", ids)
            return len(ids)
        return self.db.write(write)

    def vacuum(self, pages: int = 128) -> int:
        """Give up to `pages` free pages back to the file system (runs.db has auto_vacuum=INCREMENTAL,
        see migration 0008) in one short write; returns how many free pages are left. The file
        shrinks when the WAL is next checkpointed.

        One statement per page: Python's sqlite3 steps a statement that returns no rows only once,
        and each step of incremental_vacuum moves one page (about 0.2 ms, so a write holds the
        writer for some 25 ms at 128 pages)."""
        def write(conn: sqlite3.Connection) -> int:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            for _ in range(min(free, pages)):
                conn.execute("PRAGMA incremental_vacuum(1)")
            return conn.execute("PRAGMA freelist_count").fetchone()[0]
        return self.db.write(write)

    def free_pages(self) -> int:
        return self.db.one("PRAGMA freelist_count")[0]

    def cancel_requested(self, owner: str) -> list[str]:
        return [r["id"] for r in self.db.query(
            "SELECT id FROM executions WHERE status='running' AND owner=? AND json_extract(meta, '$.cancel') = 1",
            (owner,))]

    # -- processes ------------------------------------------------------------------------------------
    def heartbeat(self, process_id: str, kind: str) -> None:
        now = time.time()
        self.db.execute("INSERT INTO processes (id, kind, pid, started_at, heartbeat_at) VALUES (?,?,?,?,?) "
                        "ON CONFLICT (id) DO UPDATE SET heartbeat_at=excluded.heartbeat_at",
                        (process_id, kind, os.getpid(), now, now))

    def worker_alive(self, stale_after_s: float) -> bool:
        row = self.db.one("SELECT max(heartbeat_at) AS beat FROM processes WHERE kind='worker'")
        return bool(row and row["beat"] and time.time() - row["beat"] < stale_after_s)

    def orphans(self, me: str, stale_after_s: float) -> list[str]:
        """Running executions whose owner process is gone (pid dead or heartbeat stale)."""
        rows = self.db.query("SELECT e.id, e.owner, p.pid, p.heartbeat_at FROM executions e LEFT JOIN processes p "
                             "ON p.id = e.owner WHERE e.status='running' AND (e.owner IS NULL OR e.owner != ?)", (me,))
        now, found = time.time(), []
        for r in rows:
            if r["pid"] is None or now - r["heartbeat_at"] > stale_after_s or not _pid_alive(r["pid"]):
                found.append(r["id"])
        return found

    def due_waiting(self, now: float) -> list[str]:
        return [r["id"] for r in self.db.query(
            "SELECT id FROM executions WHERE status='waiting' AND resume_at IS NOT NULL AND resume_at <= ?", (now,))]

    def queued(self, created_before: float) -> list[str]:
        return [r["id"] for r in self.db.query(
            "SELECT id FROM executions WHERE status='queued' AND created_at < ? ORDER BY id", (created_before,))]

    # -- reading for people -----------------------------------------------------------------------------
    def list(self, tenant_id: str, flow_id: str | None = None, status: str | None = None, limit: int = 50,
             before: str | None = None, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Newest first. `since`/`until` (epoch seconds, creation time) become bounds on the id,
        whose first 12 hex digits are its creation milliseconds, so every filter stays on an index."""
        sql = ("SELECT id, flow_name, status, trigger, created_at, finished_at, error, parent_id FROM executions "
               "WHERE tenant_id=?")
        params: list[Any] = [tenant_id]
        if flow_id:
            sql += " AND flow_id=?"
            params.append(flow_id)
        if status:
            sql += " AND status=?"
            params.append(status)
        upper = [b for b in (before, f"{int(until * 1000):012x}" if until is not None else None) if b]
        if upper:
            sql += " AND id < ?"
            params.append(min(upper))
        if since is not None:
            sql += " AND id >= ?"
            params.append(f"{max(0, int(since * 1000)):012x}")
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_summary(r) for r in self.db.query(sql, params)]

    def last_per_flow(self, tenant_id: str, flow_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each flow's newest execution (id, status, time): one seek on (tenant_id, flow_id, id) per flow."""
        conn, found = self.db.read(), {}
        for flow_id in flow_ids:
            row = conn.execute("SELECT id, status, created_at FROM executions WHERE tenant_id=? AND flow_id=? "
                               "ORDER BY id DESC LIMIT 1", (tenant_id, flow_id)).fetchone()
            if row is not None:
                found[flow_id] = dict(row)
        return found

    def show(self, execution_id: str, tenant_id: str | None = None) -> dict[str, Any] | None:
        loaded = self.load(execution_id)
        if loaded is None or (tenant_id and loaded.row["tenant_id"] != tenant_id):
            return None
        r = loaded.row
        out = _summary(r)
        outputs = [_decode(s.outputs_json) if s.outputs_json else {} for s in loaded.steps]
        steps = [step_view(s, o) for s, o in zip(loaded.steps, outputs)]
        flow = self.flow_of(r)
        if flow is not None:
            for view, given in zip(steps, step_inputs(flow, loaded.items, loaded.steps, outputs)):
                view["input"] = given
        out.update(input=loaded.items, output=_decode(r["output"]) if r["output"] else None,
                   steps=steps, flow_version=r["flow_version"])
        if r["status"] == WAITING and r["paused_at"]:
            out["paused_at"] = r["paused_at"]
        if r["trigger"] == "test" and r["meta"]:
            test = json.loads(r["meta"]).get("test") or {}
            out["test"] = {k: test.get(k) for k in ("draft", "start_at", "step_mode", "input_from")}
        return out

    # -- test runs (web/api/debug.py) ------------------------------------------------------------------
    def continue_paused(self, execution_id: str, tenant_id: str) -> str:
        """Let a step-mode execution paused before a node run it: returns that node. It is queued again
        (the worker resumes it from its committed steps, and recovers it like any queued execution
        whose message was lost). Raises LookupError if there is no such execution, ValueError if it
        is not paused."""
        def write(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT status, paused_at FROM executions WHERE id=? AND tenant_id=?",
                               (execution_id, tenant_id)).fetchone()
            if row is None:
                raise LookupError(f"no execution {execution_id!r} in this tenant")
            if row["status"] != WAITING or not row["paused_at"]:
                raise ValueError(f"execution {execution_id} is not paused in step mode (it is {row['status']}); "
                                 "only a test run started with step_mode pauses")
            conn.execute("UPDATE executions SET status='queued', resume_at=NULL, paused_at=NULL, updated_at=? "
                         "WHERE id=?", (time.time(), execution_id))
            return row["paused_at"]
        return self.db.write(write)

    def step_output(self, execution_id: str, node_id: str) -> tuple[dict[str, list[dict]], int] | None:
        """The outputs and input count of a node's last succeeded top-level step in one execution."""
        row = self.db.one("SELECT output, input_count FROM steps WHERE execution_id=? AND key=? AND status=? "
                          "AND truncated=0 ORDER BY seq DESC LIMIT 1", (execution_id, node_id, SUCCEEDED))
        return (_decode(row["output"]), row["input_count"]) if row else None

    def latest_output(self, tenant_id: str, flow_id: str, node_id: str,
                      within: int = 500) -> tuple[dict[str, list[dict]], int, str] | None:
        """A node's output in the newest of the flow's last `within` executions in which it succeeded:
        (outputs, input count, execution id). Bounded so that a node that never ran costs one short scan."""
        row = self.db.one(
            "SELECT s.output, s.input_count, e.id FROM (SELECT id FROM executions WHERE tenant_id=? AND flow_id=? "
            "ORDER BY id DESC LIMIT ?) e JOIN steps s ON s.execution_id = e.id WHERE s.key=? AND s.status=? "
            "AND s.truncated=0 ORDER BY e.id DESC, s.seq DESC LIMIT 1",
            (tenant_id, flow_id, within, node_id, SUCCEEDED))
        return (_decode(row["output"]), row["input_count"], row["id"]) if row else None

    def state(self, execution_id: str) -> sqlite3.Row | None:
        """Status, error, pause and tenant of an execution: what a live view polls."""
        return self.db.one("SELECT tenant_id, status, error, paused_at FROM executions WHERE id=?", (execution_id,))

    def step_events(self, execution_id: str, after_seq: int) -> list[dict[str, Any]]:
        """The execution's steps committed after `after_seq`, as the events of a live view."""
        events = []
        for r in self.db.query("SELECT seq, node, status, attempt, output, error, started_at, ended_at, origin "
                               "FROM steps WHERE execution_id=? AND seq > ? ORDER BY seq", (execution_id, after_seq)):
            outputs = _decode(r["output"]) if r["output"] else {}
            event: dict[str, Any] = {
                "seq": r["seq"], "node": r["node"], "status": r["status"],
                "items": sum(len(v) for v in outputs.values() if isinstance(v, list)), "attempt": r["attempt"],
                "started_at": r["started_at"], "finished_at": r["ended_at"],
                "duration_ms": round((r["ended_at"] - r["started_at"]) * 1000, 3)}
            if r["error"]:
                event["error"] = r["error"]
            if r["origin"]:
                event[r["origin"]] = True
            events.append(event)
        return events

    # -- the console's dashboard: every query bounded by an index, at a million executions -------------------
    def outcomes(self, tenant_id: str, since: float) -> list[dict[str, Any]]:
        """Executions created since `since` that ended, per hour (epoch hour), from the `outcomes`
        rollup that runs migration 0006 keeps with triggers: at most 24 rows a day."""
        return [dict(r) for r in self.db.query(
            "SELECT hour, succeeded, failed, cancelled FROM outcomes WHERE tenant_id=? AND hour >= ? ORDER BY hour",
            (tenant_id, int(since // 3600)))]

    def recent_durations(self, tenant_id: str, limit: int = 1000) -> list[float]:
        """Seconds from creation to the end of the tenant's newest `limit` succeeded or failed
        executions: two bounded ranges of (tenant_id, status, id), newest first, merged."""
        rows: list[tuple[str, float]] = []
        for status in ("succeeded", "failed"):
            rows += [(r[0], r[1]) for r in self.db.query(
                "SELECT id, finished_at - created_at FROM executions WHERE tenant_id=? AND status=? "
                "ORDER BY id DESC LIMIT ?", (tenant_id, status, limit)) if r[1] is not None]
        rows.sort(reverse=True)
        return [seconds for _, seconds in rows[:limit]]

    def count_status(self, tenant_id: str, status: str) -> int:
        """How many of the tenant's executions have this status now (a range of (tenant_id, status, id);
        meant for the few running or queued ones)."""
        return self.db.one("SELECT count(*) FROM executions WHERE tenant_id=? AND status=?", (tenant_id, status))[0]


def step_inputs(flow: Flow, trigger_items: list[dict], steps: list[StepRecord],
                outputs: list[dict[str, Any]]) -> list[list[dict] | None]:
    """What each step's node received, as the engine gathered it: the outputs of its predecessors
    along the flow's edges, in the order the flow lists them (inside a loop: the predecessors of the
    same batch, or the batch itself). None where it cannot be told (a truncated predecessor output,
    a node the flow no longer has, a batch size given by an expression)."""
    done: dict[str, dict[str, Any] | None] = {}
    for step, out in zip(steps, outputs):
        if step.status == SUCCEEDED:
            done[step.key] = None if step.truncated else out
    cache: dict[str, list[dict] | None] = {}

    def input_of(key: str, node_id: str) -> list[dict] | None:
        if key in cache:
            return cache[key]
        cache[key] = None  # a guard against a malformed key leading back to itself
        node = flow.nodes.get(node_id)
        if node is None or not key.endswith(node_id):
            return None
        scope = key[:len(key) - len(node_id)]
        if node is flow.trigger and not scope:
            cache[key] = trigger_items
            return trigger_items
        received: list[dict] = []
        for src, out in node.inputs:
            source = flow.nodes[src]
            if out == "loop" and source.body:  # the batch of the loop this key is in
                mark = scope.rfind(f"{src}#")
                size = source.raw_params.get("size", 10)
                batch = scope[mark + len(src) + 1:].split("/", 1)[0]
                if mark < 0 or not isinstance(size, int) or size < 1 or not batch.isdigit():
                    return None
                whole = input_of(scope[:mark] + src, src)
                if whole is None:
                    return None
                received.extend(whole[int(batch) * size:(int(batch) + 1) * size])
                continue
            if scope + src not in done:
                continue  # not reached: it sent nothing
            found = done[scope + src]
            if found is None:
                return None
            received.extend(found.get(out) or [])
        cache[key] = received
        return received

    return [input_of(step.key, step.node) for step in steps]


def step_view(s: StepRecord, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    if outputs is None:
        outputs = _decode(s.outputs_json) if s.outputs_json else {}
    view: dict[str, Any] = {"node": s.node, "key": s.key, "status": s.status, "attempt": s.attempt,
                            "input_count": s.input_count,
                            "items": [i for items in outputs.values() if isinstance(items, list) for i in items],
                            "outputs": {k: len(v) for k, v in outputs.items() if isinstance(v, list)},
                            "started_at": s.started_at, "ended_at": s.ended_at}
    if s.truncated:
        view["truncated"] = outputs.get("_truncated")
    if s.error:
        view["error"] = s.error
    if s.origin:
        view[s.origin] = True  # "pinned" or "replayed": the node did not run
    return view


def _summary(r: sqlite3.Row) -> dict[str, Any]:
    return {"id": r["id"], "flow": r["flow_name"], "status": r["status"], "trigger": r["trigger"],
            "created_at": r["created_at"], "finished_at": r["finished_at"],
            "error": json.loads(r["error"]) if r["error"] else None, "parent_id": r["parent_id"]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
