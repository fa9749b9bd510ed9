"""Usage metering per tenant and UTC day, for transaction pricing: executions, steps, bytes stored.

- executions: counted when created (queued, or started inline by a synchronous webhook or a sub-flow),
  the moment the quota admits them, whether they then succeed or fail; a retry or resume is not a new one;
- steps: step records written to runs.db (each attempt of a node is one);
- bytes: the size of the step outputs written (the JSON stored per step).

`RunStore` reports what it writes to `UsageMeter.add` (a deque append: no lock, no job), and the
meter sums it into the `usage` table of runs.db at the end of every write transaction of runs.db, as
its commit hook (see `Database.hooks`). Counts reported before a write is queued ride in that write's
own transaction, as the engine's are; those reported after (the cron scheduler's, a moment after its
insert) ride in the next one, or in the one the writer runs when it closes. Sums stay held until
their transaction commits, so a rolled-back transaction (or one retried write by write) writes them
again rather than losing them; a crash loses at most counts reported since the last commit.

The same hook keeps the dashboard's `outcomes` rollup (runs 0006) for executions inserted already
finished: a synchronous webhook's whole run is one insert, and a trigger per row cost a sixth of
SQLite's work on that path (runs 0009 dropped it; `UsageMeter.finished`). Status changes of stored
executions still go through the UPDATE trigger.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import logging
import sqlite3
import time
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

    `add` and `finished` only append to a deque (from any thread); `write`, the commit hook that the
    writer of runs.db calls inside each transaction, sums what was appended and upserts it."""

    def __init__(self, db: Database):
        self._usage: collections.deque[tuple[str, int, int, int]] = collections.deque()
        self._outcomes: collections.deque[tuple[str, int, str, int]] = collections.deque()
        #: (UPSERT or OUTCOMES_UPSERT, tenant_id, day or hour) -> its three counts, until committed
        self._taken: dict[tuple[str, str, Any], list[int]] = {}
        self._day, self._day_ends = "", 0.0
        db.hooks.append(self)

    def add(self, tenant_id: str, executions: int, steps: int, nbytes: int) -> None:
        self._usage.append((tenant_id, executions, steps, nbytes))

    def finished(self, tenant_id: str, created_at: float, status: str, n: int = 1) -> None:
        """An execution inserted with a final status (n=-1 takes back one whose write failed)."""
        self._outcomes.append((tenant_id, int(created_at // 3600), status, n))

    def write(self, conn: sqlite3.Connection) -> None:
        usage, outcomes, taken = self._usage, self._outcomes, self._taken
        if usage:
            now = time.time()
            if now >= self._day_ends:
                self._day = time.strftime("%Y-%m-%d", time.gmtime(now))
                self._day_ends = (now // 86400 + 1) * 86400
            day = self._day
            for _ in range(len(usage)):  # popleft is atomic: what is appended meanwhile waits for the next one
                tenant_id, executions, steps, nbytes = usage.popleft()
                counts = taken.get((UPSERT, tenant_id, day))
                if counts is None:
                    taken[(UPSERT, tenant_id, day)] = [executions, steps, nbytes]
                else:
                    counts[0] += executions
                    counts[1] += steps
                    counts[2] += nbytes
        for _ in range(len(outcomes)):
            tenant_id, hour, status, n = outcomes.popleft()
            taken.setdefault((OUTCOMES_UPSERT, tenant_id, hour), [0, 0, 0])[OUTCOMES.index(status)] += n
        rows: dict[str, list[tuple]] = {}
        for (sql, tenant_id, period), counts in taken.items():
            if any(counts):
                rows.setdefault(sql, []).append((tenant_id, period, *counts))
        for sql, params in rows.items():
            conn.executemany(sql, params)

    def committed(self) -> None:
        self._taken = {}


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
