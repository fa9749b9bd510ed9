"""runs.db: executions and their steps. Implements the engine's ExecutionStore port.

Ids are time-ordered (12 hex digits of milliseconds, then random) so lists page by keyset:
`WHERE id < ? ORDER BY id DESC LIMIT ?`, served by the (tenant_id, ...) indexes.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from engine import FAILED, FINAL, QUEUED, RETRY, RUNNING, WAITING, ExecutionRef, Finish, StepRecord

from .db import Database
from .usage import UsageMeter

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

STEP_SQL = ("INSERT INTO steps (execution_id, seq, tenant_id, key, node, attempt, status, input_count, output, "
            "error, resume_at, truncated, started_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
EXEC_SQL = ("INSERT INTO executions (id, tenant_id, flow_id, flow_name, flow_version, status, trigger, input, meta, "
            "output, error, parent_id, dedup_key, resume_at, owner, created_at, finished_at, updated_at) VALUES "
            "(:id, :tenant_id, :flow_id, :flow_name, :flow_version, :status, :trigger, :input, :meta, :output, :error, "
            ":parent_id, :dedup_key, :resume_at, :owner, :created_at, :finished_at, :created_at)")


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


def _step_params(ref: ExecutionRef, s: StepRecord) -> tuple:
    return (ref.id, s.seq, ref.tenant_id, s.key, s.node, s.attempt, s.status, s.input_count, s.outputs_json, s.error,
            s.resume_at, int(s.truncated), s.started_at, s.ended_at)


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

    # -- the engine port -------------------------------------------------------------------------
    async def commit(self, ref: ExecutionRef, steps: list[StepRecord], finish: Finish | None) -> None:
        """Write a run's new steps (and how it ended) in the next group commit.

        The execution row and the steps go as rows (batched across runs by the writer); the status
        change of an already stored execution is an UPDATE after them.
        """
        if finish is None and ref.persisted and ref.claim is None:  # the hot path: steps of a running run
            written = self.db.awrite(None, [(STEP_SQL, [_step_params(ref, s) for s in steps])])
            counted = self._count(ref.tenant_id, 0, steps)
            try:
                await written
            except Exception:
                self.meter.add(ref.tenant_id, *(-n for n in counted))  # nothing of it was stored
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
                                 "updated_at=? WHERE id=? AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                                 (*final, now, ref.id))
        rows = []
        if row is not None:
            rows.append((EXEC_SQL, [row]))
        if steps:
            rows.append((STEP_SQL, [_step_params(ref, s) for s in steps]))
        fn = update
        if claim is not None:
            def fn(conn: sqlite3.Connection) -> None:
                claim(conn)
                if update is not None:
                    update(conn)
        written = self.db.awrite(fn, rows)
        counted = self._count(ref.tenant_id, 0 if ref.persisted else 1, steps)  # an inline run is created here
        try:
            await written
        except Exception:
            self.meter.add(ref.tenant_id, *(-n for n in counted))
            raise
        ref.persisted = True
        ref.claim = None

    def _count(self, tenant_id: str, executions: int, steps: list[StepRecord]) -> tuple[int, int, int]:
        """Meter a write (see appliance.usage): executions created, steps and their output bytes."""
        nbytes = 0
        for s in steps:
            if s.outputs_json:
                nbytes += len(s.outputs_json)
        self.meter.add(tenant_id, executions, len(steps), nbytes)
        return executions, len(steps), nbytes

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
                            truncated=bool(r["truncated"]), seq=r["seq"])
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
        out.update(input=loaded.items, output=_decode(r["output"]) if r["output"] else None,
                   steps=[step_view(s) for s in loaded.steps], flow_version=r["flow_version"])
        return out


def step_view(s: StepRecord) -> dict[str, Any]:
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
