"""flowfuse.db: tenants, flows and their versions, tenant variables.

Lookups on the hot path (a webhook's flow, a compiled flow version, a tenant's variables) are
served from memory. The cache is dropped whenever `PRAGMA data_version` says another connection
(another process, e.g. the CLI importing a flow) committed to flowfuse.db since the last look.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from engine import Flow, FlowInvalid, Registry, ValidationError, compile_flow

from .db import Database

DEFAULT_TENANT = "default"


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


class QuotaExceeded(Conflict):
    """A tenant quota refuses this. `quota` names it; `retry_after` is the seconds until it frees, if it does."""

    def __init__(self, quota: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.quota, self.retry_after = quota, retry_after


@dataclass(frozen=True)
class FlowRow:
    id: str
    tenant_id: str
    name: str
    version: int
    active: bool
    trigger_type: str
    webhook_path: str | None
    webhook_method: str | None
    definition: str
    updated_at: float

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.definition)


def _flow_row(r: sqlite3.Row) -> FlowRow:
    return FlowRow(r["id"], r["tenant_id"], r["name"], r["version"], bool(r["active"]), r["trigger_type"],
                   r["webhook_path"], r["webhook_method"], r["definition"], r["updated_at"])


class Catalog:
    def __init__(self, db: Database, registry: Registry):
        self.db = db
        self.registry = registry
        self._lock = threading.Lock()
        self._seen_version: int | None = None
        self._checked_at = 0.0
        self._routes: dict[tuple[str, str], FlowRow] | None = None
        self._compiled: dict[tuple[str, int], Flow] = {}
        self._tenants: dict[str, dict[str, Any]] = {}  # by slug and by id
        self._vars: dict[str, dict[str, Any]] = {}
        #: tenant id -> its active_flows quota (0: unlimited); set by the runtime (see appliance.quotas).
        self.active_flow_quota: Callable[[str], int] = lambda tenant_id: 0

    # -- cache -------------------------------------------------------------------------------------------
    def _fresh(self) -> None:
        """Drop the cache if another connection committed to flowfuse.db since the last look.

        Looked up at most every 5 ms: one webhook request asks several times, SQLite once.
        """
        now = time.monotonic()
        if now - self._checked_at < 0.005:
            return
        self._checked_at = now
        version = self.db.read().execute("PRAGMA data_version").fetchone()[0]
        if version != self._seen_version:
            self.invalidate()
            self._seen_version = version

    def invalidate(self) -> None:
        with self._lock:
            self._routes = None
            self._tenants = {}
            self._vars = {}

    # -- tenants -------------------------------------------------------------------------------------------
    def ensure_tenant(self, slug: str = DEFAULT_TENANT, name: str | None = None) -> str:
        def write(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT id FROM tenants WHERE slug=?", (slug,)).fetchone()
            if row:
                return row["id"]
            tid = "t_" + secrets.token_hex(6)
            conn.execute("INSERT INTO tenants (id, slug, name, created_at) VALUES (?,?,?,?)",
                         (tid, slug, name or slug.capitalize(), time.time()))
            return tid
        tid = self.db.write(write)
        self.invalidate()
        return tid

    def tenant(self, slug: str) -> dict[str, Any]:
        return self._tenant("slug", slug, f"no tenant {slug!r}; `flowfuse init` creates the tenant 'default'")

    def tenant_by_id(self, tenant_id: str) -> dict[str, Any]:
        return self._tenant("id", tenant_id, f"no tenant with id {tenant_id!r}")

    def _tenant(self, column: str, value: str, missing: str) -> dict[str, Any]:
        """A tenant row from the cache (slugs and ids never collide: ids start with 't_')."""
        self._fresh()
        found = self._tenants.get(value)
        if found is None:
            row = self.db.one(f"SELECT * FROM tenants WHERE {column}=?", (value,))
            if row is None:
                raise NotFound(missing)
            found = self._tenants[value] = dict(row)
        return found

    def variables(self, tenant_id: str) -> dict[str, Any]:
        self._fresh()
        found = self._vars.get(tenant_id)
        if found is None:
            found = {r["name"]: json.loads(r["value"]) for r in
                     self.db.query("SELECT name, value FROM variables WHERE tenant_id=?", (tenant_id,))}
            self._vars[tenant_id] = found
        return found

    def set_variable(self, tenant_id: str, name: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO variables VALUES (?,?,?)", (tenant_id, name, json.dumps(value)))
        self.invalidate()

    def delete_variable(self, tenant_id: str, name: str) -> bool:
        deleted = self.db.execute("DELETE FROM variables WHERE tenant_id=? AND name=?", (tenant_id, name)) > 0
        self.invalidate()
        return deleted

    # -- flows -------------------------------------------------------------------------------------------------
    def validate(self, doc: Any) -> Flow:
        return compile_flow(doc, self.registry)

    def save_flow(self, tenant_id: str, doc: Any, activate: bool | None = None) -> FlowRow:
        """Validate and store a flow (a new version if it exists); raises FlowInvalid or Conflict."""
        flow = self.validate(doc)
        trigger = flow.trigger
        path = method = None
        if trigger.type == "webhook":
            path, method = trigger.raw_params["path"], trigger.raw_params.get("method", "POST")
        definition = json.dumps(doc, indent=2, ensure_ascii=False)
        quota = self.active_flow_quota(tenant_id)

        def write(conn: sqlite3.Connection) -> str:
            now = time.time()
            row = conn.execute("SELECT id, version, active FROM flows WHERE tenant_id=? AND name=?",
                               (tenant_id, flow.name)).fetchone()
            active = bool(row["active"]) if row and activate is None else bool(activate)
            if active and not (row and row["active"]):
                self._check_active_quota(conn, tenant_id, quota)
            if active and path:
                _check_route(conn, tenant_id, path, row["id"] if row else None)
            if row is None:
                fid, version = "f_" + secrets.token_hex(6), 1
                conn.execute("INSERT INTO flows (id, tenant_id, name, version, definition, active, trigger_type, "
                             "webhook_path, webhook_method, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             (fid, tenant_id, flow.name, version, definition, int(active), trigger.type, path,
                              method, now, now))
            else:
                fid, version = row["id"], row["version"] + 1
                conn.execute("UPDATE flows SET version=?, definition=?, active=?, trigger_type=?, webhook_path=?, "
                             "webhook_method=?, updated_at=? WHERE id=?",
                             (version, definition, int(active), trigger.type, path, method, now, fid))
            conn.execute("INSERT INTO flow_versions VALUES (?,?,?,?,?)", (fid, tenant_id, version, definition, now))
            return fid
        fid = self.db.write(write)
        self.invalidate()
        return self.flow_by_id(fid)

    def set_active(self, tenant_id: str, name: str, active: bool) -> FlowRow:
        row = self.flow(tenant_id, name)
        quota = self.active_flow_quota(tenant_id)

        def write(conn: sqlite3.Connection) -> None:
            if active and not conn.execute("SELECT active FROM flows WHERE id=?", (row.id,)).fetchone()["active"]:
                self._check_active_quota(conn, tenant_id, quota)
            if active and row.webhook_path:
                _check_route(conn, tenant_id, row.webhook_path, row.id)
            conn.execute("UPDATE flows SET active=?, updated_at=? WHERE id=?", (int(active), time.time(), row.id))
        self.db.write(write)
        self.invalidate()
        return self.flow_by_id(row.id)

    def _check_active_quota(self, conn: sqlite3.Connection, tenant_id: str, quota: int) -> None:
        """Refuse to activate one more flow of a tenant that has `quota` active ones (0: unlimited)."""
        if not quota:
            return
        active = conn.execute("SELECT count(*) FROM flows WHERE tenant_id=? AND active=1", (tenant_id,)).fetchone()[0]
        if active >= quota:
            slug = self.tenant_by_id(tenant_id)["slug"]
            raise QuotaExceeded("active_flows", f"tenant {slug!r} already has {active} active flows, its quota "
                                f"(active_flows = {quota}); deactivate one first, or ask an instance admin to "
                                f"raise the quota (PATCH /api/v1/tenants/{slug}/quotas)")

    def delete_flow(self, tenant_id: str, name: str) -> None:
        row = self.flow(tenant_id, name)
        self.db.execute("DELETE FROM flows WHERE id=?", (row.id,))
        self.invalidate()

    def flow(self, tenant_id: str, name: str) -> FlowRow:
        row = self.db.one("SELECT * FROM flows WHERE tenant_id=? AND name=?", (tenant_id, name))
        if row is None:
            raise NotFound(f"no flow named {name!r}; `flowfuse flow list` shows the flows")
        return _flow_row(row)

    def flow_by_id(self, flow_id: str) -> FlowRow:
        row = self.db.one("SELECT * FROM flows WHERE id=?", (flow_id,))
        if row is None:
            raise NotFound(f"no flow with id {flow_id!r}")
        return _flow_row(row)

    def flows(self, tenant_id: str) -> list[FlowRow]:
        return [_flow_row(r) for r in self.db.query("SELECT * FROM flows WHERE tenant_id=? ORDER BY name",
                                                    (tenant_id,))]

    def active_schedules(self) -> list[FlowRow]:
        return [_flow_row(r) for r in self.db.query(
            "SELECT f.* FROM flows f JOIN tenants t ON t.id = f.tenant_id "
            "WHERE f.active=1 AND f.trigger_type='schedule' AND t.status='active'")]

    def compiled(self, flow_id: str, version: int) -> Flow:
        """The compiled flow of one saved version (versions never change, so this is cached for good)."""
        key = (flow_id, version)
        found = self._compiled.get(key)
        if found is None:
            row = self.db.one("SELECT definition FROM flow_versions WHERE flow_id=? AND version=?", key)
            if row is None:
                raise NotFound(f"flow {flow_id} has no version {version}")
            found = self._compiled[key] = compile_flow(json.loads(row["definition"]), self.registry)
        return found

    def route(self, tenant_slug: str, path: str) -> FlowRow | None:
        """The active flow whose webhook trigger listens on this tenant and path, from memory."""
        self._fresh()
        routes = self._routes
        if routes is None:
            with self._lock:
                routes = {(r["slug"], r["webhook_path"]): _flow_row(r) for r in self.db.query(
                    "SELECT f.*, t.slug FROM flows f JOIN tenants t ON t.id = f.tenant_id "
                    "WHERE f.active=1 AND f.webhook_path IS NOT NULL AND t.status='active'")}
                self._routes = routes
        return routes.get((tenant_slug, path))

    # -- pinned data (test runs) -------------------------------------------------------------------------------
    def pins(self, flow_id: str) -> dict[str, list[dict]]:
        """The flow's pinned output items by node id (see schema 0005_pins)."""
        return {r["node_id"]: json.loads(r["items"]) for r in
                self.db.query("SELECT node_id, items FROM pins WHERE flow_id=? ORDER BY node_id", (flow_id,))}

    def set_pin(self, flow: FlowRow, node_id: str, items_json: str) -> None:
        self.db.execute("INSERT INTO pins VALUES (?,?,?,?,?) ON CONFLICT (flow_id, node_id) DO UPDATE SET "
                        "items=excluded.items, updated_at=excluded.updated_at",
                        (flow.id, flow.tenant_id, node_id, items_json, time.time()))

    def delete_pin(self, flow: FlowRow, node_id: str) -> bool:
        return self.db.execute("DELETE FROM pins WHERE flow_id=? AND node_id=?", (flow.id, node_id)) > 0

    # -- the console's flows list: pages of 50 at 10,000 flows -----------------------------------------------
    def flows_page(self, tenant_id: str, *, query: str = "", tag: str = "", after: str = "",
                   limit: int = 50) -> list[FlowRow]:
        """The tenant's flows by name, the page after the name `after` (keyset), whose name contains
        `query` (any case) and that carry `tag`: a range of the (tenant_id, name) index, or of
        flow_tags's (tenant_id, tag, name) with a tag, never a sort of the whole table."""
        sql, params = _flow_filter(tenant_id, query, tag)
        rows = self.db.query(f"{sql} AND {'t' if tag else 'f'}.name > ? ORDER BY {'t' if tag else 'f'}.name LIMIT ?",
                             (*params, after, limit))
        return [_flow_row(r) for r in rows]

    def flow_count(self, tenant_id: str, *, query: str = "", tag: str = "") -> int:
        sql, params = _flow_filter(tenant_id, query, tag)
        return self.db.one(sql.replace("SELECT f.*", "SELECT count(*)", 1), params)[0]

    def tags(self, tenant_id: str, limit: int = 200) -> list[str]:
        """The tenant's flow tags, A to Z (the first `limit`)."""
        return [r[0] for r in self.db.query("SELECT DISTINCT tag FROM flow_tags WHERE tenant_id=? ORDER BY tag LIMIT ?",
                                            (tenant_id, limit))]


def _flow_filter(tenant_id: str, query: str, tag: str) -> tuple[str, list[Any]]:
    """SELECT f.* of a tenant's flows filtered by a name substring (LIKE, its wildcards escaped) and a tag."""
    if tag:
        sql, params = ("SELECT f.* FROM flow_tags t JOIN flows f ON f.id = t.flow_id WHERE t.tenant_id=? AND t.tag=?",
                       [tenant_id, tag])
    else:
        sql, params = "SELECT f.* FROM flows f WHERE f.tenant_id=?", [tenant_id]
    if query:
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        sql += " AND f.name LIKE ? ESCAPE '\\'"
        params.append(f"%{escaped}%")
    return sql, params


def _check_route(conn: sqlite3.Connection, tenant_id: str, path: str, flow_id: str | None) -> None:
    other = conn.execute("SELECT name FROM flows WHERE tenant_id=? AND webhook_path=? AND active=1 AND id IS NOT ?",
                         (tenant_id, path, flow_id)).fetchone()
    if other:
        raise Conflict(f"the active flow {other['name']!r} already listens on webhook path {path!r}; "
                       "deactivate it or change the path")


__all__ = ["Catalog", "Conflict", "DEFAULT_TENANT", "FlowInvalid", "FlowRow", "NotFound", "QuotaExceeded",
           "ValidationError"]
