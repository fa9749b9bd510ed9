"""`flowfuse backup` / `flowfuse restore` over a real `flowfuse serve` taking webhooks while the backup runs."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import tarfile
import threading

import httpx

from tests.conftest import Server, flowfuse, free_port

PASS = "a long and unguessable passphrase"
FLOW = {"name": "busy", "nodes": [{"id": "hook", "type": "webhook", "params": {"path": "busy", "respond": "immediately"}},
                                  {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}},
                                  {"id": "again", "type": "set", "params": {"fields": {"twice": True}}}],
        "edges": [{"from": "hook", "to": "mark"}, {"from": "mark", "to": "again"}]}


def _load(server: Server, stop: threading.Event) -> int:
    """POST webhooks until told to stop; returns how many were accepted."""
    sent = 0
    with httpx.Client(timeout=15) as http:
        while not stop.is_set():
            r = http.post(f"{server.url}/hooks/default/busy", json={"n": sent, "pad": "x" * 500})
            assert r.status_code == 202, r.text
            sent += 1
    return sent


def _check_restored(data) -> int:
    conn = sqlite3.connect(data / "runs.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT e.id, e.status, count(s.seq) FROM executions e LEFT JOIN steps s "
                            "ON s.execution_id = e.id GROUP BY e.id").fetchall()
    finally:
        conn.close()
    for execution_id, status, steps in rows:
        if status == "succeeded":  # a finished execution has every step it committed with its end
            assert steps == 3, (execution_id, steps)
        else:
            assert status in ("queued", "running") and steps < 3, (execution_id, status, steps)
    for name in ("flowfuse.db", "audit.db", "queue.db"):
        conn = sqlite3.connect(data / name)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    return sum(1 for r in rows if r[1] == "succeeded")


def test_encrypted_backup_under_load_restores_a_consistent_working_copy(server, tmp_path):
    server.import_flow(FLOW)
    stop = threading.Event()
    archive = tmp_path / "backups" / "nightly.ffb"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(_load, server, stop) for _ in range(4)]
        with httpx.Client(timeout=15) as http:  # some work is done before the snapshot
            while http.get(f"{server.url}/readyz").status_code == 200 and len(server.executions()) < 20:
                pass
        made = flowfuse("backup", str(archive), "--data-dir", str(server.data_dir),
                        env={"FLOWFUSE_BACKUP_PASSPHRASE": PASS})
        stop.set()
        sent = sum(f.result() for f in senders)
    assert made.returncode == 0, made.stderr
    assert "encrypted, with the master key" in made.stdout
    assert sent > 20
    raw = archive.read_bytes()
    assert b"SQLite format 3" not in raw and (server.data_dir / "flowfuse.key").read_bytes() not in raw
    assert archive.stat().st_mode & 0o777 == 0o600

    target = tmp_path / "restored"
    wrong = flowfuse("restore", str(archive), "--data-dir", str(target), "--passphrase", "not it")
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    assert not target.exists() or not any(target.iterdir())
    done = flowfuse("restore", str(archive), "--data-dir", str(target), "--passphrase", PASS)
    assert done.returncode == 0, done.stderr
    assert (target / "flowfuse.key").read_bytes() == (server.data_dir / "flowfuse.key").read_bytes()
    assert (target / "flowfuse.key").stat().st_mode & 0o777 == 0o600
    assert target.stat().st_mode & 0o077 == 0
    assert _check_restored(target) >= 1

    again = flowfuse("restore", str(archive), "--data-dir", str(target), "--passphrase", PASS)
    assert again.returncode == 1 and "is not empty" in again.stderr

    copy = Server(target, free_port()).start("serve")  # the restored directory runs: key, vault and all
    try:
        listed = copy.executions("--status", "succeeded")
        assert listed and all(e["flow"] == "busy" for e in listed)
        with httpx.Client(timeout=15) as http:
            assert http.post(f"{copy.url}/hooks/default/busy", json={}).status_code == 202
    finally:
        copy.stop()


def test_plain_backup_holds_no_master_key(server, tmp_path):
    server.import_flow(FLOW)
    plugin = b"# a connector the administrator installed\nVALUE = 42\n"
    (server.data_dir / "plugins").mkdir(exist_ok=True)
    (server.data_dir / "plugins" / "acme.py").write_bytes(plugin)
    archive = tmp_path / "plain.tar"
    made = flowfuse("backup", str(archive), "--data-dir", str(server.data_dir))
    assert made.returncode == 0, made.stderr
    assert "not encrypted" in made.stdout and "master key" in made.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "flowfuse.key" not in names and {"manifest.json", "flowfuse.db", "runs.db", "audit.db"} <= names
    target = tmp_path / "restored"
    done = flowfuse("restore", str(archive), "--data-dir", str(target))
    assert done.returncode == 0 and "holds no master key" in done.stderr
    assert not (target / "flowfuse.key").exists()
    assert (target / "plugins" / "acme.py").read_bytes() == plugin  # the instance's plugins come back too
    refused = flowfuse("flow", "list", "--data-dir", str(target))
    assert refused.returncode == 1 and "flowfuse.key is missing" in refused.stderr
    (target / "flowfuse.key").write_bytes((server.data_dir / "flowfuse.key").read_bytes())
    listed = flowfuse("flow", "list", "--data-dir", str(target))
    assert listed.returncode == 0 and "busy" in listed.stdout
