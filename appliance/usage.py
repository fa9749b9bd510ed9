"""Usage metering per tenant and UTC day, for transaction pricing: executions, steps, bytes stored.

- executions: counted when created (queued, or started inline by a synchronous webhook or a sub-flow),
  the moment the quota admits them, whether they then succeed or fail; a retry or resume is not a new one;
- steps: step records written to runs.db (each attempt of a node is one);
- bytes: the size of the step outputs written (the JSON stored per step).

`RunStore` reports what it writes to `UsageMeter.add`, which sums it in memory; one upsert job per
group commit writes the sums to the `usage` table of runs.db. The job is queued right behind the
writes it counts, so it rides in their transaction: no transaction of its own, and a crash loses
at most the counts of a batch that overflowed `storage.group_commit_max` or of writes made from
another thread a moment before (the cron scheduler's), never doubles one.

The same job keeps the dashboard's `outcomes` rollup (runs 0006) for executions inserted already
finished: a synchronous webhook's whole run is one insert, and a trigger per row cost a sixth of
SQLite's work on that path (runs 0009 dropped it; `UsageMeter.finished`). Status changes of stored
executions still go through the UPDATE trigger.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any

from .db import Database
from .identity import Invalid

log = logging.getLogger("flowfuse.usage")
COLUMNS = ("executions", "steps", "bytes")
UPSERT = ("INSERT INTO usage (tenant_id, day, executions, steps, bytes) VALUES (?,?,?,?,?) "
          "ON CONFLICT (tenant_id, day) DO UPDATE SET executions=executions+excluded.executions, "
          "steps=steps+excluded.steps, bytes=bytes+excluded.bytes")
OUTCOMES_UPSERT = ("INSERT INTO outcomes (tenant_id, hour, succeeded, failed, cancelled) VALUES (?,?,?,?,?) "
                   "ON CONFLICT (tenant_id, hour) DO UPDATE SET succeeded=succeeded+excluded.succeeded, "
                   "failed=failed+excluded.failed, cancelled=cancelled+excluded.cancelled")
OUTCOMES = ("succeeded", "failed", "cancelled")


class UsageMeter:
    """Sums of what RunStore wrote, per (tenant, day), on their way to the `usage` table, and
    finished executions per (tenant, hour of creation) on their way to `outcomes`.

    `add` only adds in memory and, if no upsert job is queued, queues one on the database's writer;
    that job takes every sum gathered by the time its transaction runs. Sums it took stay held
    until its commit succeeds, so a rolled-back transaction (or one retried job by job) writes them
    again rather than losing them.
    """

    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        #: (UPSERT or OUTCOMES_UPSERT, tenant_id, day or hour) -> its three counts
        self._pending: dict[tuple[str, str, Any], list[int]] = {}
        self._taken: dict[tuple[str, str, Any], list[int]] = {}
        self._queued = False
        self._day, self._day_ends = "", 0.0

    def add(self, tenant_id: str, executions: int, steps: int, nbytes: int) -> None:
        now = time.time()
        if now >= self._day_ends:
            self._day = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day_ends = (now // 86400 + 1) * 86400
        self._sum((UPSERT, tenant_id, self._day), executions, steps, nbytes)

    def finished(self, tenant_id: str, created_at: float, status: str, n: int = 1) -> None:
        """An execution inserted with a final status (n=-1 takes back one whose write failed)."""
        self._sum((OUTCOMES_UPSERT, tenant_id, int(created_at // 3600)), *(n if s == status else 0 for s in OUTCOMES))

    def _sum(self, key: tuple[str, str, Any], a: int, b: int, c: int) -> None:
        with self._lock:
            counts = self._pending.get(key)
            if counts is None:
                self._pending[key] = [a, b, c]
            else:
                counts[0] += a
                counts[1] += b
                counts[2] += c
            if self._queued:
                return
            self._queued = True
        self._queue()

    def _queue(self) -> None:
        try:
            self.db.writer.submit(self._write).add_done_callback(self._written)
        except RuntimeError:  # the writer is closing: what it has not committed is not counted either
            with self._lock:
                self._queued = False

    def _write(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            for key, counts in self._pending.items():
                held = self._taken.setdefault(key, [0, 0, 0])
                for i in range(3):
                    held[i] += counts[i]
            self._pending = {}
            rows: dict[str, list[tuple]] = {}
            for (sql, tenant_id, period), counts in self._taken.items():
                if any(counts):
                    rows.setdefault(sql, []).append((tenant_id, period, *counts))
        for sql, params in rows.items():
            conn.executemany(sql, params)

    def _written(self, future: Future) -> None:
        error = future.exception()
        if error is not None:
            log.warning("usage counters not written (kept for the next commit): %s", error)
        with self._lock:
            if error is None:
                self._taken = {}
            again = self._queued = error is None and bool(self._pending)
        if again:
            self._queue()


def period(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
    """The days from `start` to `end` (YYYY-MM-DD, inclusive); by default this month up to today (UTC)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    first, last = _day(start, "from", today.replace(day=1)), _day(end, "to", today)
    if last < first:
        raise Invalid("to", f"{last} is before from ({first})")
    return first, last


def _day(value: str | None, name: str, default: dt.date) -> dt.date:
    if not value:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Invalid(name, f"{value!r} is not a date; use YYYY-MM-DD") from None


def report(db: Database, tenant_id: str, start: dt.date, end: dt.date) -> dict[str, Any]:
    """Per-day rows (days with any usage, oldest first) and totals, `start` to `end` inclusive."""
    rows = [dict(r) for r in db.query("SELECT day, executions, steps, bytes FROM usage WHERE tenant_id=? AND "
                                      "day BETWEEN ? AND ? ORDER BY day", (tenant_id, start.isoformat(),
                                                                           end.isoformat()))]
    totals = {c: sum(r[c] for r in rows) for c in COLUMNS}
    return {"from": start.isoformat(), "to": end.isoformat(), "days": rows, "totals": totals}


def to_csv(tenant_slug: str, found: dict[str, Any]) -> str:
    """One line per day with a header row; the tenant in every line, so exports of tenants can be joined."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("tenant", "day", *COLUMNS))
    for row in found["days"]:
        writer.writerow((tenant_slug, row["day"], *(row[c] for c in COLUMNS)))
    return out.getvalue()
