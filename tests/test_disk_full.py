"""A full disk, simulated by capping runs.db's pages (FLOWFUSE_TEST_MAX_PAGES, PRAGMA max_page_count, so
SQLite fails with SQLITE_FULL as on a full file system), over a real `flowfuse serve`: new executions fail
with a clear error, the console shows an alert, nothing stored is damaged, and it recovers with space."""

from __future__ import annotations

import sqlite3

import httpx

from tests.api_helpers import ADMIN, PASSWORD
from tests.conftest import Server, flowfuse, free_port

FLOW = {"name": "hold", "nodes": [{"id": "hook", "type": "webhook",
                                   "params": {"path": "hold", "respond": "immediately"}},
                                  {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}],
        "edges": [{"from": "hook", "to": "mark"}]}


def _pages(data) -> int:
    with sqlite3.connect(data / "runs.db") as conn:
        return conn.execute("PRAGMA page_count").fetchone()[0]


def test_full_disk_fails_new_executions_clearly_and_recovers(tmp_path):
    data = tmp_path / "data"
    made = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN, env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    limit = _pages(data) + 60  # room for a few executions of ~30 kB
    srv = Server(data, free_port(), env={"FLOWFUSE_TEST_MAX_PAGES": f"runs.db={limit}"}).start("serve")
    try:
        srv.import_flow(FLOW)
        accepted, refused = [], None
        with httpx.Client(base_url=srv.url, timeout=15) as http:
            for i in range(200):
                r = http.post("/hooks/default/hold", json={"i": i, "pad": "x" * 30_000})
                if r.status_code != 202:
                    refused = r
                    break
                accepted.append(r.headers["x-flowfuse-execution"])
            assert refused is not None and len(accepted) >= 2, len(accepted)
            assert refused.status_code == 507, refused.text  # Insufficient Storage, saying what is wrong
            assert "disk full" in refused.json()["error"]
            assert "no space left to write runs.db (disk full)" in srv.log.read_text()

            assert http.post("/api/v1/session", json={"email": ADMIN, "password": PASSWORD}).status_code == 201
            home = http.get("/")
            assert home.status_code == 200 and "storage-alert" in home.text and "disk full" in home.text

            with sqlite3.connect(data / "runs.db") as conn:  # nothing stored is damaged
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                stored = {r[0]: r[1] for r in conn.execute("SELECT id, length(input) FROM executions")}
            assert set(accepted) <= set(stored) and all(stored[i] > 30_000 for i in accepted)
            shown = srv.execution(accepted[0])
            assert shown["id"] == accepted[0] and shown["flow"] == "hold"

            with sqlite3.connect(data / "runs.db", timeout=10) as conn:  # space comes back
                conn.executemany("DELETE FROM steps WHERE execution_id=?", [(i,) for i in accepted[:-1]])
                conn.executemany("DELETE FROM executions WHERE id=?", [(i,) for i in accepted[:-1]])
            again = http.post("/hooks/default/hold", json={"pad": "x" * 30_000})
            assert again.status_code == 202, again.text
            assert "storage-alert" not in http.get("/").text
            srv.execution(accepted[-1])
    finally:
        srv.stop()
