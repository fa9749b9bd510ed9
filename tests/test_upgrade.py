"""Upgrading is replacing the binary: `flowfuse serve` backs up each database before applying its pending
migrations, and refuses to start on a data directory that a newer FlowFuse migrated (real CLI, real SQLite)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import Server, flowfuse, free_port

MANUAL_FLOW = '{"name": "manual", "nodes": [{"id": "start", "type": "manual"}], "edges": []}'


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _query(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _migrations(path: Path) -> set[str]:
    return {name for (name,) in _query(path, "SELECT name FROM _sqlite_migrations")}


def _tables(path: Path) -> set[str]:
    return {name for (name,) in _query(path, "SELECT name FROM sqlite_master WHERE type='table'")}


def test_serve_backs_up_a_database_before_applying_its_pending_migrations(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    (tmp_path / "manual.json").write_text(MANUAL_FLOW)
    assert flowfuse("flow", "import", str(tmp_path / "manual.json"), "--data-dir", str(data)).returncode == 0
    # flowfuse.db as an older release left it: without migration 0008 (the table it adds, and its record)
    _sql(data / "flowfuse.db", "DROP TABLE imported_connectors",
         "DELETE FROM _sqlite_migrations WHERE migration_set='flowfuse' AND name='0008_imported_connectors'")
    assert not (data / "backups").exists()

    srv = Server(data, free_port()).start("serve")  # the new binary starts: backup, migrate, ready
    try:
        assert httpx.get(srv.url + "/readyz").status_code == 200
    finally:
        srv.stop()

    backups = sorted((data / "backups").iterdir())
    assert [re.sub(r"-\d{8}T\d{12}Z-", "-TIME-", b.name) for b in backups] == [
        "flowfuse-TIME-before-0008_imported_connectors.db"]  # only the database that had migrations pending
    backup = backups[0]
    assert backup.stat().st_mode & 0o077 == 0  # as private as the database itself
    assert _query(backup, "PRAGMA integrity_check") == [("ok",)]
    assert "0008_imported_connectors" not in _migrations(backup) and "imported_connectors" not in _tables(backup)
    assert _query(backup, "SELECT name FROM flows") == [("manual",)]  # the data as it was
    live = data / "flowfuse.db"
    assert "0008_imported_connectors" in _migrations(live) and "imported_connectors" in _tables(live)
    assert _query(live, "SELECT name FROM flows") == [("manual",)]

    # nothing pending any more: a restart makes no new backup
    srv = Server(data, free_port()).start("serve")
    srv.stop()
    assert sorted((data / "backups").iterdir()) == backups


def test_an_older_binary_refuses_a_newer_data_directory_and_changes_nothing(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    _sql(data / "flowfuse.db", "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                               "VALUES ('flowfuse', '0999_from_a_newer_release', '2030-01-01 00:00:00+00:00')")
    _sql(data / "runs.db", "DROP TABLE trigger_cursors",  # also pending here: must stay pending
         "DELETE FROM _sqlite_migrations WHERE migration_set='runs' AND name='0007_trigger_cursors'")
    before = {p.name: p.read_bytes() for p in data.glob("*.db")}

    port = free_port()
    served = flowfuse("serve", "--data-dir", str(data), "--port", str(port), timeout=60)
    assert served.returncode == 1
    message = served.stderr.strip()
    assert "0999_from_a_newer_release" in message and "newer FlowFuse" in message and "flowfuse.db" in message
    assert "Traceback" not in served.stderr
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        raise AssertionError("nothing should listen: the server refused to start")
    except httpx.HTTPError:
        pass
    assert not (data / "backups").exists()
    assert "0007_trigger_cursors" not in _migrations(data / "runs.db")  # no database was migrated
    assert {p.name: p.read_bytes() for p in data.glob("*.db")}.keys() == before.keys()

    # every other command that opens the data directory refuses the same way
    listed = flowfuse("flow", "list", "--data-dir", str(data))
    assert listed.returncode == 1 and "0999_from_a_newer_release" in listed.stderr
