"""flowfuse.db: tenants, flows and their versions, tenant variables.

Lookups on the hot path (a webhook's flow, a compiled flow version, a tenant's variables) are
served from memory. The cache is dropped whenever `PRAGMA data_version` says another connection
(another process, e.g. the CLI importing a flow) committed to flowfuse.db since the last look.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable

from connectors import openapi
from engine import Flow, FlowInvalid, Registry, ValidationError, compile_flow
from engine.nodes import NodeType

from .db import Database

log = logging.getLogger("flowfuse.catalog")

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
        #: Imported connectors (see "imported connectors" below): tenant id -> a stamp of its imports,
        #: None until looked up again after a change; each tenant's registry overlay with its stamp; and
        #: the compiled versions that use imported node types, kept apart from `_compiled` (see compiled).
        self._imports: dict[str, str] | None = None
        self._overlays: dict[str, tuple[str, TenantRegistry]] = {}
        self._compiled_imported: dict[tuple[str, int], tuple[str, str, Flow]] = {}

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
            self._imports = None

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
    def validate(self, doc: Any, tenant_id: str | None = None) -> Flow:
        """Compile a flow; with `tenant_id`, the tenant's imported node types are known too."""
        return compile_flow(doc, self.registry_for(tenant_id))

    def save_flow(self, tenant_id: str, doc: Any, activate: bool | None = None) -> FlowRow:
        """Validate and store a flow (a new version if it exists); raises FlowInvalid or Conflict."""
        flow = self.validate(doc, tenant_id)
        trigger = flow.trigger
        path = method = None
        if trigger.spec.trigger_kind == "webhook":  # the core webhook and every connector's webhook trigger
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

    def active_triggers(self, kinds: tuple[str, ...]) -> list[FlowRow]:
        """Active flows of active tenants whose trigger is of one of these kinds (polling, event), by
        the registry: the stored trigger_type is the node type, which says nothing of its kind."""
        types = [name for name in self.registry.names() if self.registry.get(name).trigger_kind in kinds]
        if not types:
            return []
        marks = ",".join("?" * len(types))
        return [_flow_row(r) for r in self.db.query(
            "SELECT f.* FROM flows f JOIN tenants t ON t.id = f.tenant_id "
            f"WHERE f.active=1 AND t.status='active' AND f.trigger_type IN ({marks}) ORDER BY f.id", types)]

    def compiled(self, flow_id: str, version: int) -> Flow:
        """The compiled flow of one saved version (versions never change, so this is cached for good)."""
        key = (flow_id, version)
        found = self._compiled.get(key)
        if found is None:
            found = self._compile_version(key)
        return found

    def _compile_version(self, key: tuple[str, int]) -> Flow:
        """A version not in `_compiled`: one that uses imported node types is kept apart, checked
        against its tenant's imports each time (they may change), so that the lookup of every other
        flow stays one dict hit."""
        held = self._compiled_imported.get(key)
        if held is not None and self._import_stamp(held[0]) == held[1]:
            return held[2]
        row = self.db.one("SELECT definition, tenant_id FROM flow_versions WHERE flow_id=? AND version=?", key)
        if row is None:
            raise NotFound(f"flow {key[0]} has no version {key[1]}")
        registry = self.registry_for(row["tenant_id"])
        found = compile_flow(json.loads(row["definition"]), registry)
        if registry is not self.registry and any(n.spec is not self.registry.get(n.type) for n in found.nodes.values()):
            self._compiled_imported[key] = (row["tenant_id"], self._import_stamp(row["tenant_id"]) or "", found)
        else:
            self._compiled[key] = found
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

    # -- imported connectors (OpenAPI documents, per tenant; see connectors/openapi.py) -------------------------
    def registry_for(self, tenant_id: str | None) -> Registry:
        """The node types a tenant's flows may use: the global registry, or for a tenant that imported
        connectors, an overlay of their node types on it (built once per change of its imports)."""
        if tenant_id is None:
            return self.registry
        stamp = self._import_stamp(tenant_id)
        if stamp is None:
            return self.registry
        held = self._overlays.get(tenant_id)
        if held is not None and held[0] == stamp:
            return held[1]
        overlay = TenantRegistry(self.registry)
        for row in self.db.query("SELECT name, source, spec FROM imported_connectors WHERE tenant_id=? ORDER BY name",
                                 (tenant_id,)):
            try:
                types = openapi.parse(row["spec"], row["name"], row["source"]).node_types()
            except openapi.SpecError as exc:  # stored valid; only a change of the parser can get here
                log.error("imported connector %r of tenant %s no longer parses: %s", row["name"], tenant_id, exc)
                continue
            overlay.source = f"openapi:{row['name']}"
            for node_type in types:
                if node_type.type not in overlay:
                    overlay.add(node_type)
        with self._lock:
            self._overlays[tenant_id] = (stamp, overlay)
        return overlay

    def _import_stamp(self, tenant_id: str) -> str | None:
        """What the tenant's imports are now (names and times), or None for a tenant without any:
        one query for all tenants after each change to flowfuse.db, then a dict lookup."""
        self._fresh()
        imports = self._imports
        if imports is None:
            imports = {r[0]: r[1] for r in self.db.query(
                "SELECT tenant_id, group_concat(name || '@' || created_at, ',') FROM "
                "(SELECT tenant_id, name, created_at FROM imported_connectors ORDER BY tenant_id, name) "
                "GROUP BY tenant_id")}
            self._imports = imports
        return imports.get(tenant_id)

    def import_connector(self, tenant_id: str, name: str, document: str | bytes, source: str) -> dict[str, Any]:
        """Store an OpenAPI document as the tenant's connector `name`; raises openapi.SpecError for a
        document that cannot be imported, Conflict for a name in use."""
        connector = openapi.parse(document, name, source)
        taken = [t for t in self.registry.names() if t.startswith(name + ".")]
        if taken:
            raise Conflict(f"the name {name!r} belongs to the installed connector whose actions are "
                           f"{', '.join(taken[:3])}{'...' if len(taken) > 3 else ''}; import under another name")

        def write(conn: sqlite3.Connection) -> float:
            if conn.execute("SELECT 1 FROM imported_connectors WHERE tenant_id=? AND name=?",
                            (tenant_id, name)).fetchone():
                raise Conflict(f"this tenant already has a connector named {name!r}; delete it first, or import "
                               "under another name")
            now = time.time()
            conn.execute("INSERT INTO imported_connectors (tenant_id, name, source, spec, created_at) "
                         "VALUES (?,?,?,?,?)", (tenant_id, name, source, connector.document, now))
            return now
        created_at = self.db.write(write)
        self.invalidate()
        return _connector_view(name, source, created_at, connector.title, connector.node_types())

    def connectors(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's imported connectors with their node types (from the overlay: no parsing here)."""
        registry = self.registry_for(tenant_id)
        rows = self.db.query("SELECT name, source, created_at, json_extract(spec, '$.info.title') AS title "
                             "FROM imported_connectors WHERE tenant_id=? ORDER BY name", (tenant_id,))
        return [_connector_view(r["name"], r["source"], r["created_at"], r["title"] or r["name"],
                                [registry.get(t) for t in registry.names() if t.startswith(r["name"] + ".")])
                for r in rows]

    def delete_connector(self, tenant_id: str, name: str) -> None:
        """Remove an imported connector; Conflict while a flow's latest version uses one of its actions."""
        prefix = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%"

        def write(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM imported_connectors WHERE tenant_id=? AND name=?",
                                (tenant_id, name)).fetchone():
                raise NotFound(f"no imported connector named {name!r}; GET .../connectors lists them")
            users = [r[0] for r in conn.execute(
                "SELECT f.name FROM flows f WHERE f.tenant_id=? AND EXISTS (SELECT 1 FROM json_each(f.definition, "
                "'$.nodes') n WHERE json_extract(n.value, '$.type') LIKE ? ESCAPE '\\') ORDER BY f.name LIMIT 6",
                (tenant_id, prefix))]
            if users:
                raise Conflict(f"the flows {', '.join(repr(u) for u in users[:5])} use actions of connector {name!r}; "
                               "change or delete them first")
            conn.execute("DELETE FROM imported_connectors WHERE tenant_id=? AND name=?", (tenant_id, name))
        self.db.write(write)
        self.invalidate()

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


class TenantRegistry(Registry):
    """A tenant's view of the node types: its imported ones over the global registry, whose credential
    types, sources and broken plugins it shares."""

    def __init__(self, base: Registry):
        super().__init__()
        self.base = base
        self.sources = ChainMap({}, base.sources)  # type: ignore[assignment]
        self.credential_sources, self.broken = base.credential_sources, base.broken

    def add(self, node_type: NodeType) -> NodeType:
        if node_type.type in self.base:
            raise ValueError(f"node type {node_type.type!r} is registered twice")
        return super().add(node_type)

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name) or self.base.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._types or name in self.base

    def names(self) -> list[str]:
        return sorted({*self._types, *self.base.names()})

    def own_names(self) -> list[str]:
        """The imported node types only."""
        return sorted(self._types)

    def add_credential_type(self, credential_type: Any) -> Any:
        raise ValueError("imported connectors use the global credential types")

    def credential_type(self, name: str) -> Any:
        return self.base.credential_type(name)

    def credential_type_names(self) -> list[str]:
        return self.base.credential_type_names()


def _connector_view(name: str, source: str, created_at: float, title: str, types: list[NodeType]) -> dict[str, Any]:
    return {"name": name, "title": title, "source": source, "created_at": created_at,
            "node_types": [{"type": t.type, "label": t.label, "credential_types": list(t.credential_types)}
                           for t in types]}


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
           "TenantRegistry", "ValidationError"]
