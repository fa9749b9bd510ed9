"""Retention over a real `flowfuse serve`: old executions go in small batches in the background, and
runs.db gives the space back to the file system (incremental vacuum) while the service runs."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import httpx

from appliance.runs import EXEC_SQL, STEP_SQL, execution_row
from tests.api_helpers import Client, new_key, new_tenant, signed_in_admin, start_with_admin
from tests.conftest import poll


def _runs(data, sql: str, params=()):
    with sqlite3.connect(data / "runs.db", timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def _size_after_checkpoint(data) -> int:
    """runs.db's size once the whole WAL is in it (a checkpoint the server's writers keep busy is tried again)."""
    def checkpointed() -> bool:
        conn = sqlite3.connect(data / "runs.db", timeout=10)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        return busy == 0
    poll(checkpointed, what="a complete checkpoint of runs.db")
    return os.path.getsize(data / "runs.db")


def test_pruning_old_executions_shrinks_runs_db(tmp_path):
    srv = start_with_admin(tmp_path / "data", "serve", env={"FLOWFUSE_WORKER_RETENTION_INTERVAL_S": "0.3"})
    try:
        assert _runs(srv.data_dir, "PRAGMA auto_vacuum") == [(2,)]  # INCREMENTAL, from migration 0008
        admin = signed_in_admin(srv)
        tenant = new_tenant(admin)
        owner = Client(srv.url, new_key(admin, tenant, "owner"))
        flow = {"name": "bulky", "nodes": [{"id": "hook", "type": "webhook",
                                            "params": {"path": "bulky", "respond": "immediately"}},
                                           {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}],
                "edges": [{"from": "hook", "to": "mark"}]}
        assert owner.post(f"/tenants/{tenant}/flows", json=flow).status_code == 201
        assert owner.post(f"/tenants/{tenant}/flows/bulky/activate").status_code == 200

        tenant_id = owner.get(f"/tenants/{tenant}").json()["id"]
        # 160 finished executions of 3 days ago with two ~20 kB steps each, written as the engine's commit
        # writes them (engine runs themselves are covered elsewhere; this is about what retention does)
        then = time.time() - 3 * 86400
        with sqlite3.connect(srv.data_dir / "runs.db", timeout=10) as conn:
            for k in range(160):
                row = execution_row(tenant_id=tenant_id, flow_id=None, flow_name="bulky", flow_version=1,
                                    trigger="webhook", items=[{"k": k, "pad": "x" * 20_000}], status="succeeded",
                                    id=f"{int(then * 1000) + k:012x}0000{k:06x}")
                row.update(created_at=then, finished_at=then + 1)
                conn.execute(EXEC_SQL, row)
                conn.executemany(STEP_SQL, [(row["id"], seq, tenant_id, node, node, 1, "succeeded", 1,
                                             json.dumps({"main": [{"pad": "y" * 20_000}]}), None, None, 0,
                                             then, then + 1) for seq, node in enumerate(("hook", "mark"))])
        before = _size_after_checkpoint(srv.data_dir)
        assert before > 160 * 3 * 20_000  # input and two step outputs of ~20 kB each
        assert admin.patch(f"/tenants/{tenant}/quotas", json={"retention_days": 2}).status_code == 200

        poll(lambda: _runs(srv.data_dir, "SELECT count(*) FROM executions WHERE tenant_id=?", (tenant_id,))
             == [(0,)], timeout=30, what="the old executions to be deleted")
        assert _runs(srv.data_dir, "SELECT count(*) FROM steps WHERE tenant_id=?", (tenant_id,)) == [(0,)]
        poll(lambda: _runs(srv.data_dir, "PRAGMA freelist_count") == [(0,)], timeout=30,
             what=lambda: f"free pages {_runs(srv.data_dir, 'PRAGMA freelist_count')} to be given back")
        after = _size_after_checkpoint(srv.data_dir)
        assert after < before / 4, (before, after)
        assert _runs(srv.data_dir, "PRAGMA integrity_check") == [("ok",)]
        with httpx.Client(timeout=15) as http:  # the service ran all along and still does
            assert http.post(f"{srv.url}/hooks/{tenant}/bulky", json={}).status_code == 202
    finally:
        srv.stop()
