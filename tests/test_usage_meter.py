"""The usage meter rides in runs.db's write transactions (a commit hook of its writer): counts are stored
with the writes they count, exactly once, also when a write fails, when a whole transaction fails for
want of space, and when they are reported after the last write. Real SQLite files, a real writer."""

from __future__ import annotations

import sqlite3
import time

import pytest

from appliance import schema
from appliance.db import Database, migrate
from appliance.usage import UsageMeter

TODAY = time.strftime("%Y-%m-%d", time.gmtime())


@pytest.fixture
def runs_db(tmp_path):
    path = tmp_path / "runs.db"
    migrate(path, schema.runs)
    db = Database(path)
    yield db
    db.close()


def stored(db: Database) -> dict[str, tuple[int, int, int]]:
    with sqlite3.connect(db.path) as conn:
        return {t: (e, s, b) for t, e, s, b in conn.execute("SELECT tenant_id, executions, steps, bytes FROM usage "
                                                            f"WHERE day='{TODAY}'")}


def test_counts_are_stored_with_the_write_they_count(runs_db):
    meter = UsageMeter(runs_db)
    meter.add("t1", 1, 3, 120)
    meter.add("t1", 0, 2, 80)
    meter.add("t2", 1, 0, 0)
    runs_db.execute("INSERT INTO processes (id, kind, pid, started_at, heartbeat_at) VALUES ('p', 'web', 1, 0, 0)")
    assert stored(runs_db) == {"t1": (1, 5, 200), "t2": (1, 0, 0)}
    runs_db.execute("UPDATE processes SET heartbeat_at=1")  # nothing new reported: nothing added twice
    assert stored(runs_db) == {"t1": (1, 5, 200), "t2": (1, 0, 0)}


def test_a_failing_write_neither_loses_nor_doubles_the_counts(runs_db):
    meter = UsageMeter(runs_db)
    meter.add("t1", 1, 4, 100)

    def fails(conn):
        conn.execute("INSERT INTO processes (id, kind, pid, started_at, heartbeat_at) VALUES ('p', 'web', 1, 0, 0)")
        raise ValueError("this write fails")

    first = runs_db.writer.submit(fails)  # the batch is redone write by write; the meter runs once with it
    with pytest.raises(ValueError):
        first.result()
    assert stored(runs_db) == {"t1": (1, 4, 100)}


def test_counts_wait_out_a_full_disk_and_are_stored_once_there_is_room(tmp_path, monkeypatch):
    path = tmp_path / "runs.db"
    migrate(path, schema.runs)
    with sqlite3.connect(path) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    monkeypatch.setenv("FLOWFUSE_TEST_MAX_PAGES", f"runs.db={pages + 2}")
    db = Database(path)
    meter = UsageMeter(db)
    try:
        meter.add("t1", 1, 1, 10)
        big = "x" * 40_000  # more than two free pages: the transaction fails with SQLITE_FULL
        with pytest.raises(sqlite3.OperationalError, match="disk full"):
            db.execute("INSERT INTO resume_payloads VALUES ('e', 't1', 'k', ?, 0)", (big,))
        assert stored(db) == {}
        meter.add("t1", 0, 2, 20)
        db.execute("INSERT INTO resume_payloads VALUES ('e', 't1', 'k', 'small', 0)")
        assert stored(db) == {"t1": (1, 3, 30)}
    finally:
        db.close()


def test_counts_reported_after_the_last_write_are_stored_at_close(tmp_path):
    path = tmp_path / "runs.db"
    migrate(path, schema.runs)
    db = Database(path)
    meter = UsageMeter(db)
    db.execute("INSERT INTO processes (id, kind, pid, started_at, heartbeat_at) VALUES ('p', 'web', 1, 0, 0)")
    meter.add("t1", 1, 0, 0)
    meter.finished("t1", time.time(), "failed")
    db.close()
    assert stored(db) == {"t1": (1, 0, 0)}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT succeeded, failed, cancelled FROM outcomes WHERE tenant_id='t1'").fetchall() == [
            (0, 1, 0)]
