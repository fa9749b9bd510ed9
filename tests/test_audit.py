"""The audit log (appliance.audit) on real SQLite files: the hash chain, tamper detection through the
API and through `flowfuse audit verify`, concurrent appenders, queries, exports, and the CLI's entries.

Tampering is done the way an intruder would: raw sqlite3 statements on audit.db.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import commands
from appliance.audit import COLUMNS, GENESIS, INSERT, AuditLog, entry, entry_hash, scrub
from conftest import ROOT, flowfuse

ORDERS = {"name": "orders", "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "orders", "method": "POST"}},
    {"id": "note", "type": "set", "params": {"fields": {"note": "x"}}},
], "edges": [{"from": "hook", "to": "note"}]}

CALC = {"name": "calc", "nodes": [
    {"id": "start", "type": "manual"},
    {"id": "double", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}},
], "edges": [{"from": "start", "to": "double"}]}

ACTIONS = ("flow.update", "flow.import", "auth.sign_in", "auth.sign_in_failed", "credential.set")


def fill(log: AuditLog, count: int) -> None:
    """`count` entries whose fields cycle, so that every filter has several matches."""
    for i in range(count):
        log.record(ACTIONS[i % 5], actor_type="user", actor_id=f"u_{i % 3}", actor_label=f"user{i % 3}@example.com",
                   tenant_id=None if i % 7 == 0 else f"t_{i % 2}", target_type="flow", target_id=f"f_{i % 4}",
                   ip="10.0.0.1", user_agent="pytest", details={"i": i, "name": f"Größe {i}"})


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.db")
    yield audit
    audit.close()


@pytest.fixture
def data_log(settings):
    """The audit log of an initialised data directory (so that the CLI can verify it)."""
    audit = AuditLog(settings.data_dir / "audit.db")
    yield audit
    audit.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def forge(conn: sqlite3.Connection, seq: int, prev_hash: str) -> None:
    """Insert a forged entry whose own hash is right (as a careful intruder would make it)."""
    row = {**entry("flow.delete", actor_label="nobody"), "seq": seq, "at": time.time(), "prev_hash": prev_hash}
    row["hash"] = entry_hash(row)
    conn.execute(INSERT, [row[c] for c in COLUMNS])


def hash_of(conn: sqlite3.Connection, seq: int) -> str:
    return conn.execute("SELECT hash FROM entries WHERE seq=?", (seq,)).fetchone()[0]


def cli_verify(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "audit", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


# -- the chain -------------------------------------------------------------------------------------------
def test_a_chain_of_hundreds_of_entries_verifies_and_its_hashes_follow_the_documented_recipe(log):
    assert log.verify().ok and log.verify().entries == 0
    fill(log, 300)
    result = log.verify()
    assert (result.ok, result.entries, result.first_bad_seq, result.problem) == (True, 300, None, None)

    rows = [dict(r) for r in log.db.query("SELECT * FROM entries ORDER BY seq")]
    assert [r["seq"] for r in rows] == list(range(1, 301))
    assert rows[0]["prev_hash"] == GENESIS == "0" * 64
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
        assert after["at"] >= before["at"]
    for row in rows:  # what an auditor would compute without FlowFuse
        text = json.dumps({k: v for k, v in row.items() if k != "hash"}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        assert hashlib.sha256(text.encode()).hexdigest() == row["hash"]
    assert json.loads((log.path.parent / "audit.head").read_text()) == {"seq": 300, "hash": rows[-1]["hash"]}


def test_entries_are_checked_when_recorded(log):
    with pytest.raises(ValueError, match="dotted"):
        log.record("FlowUpdate")
    with pytest.raises(ValueError, match="actor_type"):
        log.record("flow.update", actor_type="robot")
    with pytest.raises(ValueError, match="outcome"):
        log.record("flow.update", outcome="maybe")
    with pytest.raises(TypeError):
        log.record("flow.update", actor="someone")
    assert log.query() == []


# -- tampering -------------------------------------------------------------------------------------------
def _edit(conn):
    conn.execute("UPDATE entries SET actor_label='mallory@example.com' WHERE seq=42")


def _edit_details(conn):
    conn.execute("""UPDATE entries SET details='{"i":99}' WHERE seq=7""")


def _delete_middle(conn):
    conn.execute("DELETE FROM entries WHERE seq=100")


def _delete_first(conn):
    conn.execute("DELETE FROM entries WHERE seq=1")


def _insert_between(conn):
    """Make room at 150 by renumbering the entries after it, then forge a well-linked entry 150."""
    conn.execute("UPDATE entries SET seq=-seq WHERE seq >= 150")
    conn.execute("UPDATE entries SET seq=1-seq WHERE seq < 0")
    forge(conn, 150, hash_of(conn, 149))


def _insert_at_end(conn):
    forge(conn, 301, "f" * 64)


def _swap(first: int, second: int):
    def swap(conn):
        columns = [c for c in COLUMNS if c != "seq"]
        a = conn.execute(f"SELECT {', '.join(columns)} FROM entries WHERE seq=?", (first,)).fetchone()
        b = conn.execute(f"SELECT {', '.join(columns)} FROM entries WHERE seq=?", (second,)).fetchone()
        assignments = ", ".join(f"{c}=?" for c in columns)
        conn.execute(f"UPDATE entries SET {assignments} WHERE seq=?", (*b, first))
        conn.execute(f"UPDATE entries SET {assignments} WHERE seq=?", (*a, second))
    return swap


def _truncate(count: int):
    def truncate(conn):
        conn.execute("DELETE FROM entries WHERE seq > ?", (300 - count,))
    return truncate


def _rewrite(conn):
    """Change entry 10 and recompute every hash after it: only audit.head can tell."""
    conn.execute("UPDATE entries SET actor_label='mallory@example.com' WHERE seq=10")
    prev = hash_of(conn, 9)
    for row in conn.execute("SELECT * FROM entries WHERE seq >= 10 ORDER BY seq").fetchall():
        fixed = {**dict(zip(COLUMNS, row)), "prev_hash": prev}
        prev = entry_hash(fixed)
        conn.execute("UPDATE entries SET prev_hash=?, hash=? WHERE seq=?", (fixed["prev_hash"], prev, fixed["seq"]))


TAMPERING = {  # how to tamper: (change, first bad seq, entries known sound, the words verify uses)
    "edited": (_edit, 42, 41, "entry 42 was changed after it was written (its hash does not match its content)"),
    "details edited": (_edit_details, 7, 6, "entry 7 was changed after it was written"),
    "removed": (_delete_middle, 100, 99, "entry 100 was removed (the log jumps from entry 99 to entry 101)"),
    "first removed": (_delete_first, 1, 0, "entry 1 was removed (the log jumps from the start of the log to entry 2)"),
    "inserted between": (_insert_between, 150, 149, "entry 150 was inserted (the entry now numbered 151 was"),
    "inserted at the end": (_insert_at_end, 301, 300, "entry 301 does not follow entry 300"),
    "reordered": (_swap(60, 200), 60, 59, "entry 60 holds what was written as entry 200: entries were reordered"),
    "neighbours swapped": (_swap(60, 61), 60, 59, "entry 60 holds what was written as entry 61"),
    "last removed": (_truncate(1), 300, 299, "entry 300 was removed from the end of the log"),
    "last three removed": (_truncate(3), 298, 297, "entries 298 to 300 were removed from the end of the log"),
    "rewritten": (_rewrite, 300, 0, "entry 300 is not the entry audit.head recorded"),
}


def test_pages_verify_new_entries_only_after_one_whole_walk(log):
    """verify_since_last (the console's audit page): one whole walk, then each call checks what was
    added since, so tampering with a new entry shows at once and with an old one at the next whole walk."""
    fill(log, 50)
    first, walked = log.verify_since_last()
    assert (first.ok, first.entries) == (True, 50)
    fill(log, 20)
    again, walked_again = log.verify_since_last()
    assert (again.ok, again.entries, walked_again) == (True, 70, walked)

    conn = raw(log.path)
    try:
        conn.execute("UPDATE entries SET actor_label='mallory@example.com' WHERE seq=10")  # already walked
        fill(log, 5)
        assert log.verify_since_last()[0].ok  # not walked again in this process
        fill(log, 3)
        conn.execute("UPDATE entries SET actor_label='mallory@example.com' WHERE seq=77")  # new: checked now
    finally:
        conn.close()
    broken = log.verify_since_last()[0]
    assert (broken.ok, broken.first_bad_seq) == (False, 77)
    whole = AuditLog(log.path).verify_since_last()[0]  # another process walks the whole log
    assert (whole.ok, whole.first_bad_seq) == (False, 10)
    assert not log.verify_since_last()[0].ok and log.verify_since_last()[0].first_bad_seq == 10  # walked again


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_verify_names_the_first_entry_tampered_with(data_log, settings, tamper):
    change, bad_seq, sound, words = tamper
    fill(data_log, 300)
    conn = raw(data_log.path)
    try:
        change(conn)
    finally:
        conn.close()

    result = data_log.verify()
    assert not result.ok
    assert result.first_bad_seq == bad_seq, result.problem
    assert words in result.problem
    assert result.entries == sound

    shown = cli_verify(settings.data_dir)
    assert shown.returncode == 1, (shown.stdout, shown.stderr)
    assert shown.stdout == ""
    assert shown.stderr.strip() == f"audit log damaged: {result.problem}"


def test_a_missing_or_damaged_head_is_reported(log):
    fill(log, 3)
    head = log.path.parent / "audit.head"
    head.write_text("{not json")
    assert "audit.head" in log.verify().problem and "unreadable" in log.verify().problem
    head.unlink()
    result = log.verify()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 3, None)
    assert "is missing" in result.problem
    log.record("flow.update")  # the next entry anchors the log again
    assert log.verify().ok


def test_cli_verify_of_an_intact_log(data_log, settings):
    fill(data_log, 25)
    shown = cli_verify(settings.data_dir)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "audit log intact: 25 entries"


# -- concurrent appenders ------------------------------------------------------------------------------
APPENDER = """
import sys, time
from pathlib import Path
from appliance.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.002)
for i in range(int(sys.argv[4])):
    log.record("test.append", actor_label=sys.argv[2], details={"i": i})
log.close()
"""


def test_two_processes_appending_at_once_form_one_chain(log, tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(log.path), name, str(go), "200"], cwd=ROOT)
             for name in ("web", "worker")]
    time.sleep(0.5)  # both are importing and waiting
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0

    result = log.verify()
    assert (result.ok, result.entries) == (True, 400), result.problem
    rows = log.db.query("SELECT actor_label, details FROM entries ORDER BY seq")
    for name in ("web", "worker"):
        assert [json.loads(r["details"])["i"] for r in rows if r["actor_label"] == name] == list(range(200))
    labels = [r["actor_label"] for r in rows]
    assert sum(a != b for a, b in itertools.pairwise(labels)) > 1, "the two processes never took turns"
    assert json.loads((tmp_path / "audit.head").read_text())["seq"] == 400


def test_coroutines_appending_at_once_share_commits_and_one_chain(log):
    async def main():
        log.use_loop(asyncio.get_running_loop())
        seqs = await asyncio.gather(*(log.arecord("auth.sign_in_failed", actor_type="anonymous",
                                                  actor_label=f"guess{i}@example.com", outcome="refused")
                                      for i in range(100)))
        return seqs, log.db.writer.commits
    seqs, commits = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 101))
    assert commits < 100  # group commit: several entries per transaction, each reading the one before
    assert log.verify().ok


# -- queries -------------------------------------------------------------------------------------------
def test_query_filters_and_keyset_pages(log):
    fill(log, 120)
    everything = log.query(limit=1000)
    assert [e["seq"] for e in everything] == list(range(120, 0, -1))
    assert everything[0]["details"] == {"i": 119, "name": "Größe 119"}

    def matching(predicate):
        return [e["seq"] for e in everything if predicate(e)]

    assert [e["seq"] for e in log.query(tenant_id="t_1", limit=1000)] == matching(lambda e: e["tenant_id"] == "t_1")
    assert [e["seq"] for e in log.query(actor="u_2", limit=1000)] == matching(lambda e: e["actor_id"] == "u_2")
    by_label = log.query(actor="user2@example.com", limit=1000)
    assert [e["seq"] for e in by_label] == matching(lambda e: e["actor_id"] == "u_2")
    assert [e["seq"] for e in log.query(action="auth.sign_in", limit=1000)] == \
        matching(lambda e: e["action"] == "auth.sign_in")
    assert [e["seq"] for e in log.query(action="flow.", limit=1000)] == \
        matching(lambda e: e["action"].startswith("flow."))
    assert [e["seq"] for e in log.query(action="auth.", limit=1000)] == \
        matching(lambda e: e["action"].startswith("auth."))
    assert log.query(action="nothing.") == []
    assert [e["seq"] for e in log.query(target="f_3", limit=1000)] == matching(lambda e: e["target_id"] == "f_3")
    combined = log.query(tenant_id="t_0", actor="user1@example.com", action="flow.", target="f_0", limit=1000)
    assert [e["seq"] for e in combined] == matching(
        lambda e: e["tenant_id"] == "t_0" and e["actor_id"] == "u_1" and e["action"].startswith("flow.")
        and e["target_id"] == "f_0")
    assert combined

    at = {e["seq"]: e["at"] for e in everything}
    assert [e["seq"] for e in log.query(since=at[30], until=at[90], limit=1000)] == list(range(89, 29, -1))
    assert log.query(since=at[120] + 1) == []

    pages, before = [], None
    while page := log.query(action="flow.", before_seq=before, limit=7):
        pages.append([e["seq"] for e in page])
        before = page[-1]["seq"]
    assert all(len(p) == 7 for p in pages[:-1])
    assert [s for p in pages for s in p] == matching(lambda e: e["action"].startswith("flow."))


@pytest.mark.parametrize("filters", [
    {}, {"tenant_id": "t_1"}, {"actor": "u_1"}, {"action": "flow.update"}, {"action": "flow."},
    {"target": "f_1"}, {"since": 0.0}, {"until": 2e9}, {"before_seq": 50},
    {"actor": "u_1", "action": "flow.", "tenant_id": "t_0"},
], ids=repr)
def test_every_query_reads_an_index_and_sorts_nothing(log, filters):
    fill(log, 30)
    sql, params = log._select("DESC", **filters)
    plan = [r["detail"] for r in log.db.query("EXPLAIN QUERY PLAN " + sql + " LIMIT 50", params)]
    assert not any("TEMP B-TREE" in step for step in plan), plan
    if {"tenant_id", "actor", "action", "target"} & filters.keys():
        assert not any(step.startswith("SCAN") for step in plan), plan
    # otherwise the primary key is walked in seq order, reading only the rows of the page


# -- export -----------------------------------------------------------------------------------------------
def test_export_jsonl_and_csv_round_trip(log):
    fill(log, 40)
    oldest_first = list(reversed(log.query(limit=1000)))

    out = io.StringIO()
    assert log.export(out, "jsonl") == 40
    assert [json.loads(line) for line in out.getvalue().splitlines()] == oldest_first

    out = io.StringIO(newline="")
    assert log.export(out, "csv") == 40
    reader = csv.DictReader(io.StringIO(out.getvalue(), newline=""))
    assert tuple(reader.fieldnames) == COLUMNS
    rows = list(reader)
    for row, expected in zip(rows, oldest_first, strict=True):
        typed = {k: (None if v == "" else v) for k, v in row.items()}
        typed["seq"], typed["at"] = int(row["seq"]), float(row["at"])
        assert entry_hash(typed) == row["hash"]  # an auditor can check a CSV export on its own
        assert {**typed, "details": json.loads(typed["details"])} == expected

    since = oldest_first[20]["at"]
    out = io.StringIO()
    assert log.export(out, "jsonl", since=since, tenant_id="t_1") == len(
        [e for e in oldest_first[20:] if e["tenant_id"] == "t_1"])
    assert all(json.loads(line)["tenant_id"] == "t_1" for line in out.getvalue().splitlines())
    with pytest.raises(ValueError, match="jsonl or csv"):
        log.export(io.StringIO(), "xml")


def test_cli_export(settings, data_log):
    with commands.opened(settings) as rt:
        default_id = rt.tenant_id(None)
    data_log.record("flow.update", tenant_id=default_id, details={"n": 1})
    data_log.record("tenant.create", details={"n": 2})

    def export(*args):
        return flowfuse("audit", "export", *args, "--data-dir", str(settings.data_dir))

    lines = export("--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["details"] for line in lines] == [{"n": 1}, {"n": 2}]
    tenant_only = export("--format", "jsonl", "--tenant", "default")
    assert tenant_only.returncode == 0, tenant_only.stderr
    assert [json.loads(line)["action"] for line in tenant_only.stdout.splitlines()] == ["flow.update"]
    as_csv = export("--format", "csv", "--since", "2000-01-01")
    assert [r["action"] for r in csv.DictReader(io.StringIO(as_csv.stdout))] == ["flow.update", "tenant.create"]
    assert export("--since", "2999-01-01T00:00:00Z").stdout == ""

    unknown = export("--tenant", "nobody")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert "no tenant 'nobody'" in unknown.stderr
    bad_date = export("--since", "last tuesday")
    assert bad_date.returncode == 2
    assert "not an ISO-8601 date" in bad_date.stderr


# -- secrets stay out ---------------------------------------------------------------------------------------
def test_details_are_scrubbed_of_anything_named_like_a_secret(log):
    details = {"name": "ops", "password": "pw-LEAK", "apiKey": "k-LEAK", "client_secret": "s-LEAK",
               "Token": "t-LEAK", "value": "v-LEAK", "recovery_code": "c-LEAK", "count": 3,
               "nested": {"refresh_token": "r-LEAK", "keep": [{"secret": "s2-LEAK", "ok": True}]}}
    expected = {"name": "ops", "count": 3, "nested": {"keep": [{"ok": True}]}}
    assert scrub(details) == expected
    assert details["password"] == "pw-LEAK"  # the caller's dict is left alone
    log.record("credential.set", details=details)
    assert log.query()[0]["details"] == expected
    log.close()
    for path in log.path.parent.iterdir():
        assert b"LEAK" not in path.read_bytes(), path.name


def test_cli_changes_are_recorded(settings, tmp_path):
    def cli(*args):
        result = flowfuse(*args, "--data-dir", str(settings.data_dir))
        assert result.returncode == 0, result.stderr
        return result

    (tmp_path / "orders.json").write_text(json.dumps(ORDERS))
    cli("flow", "import", str(tmp_path / "orders.json"), "--activate")
    cli("flow", "deactivate", "orders")
    cli("flow", "activate", "orders")
    cli("credentials", "set", "api", "--type", "bearer", "--data", json.dumps({"token": "tok-PLAINTEXT"}))
    with commands.opened(settings) as rt:
        tenant_id = rt.tenant_id(None)
        flow_id = rt.catalog.flow(tenant_id, "orders").id
        queued = rt.queue_execution(rt.catalog.save_flow(tenant_id, CALC), "manual", [{"n": 1}]).id
    assert commands.cancel_execution(settings, queued, None) == "queued"

    with commands.opened(settings) as rt:
        entries = list(reversed(rt.audit.query()))
        assert rt.audit.verify().ok
    assert [(e["action"], e["target_type"], e["target_id"]) for e in entries] == [
        ("flow.import", "flow", flow_id), ("flow.deactivate", "flow", flow_id), ("flow.activate", "flow", flow_id),
        ("credential.set", "credential", "api"), ("execution.cancel", "execution", queued)]
    assert {(e["actor_type"], e["actor_label"], e["tenant_id"], e["outcome"]) for e in entries} == {
        ("system", "cli", tenant_id, "ok")}
    assert entries[0]["details"] == {"name": "orders", "version": 1, "active": True}
    assert entries[3]["details"] == {"type": "bearer"}
    assert entries[4]["details"] == {"was": "queued"}
    for name in ("audit.db", "audit.head"):
        assert b"PLAINTEXT" not in (settings.data_dir / name).read_bytes()

    shown = cli_verify(settings.data_dir)
    assert (shown.returncode, shown.stdout.strip()) == (0, "audit log intact: 5 entries")


def test_init_creates_the_audit_log(tmp_path):
    made = json.loads(flowfuse("init", "--data-dir", str(tmp_path / "data")).stdout)
    assert made["migrations"]["audit.db"] == ["0001_initial"]
    again = json.loads(flowfuse("init", "--data-dir", str(tmp_path / "data")).stdout)
    assert again["migrations"]["audit.db"] == []
    assert (tmp_path / "data" / "audit.db").is_file()
