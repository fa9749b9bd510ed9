"""Per-tenant quotas: instance defaults in `[quotas]` of flowfuse.toml, overrides per tenant.

An override is stored in the tenant's `settings` JSON under "quotas" and set by instance admins
(PATCH /api/v1/tenants/{tenant}/quotas); 0 means unlimited. Every check here is made from memory,
so the webhook path does no SQL for it:

- the effective quotas of a tenant are cached beside the Catalog's tenant row (and dropped with it);
- executions this month are counted in memory at admission and reconciled with runs.db's `usage`
  table about once a second (see `QuotaBook.admit`);
- the worker's concurrency quota is `TenantGate`; the web process's (synchronous webhooks) and the
  webhook rate live in web/limits.py.
"""

from __future__ import annotations

import bisect
import calendar
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .catalog import Catalog, NotFound, QuotaExceeded
from .db import Database
from .identity import Invalid
from .settings import Quotas

NAMES = ("active_flows", "executions_per_month", "concurrent_executions", "webhook_requests_per_minute",
         "retention_days")


@dataclass(frozen=True)
class TenantQuotas:
    """A tenant's effective quotas (0: unlimited), and where each came from: "tenant" or "instance"."""

    active_flows: int = 0
    executions_per_month: int = 0
    concurrent_executions: int = 0
    webhook_requests_per_minute: int = 0
    retention_days: int = 0
    sources: dict[str, str] = field(default_factory=dict, compare=False)


def resolve(defaults: Quotas, tenant_settings: str | None) -> TenantQuotas:
    """The tenant's overrides over the instance defaults."""
    overrides = (json.loads(tenant_settings or "{}") or {}).get("quotas") or {}
    values = {name: overrides[name] if overrides.get(name) is not None else getattr(defaults, name) for name in NAMES}
    sources = {name: "tenant" if overrides.get(name) is not None else "instance" for name in NAMES}
    return TenantQuotas(**values, sources=sources)


def check_changes(changes: dict[str, Any]) -> dict[str, int | None]:
    """Validated overrides: known names, whole numbers of 0 or more, or null for the instance default."""
    for name, value in changes.items():
        if name not in NAMES:
            raise Invalid(name, f"not a quota; the quotas are {', '.join(NAMES)}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise Invalid(name, "must be a whole number of 0 or more (0: unlimited), or null for the instance default")
    return dict(changes)


def month_of(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


def next_month_start(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class QuotaBook:
    """The quotas of each tenant, and the monthly execution count they are checked against."""

    #: How often a tenant's monthly count is reconciled with the usage table (other processes' executions).
    REFRESH_S = 1.0

    def __init__(self, defaults: Quotas, catalog: Catalog, runs_db: Database):
        self.defaults, self.catalog, self.runs_db = defaults, catalog, runs_db
        self._limits: dict[str, tuple[dict, TenantQuotas]] = {}
        self._months: dict[str, list] = {}  # tenant id -> [month "YYYY-MM", executions counted, refreshed at]
        self._lock = threading.Lock()

    def limits(self, tenant_id: str) -> TenantQuotas:
        """The effective quotas, cached while the Catalog's cached tenant row is the same object."""
        tenant = self.catalog.tenant_by_id(tenant_id)
        cached = self._limits.get(tenant_id)
        if cached is not None and cached[0] is tenant:
            return cached[1]
        found = resolve(self.defaults, tenant.get("settings"))
        self._limits[tenant_id] = (tenant, found)
        return found

    def active_flows(self, tenant_id: str) -> int:
        try:
            return self.limits(tenant_id).active_flows
        except NotFound:
            return 0

    def concurrency(self, tenant_id: str) -> int:
        try:
            return self.limits(tenant_id).concurrent_executions
        except NotFound:  # deleted meanwhile: nothing of it will run anyway
            return 0

    # -- executions per month ------------------------------------------------------------------------------
    def admit(self, tenant_id: str, n: int = 1) -> None:
        """Count `n` new executions of the tenant, or raise QuotaExceeded if they would pass its monthly quota.

        The count lives in memory: this process's admissions are added at once, and about once a second
        it is raised to the usage table's sum for the month if that is higher (executions started by
        other processes). Neither ever counts an execution twice, so nothing is refused wrongly; another
        process's executions are seen within about a second.
        """
        limit = self.limits(tenant_id).executions_per_month
        if not limit:
            return
        now = time.time()
        month = month_of(now)
        with self._lock:
            state = self._months.get(tenant_id)
            stale = state is None or state[0] != month or now - state[2] >= self.REFRESH_S
        if stale:
            stored = self.stored_this_month(tenant_id, month)
            with self._lock:
                state = self._months.get(tenant_id)
                if state is None or state[0] != month:
                    state = self._months[tenant_id] = [month, stored, now]
                else:
                    state[1], state[2] = max(state[1], stored), now
        with self._lock:
            if state[1] + n > limit:
                slug = self.catalog.tenant_by_id(tenant_id)["slug"]
                resets = next_month_start(now)
                raise QuotaExceeded(
                    "executions_per_month",
                    f"tenant {slug!r} has used its {limit} executions for {month} (quota executions_per_month); "
                    f"new executions are refused until {time.strftime('%Y-%m-%d', time.gmtime(resets))} 00:00 UTC, "
                    f"or an instance admin can raise the quota (PATCH /api/v1/tenants/{slug}/quotas)",
                    retry_after=resets - now)
            state[1] += n

    def forget(self, tenant_id: str, n: int = 1) -> None:
        """Take back admissions that did not become executions (a dedup key that had fired before)."""
        with self._lock:
            state = self._months.get(tenant_id)
            if state is not None and state[0] == month_of(time.time()):
                state[1] = max(0, state[1] - n)

    def stored_this_month(self, tenant_id: str, month: str) -> int:
        row = self.runs_db.one("SELECT coalesce(sum(executions), 0) FROM usage WHERE tenant_id=? AND day BETWEEN ? "
                               "AND ?", (tenant_id, f"{month}-01", f"{month}-31"))
        return row[0]

    # -- reading and changing them ---------------------------------------------------------------------------
    def view(self, tenant_id: str) -> dict[str, Any]:
        """Effective quotas with their source, and what the tenant uses of those that count something."""
        q = self.limits(tenant_id)
        month = month_of(time.time())
        with self._lock:
            state = self._months.get(tenant_id)
            counted = state[1] if state is not None and state[0] == month else 0
        active = self.catalog.db.one("SELECT count(*) FROM flows WHERE tenant_id=? AND active=1", (tenant_id,))[0]
        return {"quotas": {name: {"limit": getattr(q, name), "unlimited": getattr(q, name) == 0,
                                  "source": q.sources[name]} for name in NAMES},
                "used": {"active_flows": active, "month": month,
                         "executions_this_month": max(counted, self.stored_this_month(tenant_id, month))}}

    def set_overrides(self, tenant_id: str, changes: dict[str, int | None]) -> dict[str, Any]:
        """Merge overrides into the tenant's settings (null removes one); returns all its overrides."""
        changes = check_changes(changes)

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT settings FROM tenants WHERE id=?", (tenant_id,)).fetchone()
            if row is None:
                raise NotFound(f"no tenant with id {tenant_id!r}")
            current = (json.loads(row["settings"] or "{}") or {}).get("quotas") or {}
            merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
            conn.execute("UPDATE tenants SET settings=json_set(coalesce(settings, '{}'), '$.quotas', json(?)) "
                         "WHERE id=?", (json.dumps(merged), tenant_id))
            return merged
        merged = self.catalog.db.write(write)
        self.catalog.invalidate()
        return merged


class TenantGate:
    """The worker's concurrency quota: at most N running executions per tenant.

    An execution that finds its tenant at the quota waits here, in id (= creation) order, and the
    queue message that brought it ends, so it holds none of the worker's slots (other tenants keep
    running). When one of the tenant's executions ends, `leave` hands its slot to the first waiting
    one, which then runs in the same coroutine. Waiting ids are only in memory: they are still
    'queued' in runs.db, so after a restart recovery queues them again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._waiting: dict[str, list[str]] = {}
        self._held: set[str] = set()

    def enter(self, tenant_id: str, execution_id: str, limit: int) -> bool:
        """Take a slot (True), or wait in line for one (False)."""
        with self._lock:
            running = self._running.get(tenant_id, 0)
            if not limit or running < limit:
                self._running[tenant_id] = running + 1
                return True
            if execution_id not in self._held:
                bisect.insort(self._waiting.setdefault(tenant_id, []), execution_id)
                self._held.add(execution_id)
            return False

    def leave(self, tenant_id: str, limit: int) -> str | None:
        """Give the slot back; or hand it to the first waiting execution and return that one's id."""
        with self._lock:
            waiting = self._waiting.get(tenant_id)
            running = self._running.get(tenant_id, 1) - 1
            if waiting and (not limit or running < limit):
                execution_id = waiting.pop(0)
                self._held.discard(execution_id)
                return execution_id  # the slot passes on: `running` stays as it was
            if running:
                self._running[tenant_id] = running
            else:
                self._running.pop(tenant_id, None)
            return None

    def holds(self, execution_id: str) -> bool:
        """True if the execution waits here (its queue message is consumed; it is not lost)."""
        return execution_id in self._held

    def startable(self, limit_of) -> list[str]:
        """Waiting executions that may start now because their tenant's quota was raised; they leave the line
        (the caller queues them again)."""
        found = []
        with self._lock:
            for tenant_id, waiting in self._waiting.items():
                limit = limit_of(tenant_id)
                free = len(waiting) if not limit else max(0, limit - self._running.get(tenant_id, 0))
                for execution_id in waiting[:free]:
                    self._held.discard(execution_id)
                    found.append(execution_id)
                del waiting[:free]
        return found
