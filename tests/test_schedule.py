"""Cron triggers fired by the worker of a real `flowfuse serve`: once per due time, in the flow's
time zone, across restarts, and only while the flow is active.

croniter reads a sixth field as seconds (`* * * * * */2` is every two seconds), which keeps
these tests short; that the flow validation accepts it is part of what is tested.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import time

from croniter import croniter

from conftest import flowfuse, poll


def schedule_flow(name: str, cron: str, peer, timezone: str = "UTC") -> dict:
    return {"name": name, "nodes": [
        {"id": "every", "type": "schedule", "params": {"cron": cron, "timezone": timezone}},
        {"id": "tell", "type": "http_request",
         "params": {"method": "POST", "url": f"{peer.url}/{name}", "body": "{{ json }}"}},
    ], "edges": [{"from": "every", "to": "tell"}]}


def fired(server, flow: str) -> list[dict]:
    """Executions of a flow, oldest first, read from runs.db (cheap enough to poll)."""
    conn = sqlite3.connect(f"file:{server.data_dir / 'runs.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, status, trigger, input, created_at FROM executions WHERE flow_name=? "
                            "ORDER BY id", (flow,)).fetchall()
    finally:
        conn.close()
    return [{"id": r[0], "status": r[1], "trigger": r[2], "input": json.loads(r[3]), "created_at": r[4]}
            for r in rows]




def due_times(executions: list[dict]) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(e["input"][0]["scheduled_at"]) for e in executions]


def test_cron_expression_validation(tmp_path):
    """`flow import` accepts croniter's seconds field and rejects bad expressions and time zones."""
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    assert croniter.is_valid("* * * * * */2")

    def imported(name: str, cron: str, timezone: str = "UTC"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"name": name, "nodes": [
            {"id": "every", "type": "schedule", "params": {"cron": cron, "timezone": timezone}}], "edges": []}))
        return flowfuse("flow", "import", str(path), "--data-dir", str(data))

    ok = imported("seconds", "* * * * * */2")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["trigger"] == "schedule"

    bad = imported("bad", "61 * * * *")
    assert bad.returncode == 2
    assert "cron" in bad.stderr and "61 * * * *" in bad.stderr
    zone = imported("zone", "* * * * *", "Mars/Olympus")
    assert zone.returncode == 2
    assert "Mars/Olympus" in zone.stderr


def test_schedule_fires_once_per_due_time_in_its_time_zone_until_deactivated(server, peer):
    server.import_flow(schedule_flow("every-2s", "* * * * * */2", peer, timezone="Asia/Kolkata"))
    imported_at = time.time()
    server.import_flow(schedule_flow("dormant", "* * * * * *", peer), activate=False)

    poll(lambda: sum(e["status"] == "succeeded" for e in fired(server, "every-2s")) >= 2, 30, "two firings")
    executions = fired(server, "every-2s")
    assert {e["trigger"] for e in executions} == {"schedule"}
    times = due_times(executions)
    assert len(set(times)) == len(times), times  # no due time fired twice
    for when, e in zip(times, executions):
        assert when.second % 2 == 0 and when.microsecond == 0  # exactly the times the expression names
        assert when.utcoffset() == dt.timedelta(hours=5, minutes=30)  # reported in the flow's time zone
        assert e["input"][0]["timezone"] == "Asia/Kolkata"
    # none skipped: the first is the first due time after the flow was activated, then every 2 s
    assert times[0].timestamp() <= math.ceil(imported_at / 2) * 2
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:])] == [2.0] * (len(times) - 1)
    # the flow saw its item: each firing reached the peer with its own due time
    sent = [json.loads(r["body"])["scheduled_at"] for r in peer.of("/every-2s")]
    assert len(sent) == len(set(sent))

    result = server.cli("flow", "deactivate", "every-2s")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["active"] is False
    time.sleep(0.6)  # a tick that had started before the deactivation may still finish
    count = len(fired(server, "every-2s"))
    time.sleep(2.5)  # more than the schedule's period
    assert len(fired(server, "every-2s")) == count  # a deactivated flow does not fire
    assert fired(server, "dormant") == []  # a flow never activated does not fire

    listed = server.executions("--flow", "every-2s")
    assert len(listed) == count
    assert {e["trigger"] for e in listed} == {"schedule"}


def test_schedule_fires_each_due_time_once_across_a_restart(server, peer):
    """Stop `flowfuse serve`, let due times pass, start it again on the same data directory: no due
    time fires twice, and of those missed while stopped only the newest fires (catch_up = 1)."""
    server.import_flow(schedule_flow("every-second", "* * * * * *", peer))
    poll(lambda: len(fired(server, "every-second")) >= 3, 30, "three firings")
    server.stop()
    before = fired(server, "every-second")
    last_before = max(due_times(before)).timestamp()
    time.sleep(4)  # several due times pass while nothing runs

    server.start("serve")
    poll(lambda: len(fired(server, "every-second")) >= len(before) + 3, 30, "three firings after the restart")
    executions = fired(server, "every-second")
    times = [t.timestamp() for t in due_times(executions)]
    assert len(set(times)) == len(times), sorted(times)  # no due time fired twice
    assert [e["id"] for e in executions[:len(before)]] == [e["id"] for e in before]
    assert min(times[len(before):]) > last_before
    # due times more than 2 ticks + 1 s (1.5 s here) old when the first tick after the restart ran
    # count as missed; of those only the newest fires, so the firings after the restart are one
    # unbroken run of seconds that starts after a gap. That tick ran at least 4 s after last_before
    # (the sleep), so at least the first two due times of the gap were missed and one was skipped.
    first_tick = min(e["created_at"] for e in executions[len(before):])
    assert first_tick - last_before > 4
    after = sorted(times[len(before):])
    assert after == [after[0] + i for i in range(len(after))], after  # nothing skipped after the first
    assert after[0] >= last_before + 2, (after, last_before)  # the oldest missed due times were skipped
    # what was queued before the stop ran after the restart; each firing reached the peer once
    poll(lambda: all(e["status"] == "succeeded" for e in fired(server, "every-second")[:len(before) + 3]), 30,
         "every firing from before the restart succeeded")
    sent = [json.loads(r["body"])["scheduled_at"] for r in peer.of("/every-second")]
    assert len(sent) == len(set(sent))
