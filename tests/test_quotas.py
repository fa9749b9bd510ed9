"""Tenant quotas and usage metering over a real `flowfuse serve`: each test sets its own tenant's
quotas through the API (PATCH /tenants/{t}/quotas, instance admins) and checks what happens."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import sqlite3
import time

import httpx
import pytest

from appliance.quotas import resolve
from appliance.settings import SettingsError, load
from tests.api_helpers import Client, new_key, new_tenant, problem, signed_in_admin, start_with_admin
from tests.conftest import Server, poll


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_with_admin(tmp_path_factory.mktemp("quotas") / "data", "serve",
                              env={"FLOWFUSE_WORKER_RETENTION_INTERVAL_S": "0.3"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(srv):
    return signed_in_admin(srv)


def tenant_with(admin: Client, srv: Server, **quotas) -> tuple[str, Client]:
    """A new tenant with these quota overrides, and an owner key for it."""
    slug = new_tenant(admin)
    if quotas:
        r = admin.patch(f"/tenants/{slug}/quotas", json=quotas)
        assert r.status_code == 200, r.text
    return slug, Client(srv.url, new_key(admin, slug, "owner"))


def hook_flow(name: str, *nodes: dict) -> dict:
    chain = [{"id": "hook", "type": "webhook", "params": {"path": name}}, *nodes]
    return {"name": name, "nodes": chain, "edges": [{"from": a["id"], "to": b["id"]} for a, b in zip(chain, chain[1:])]}


def manual_flow(name: str, *nodes: dict) -> dict:
    chain = [{"id": "start", "type": "manual"}, *nodes]
    return {"name": name, "nodes": chain, "edges": [{"from": a["id"], "to": b["id"]} for a, b in zip(chain, chain[1:])]}


MARK = {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}
PAUSE = {"id": "pause", "type": "wait", "params": {"seconds": 0.8}}  # under inline_wait_max_s: runs, not parked


def install(owner: Client, tenant: str, doc: dict, activate: bool = True) -> None:
    assert owner.post(f"/tenants/{tenant}/flows", json=doc).status_code == 201
    if activate:
        assert owner.post(f"/tenants/{tenant}/flows/{doc['name']}/activate").status_code == 200


def executions(owner: Client, tenant: str, **params) -> list[dict]:
    return owner.get(f"/tenants/{tenant}/executions", params={"limit": 500, **params}).json()["items"]


def finished(owner: Client, tenant: str, ids: list[str], timeout: float = 30) -> list[dict]:
    def done():
        found = [owner.get(f"/tenants/{tenant}/executions/{i}").json() for i in ids]
        return found if all(f["status"] in ("succeeded", "failed", "cancelled") for f in found) else None
    return poll(done, timeout=timeout, what=f"executions {ids} to finish")


def test_instance_defaults_come_from_flowfuse_toml_and_a_tenant_override_wins(tmp_path):
    config = tmp_path / "flowfuse.toml"
    config.write_text("[quotas]\nexecutions_per_month = 1000\nretention_days = 0\n")
    settings = load(config, env={"FLOWFUSE_QUOTAS_ACTIVE_FLOWS": "3"})
    assert (settings.quotas.executions_per_month, settings.quotas.retention_days) == (1000, 0)
    assert settings.quotas.active_flows == 3

    effective = resolve(settings.quotas, json.dumps({"require_mfa": True, "quotas": {"active_flows": 10}}))
    assert effective.active_flows == 10 and effective.sources["active_flows"] == "tenant"
    assert effective.executions_per_month == 1000 and effective.sources["executions_per_month"] == "instance"

    with pytest.raises(SettingsError, match="quotas.retention_days must be 0 or more"):
        load(config, env={"FLOWFUSE_QUOTAS_RETENTION_DAYS": "-1"})


def test_quotas_show_their_source_and_only_instance_admins_change_them(srv, admin):
    tenant, owner = tenant_with(admin, srv)
    viewer = Client(srv.url, new_key(admin, tenant, "viewer"))
    shown = viewer.get(f"/tenants/{tenant}/quotas").json()
    assert shown["quotas"]["active_flows"] == {"limit": 0, "unlimited": True, "source": "instance"}
    assert shown["quotas"]["retention_days"]["limit"] == 30  # the shipped default

    refused = problem(owner.patch(f"/tenants/{tenant}/quotas", json={"active_flows": 100}), 403)
    assert "instance admins" in refused["detail"]

    changed = admin.patch(f"/tenants/{tenant}/quotas", json={"active_flows": 2, "webhook_requests_per_minute": 600})
    assert changed.json()["quotas"]["active_flows"] == {"limit": 2, "unlimited": False, "source": "tenant"}
    assert viewer.get(f"/tenants/{tenant}/quotas").json()["quotas"]["webhook_requests_per_minute"]["limit"] == 600
    back = admin.patch(f"/tenants/{tenant}/quotas", json={"active_flows": None}).json()["quotas"]
    assert back["active_flows"]["source"] == "instance" and back["webhook_requests_per_minute"]["source"] == "tenant"

    problem(admin.patch(f"/tenants/{tenant}/quotas", json={"active_flow": 1}), 400)  # a typo is an error
    problem(admin.patch(f"/tenants/{tenant}/quotas", json={"active_flows": -1}), 422)
    problem(admin.patch("/tenants/no-such-tenant/quotas", json={"active_flows": 1}), 404)
    entries = admin.get(f"/tenants/{tenant}/audit", params={"action": "tenant.quotas"}).json()["items"]
    assert len(entries) == 2 and entries[-1]["details"]["changes"] == {"active_flows": 2,
                                                                        "webhook_requests_per_minute": 600}


def test_webhooks_past_the_rate_get_429_with_retry_after_and_create_nothing(srv, admin):
    tenant, owner = tenant_with(admin, srv, webhook_requests_per_minute=5)
    install(owner, tenant, hook_flow("rated", MARK))
    url = f"{srv.url}/hooks/{tenant}/rated"
    with httpx.Client(timeout=10) as client:
        answers = [client.post(url, json={"i": i}) for i in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    limited = answers[5]
    assert 1 <= int(limited.headers["retry-after"]) <= 12  # one request frees every 60/5 s
    assert limited.json()["quota"] == "webhook_requests_per_minute"
    assert "5 webhook requests a minute" in limited.json()["error"]
    assert "x-flowfuse-execution" not in limited.headers
    assert len(executions(owner, tenant)) == 5

    other, other_owner = tenant_with(admin, srv)  # a tenant's rate is its own
    install(other_owner, other, hook_flow("rated", MARK))
    assert all(httpx.post(f"{srv.url}/hooks/{other}/rated", json={}).status_code == 200 for _ in range(7))


def test_activating_past_the_active_flows_quota_is_refused_with_what_to_do(srv, admin):
    tenant, owner = tenant_with(admin, srv, active_flows=1)
    install(owner, tenant, hook_flow("first", MARK))
    install(owner, tenant, hook_flow("second", MARK), activate=False)
    refused = problem(owner.post(f"/tenants/{tenant}/flows/second/activate"), 409)
    assert "active_flows = 1" in refused["detail"] and "deactivate one" in refused["detail"]
    assert f"/tenants/{tenant}/quotas" in refused["detail"]
    assert owner.get(f"/tenants/{tenant}/flows/second").json()["active"] is False
    assert owner.post(f"/tenants/{tenant}/flows/first/activate").status_code == 200  # already active: fine
    assert owner.put(f"/tenants/{tenant}/flows/first", json=hook_flow("first", MARK)).status_code == 200
    assert owner.post(f"/tenants/{tenant}/flows/first/deactivate").status_code == 200
    assert owner.post(f"/tenants/{tenant}/flows/second/activate").json()["active"] is True
    assert owner.get(f"/tenants/{tenant}/quotas").json()["used"]["active_flows"] == 1


def test_executions_past_the_monthly_quota_are_refused_everywhere(srv, admin):
    tenant, owner = tenant_with(admin, srv, executions_per_month=3)
    install(owner, tenant, hook_flow("monthly", MARK))
    install(owner, tenant, manual_flow("by-hand", MARK), activate=False)
    url = f"{srv.url}/hooks/{tenant}/monthly"
    assert [httpx.post(url, json={}).status_code for _ in range(3)] == [200, 200, 200]
    refused = httpx.post(url, json={})
    assert refused.status_code == 429
    assert refused.json()["quota"] == "executions_per_month"
    assert "3 executions for" in refused.json()["error"] and "PATCH" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) > 0  # until the first of next month

    by_api = problem(owner.post(f"/tenants/{tenant}/flows/by-hand/run", json={}), 409)
    assert "executions_per_month" in by_api["detail"]

    every_second = {"name": "ticker", "nodes": [{"id": "tick", "type": "schedule", "params": {"cron": "* * * * * *"}},
                                                MARK], "edges": [{"from": "tick", "to": "mark"}]}
    install(owner, tenant, every_second)
    poll(lambda: "flow ticker: 1 schedule firing(s) skipped: tenant" in srv.log.read_text(), timeout=10,
         what="a skipped schedule firing in the log")
    assert len(executions(owner, tenant)) == 3
    assert owner.get(f"/tenants/{tenant}/quotas").json()["used"]["executions_this_month"] == 3

    assert owner.post(f"/tenants/{tenant}/flows/ticker/deactivate").status_code == 200
    assert admin.patch(f"/tenants/{tenant}/quotas", json={"executions_per_month": 4}).status_code == 200
    assert httpx.post(url, json={}).status_code == 200


def _spans(found: list[dict]) -> list[tuple[float, float]]:
    """(first step started, last step ended) of each execution, in id (= creation) order."""
    found = sorted(found, key=lambda e: e["id"])
    return [(min(s["started_at"] for s in e["steps"]), max(s["ended_at"] for s in e["steps"])) for e in found]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for start, end in spans if start <= t < end) for t, _ in spans)


def test_queued_executions_past_the_concurrency_quota_wait_in_order(srv, admin):
    tenant, owner = tenant_with(admin, srv, concurrent_executions=2)
    install(owner, tenant, manual_flow("slow", PAUSE, MARK), activate=False)
    ids = [owner.post(f"/tenants/{tenant}/flows/slow/run", json={"input": {"i": i}}).json()["execution_id"]
           for i in range(6)]
    found = finished(owner, tenant, ids)
    assert [e["status"] for e in found] == ["succeeded"] * 6
    spans = _spans(found)
    assert _most_at_once(spans) == 2
    for k in range(2, 6):  # each starts once one of the two before it has ended: in the order queued
        assert spans[k][0] >= min(spans[k - 2][1], spans[k - 1][1]) - 0.01, spans

    free, free_owner = tenant_with(admin, srv)  # another tenant is not held up meanwhile
    install(free_owner, free, manual_flow("slow", PAUSE, MARK), activate=False)
    free_ids = [free_owner.post(f"/tenants/{free}/flows/slow/run", json={}).json()["execution_id"] for _ in range(4)]
    assert _most_at_once(_spans(finished(free_owner, free, free_ids))) == 4


def test_sync_webhooks_past_the_concurrency_quota_wait_their_turn(srv, admin):
    tenant, owner = tenant_with(admin, srv, concurrent_executions=2)
    install(owner, tenant, hook_flow("slow-hook", PAUSE, MARK))
    url = f"{srv.url}/hooks/{tenant}/slow-hook"
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: httpx.post(url, json={"i": i}, timeout=30), range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert sorted(a.json()["i"] for a in answers) == list(range(5))
    found = [owner.get(f"/tenants/{tenant}/executions/{a.headers['x-flowfuse-execution']}").json() for a in answers]
    assert _most_at_once(_spans(found)) == 2


def _backdate(data_dir, execution_id: str, days: float) -> str:
    """Make an execution look `days` old: its id (which begins with its creation time) and its times."""
    then = time.time() - days * 86400
    new = f"{int(then * 1000):012x}" + execution_id[12:]
    with sqlite3.connect(data_dir / "runs.db", timeout=10) as conn:
        conn.execute("UPDATE executions SET id=?, created_at=?, finished_at=CASE WHEN finished_at IS NULL THEN NULL "
                     "ELSE ? END WHERE id=?", (new, then, then + 1, execution_id))
        conn.execute("UPDATE steps SET execution_id=? WHERE execution_id=?", (new, execution_id))
        conn.execute("UPDATE resume_payloads SET execution_id=? WHERE execution_id=?", (new, execution_id))
    return new


def test_retention_deletes_old_finished_executions_but_not_unfinished_ones(srv, admin):
    tenant, owner = tenant_with(admin, srv, retention_days=2)
    install(owner, tenant, manual_flow("kept", MARK), activate=False)
    approval = hook_flow("approval", {"id": "hold", "type": "wait", "params": {"resume": "webhook"}})
    install(owner, tenant, approval)
    ran = [owner.post(f"/tenants/{tenant}/flows/kept/run", json={}).json()["execution_id"] for _ in range(3)]
    finished(owner, tenant, ran)
    waiting = httpx.post(f"{srv.url}/hooks/{tenant}/approval", json={}).headers["x-flowfuse-execution"]
    with sqlite3.connect(srv.data_dir / "runs.db") as conn:
        tenant_id = conn.execute("SELECT tenant_id FROM executions WHERE id=?", (waiting,)).fetchone()[0]
        conn.execute("INSERT INTO resume_payloads VALUES (?,?,?,?,?)", (ran[0], tenant_id, "x", b"[]", time.time()))
    usage_before = owner.get(f"/tenants/{tenant}/usage").json()["totals"]

    old = [_backdate(srv.data_dir, i, days=3) for i in ran[:2]]
    old_waiting = _backdate(srv.data_dir, waiting, days=3)
    young = _backdate(srv.data_dir, ran[2], days=1)

    def count(sql: str, *ids: str) -> int:
        with sqlite3.connect(srv.data_dir / "runs.db", timeout=10) as conn:
            return conn.execute(sql.format(",".join("?" * len(ids))), ids).fetchone()[0]
    poll(lambda: count("SELECT count(*) FROM executions WHERE id IN ({})", *old) == 0, timeout=10,
         what="the old executions to be deleted")
    assert count("SELECT count(*) FROM steps WHERE execution_id IN ({})", *old) == 0
    assert count("SELECT count(*) FROM resume_payloads WHERE execution_id IN ({})", *old) == 0
    assert owner.get(f"/tenants/{tenant}/executions/{old_waiting}").json()["status"] == "waiting"
    assert owner.get(f"/tenants/{tenant}/executions/{young}").json()["status"] == "succeeded"
    assert count("SELECT count(*) FROM steps WHERE execution_id IN ({})", old_waiting, young) > 0
    assert owner.get(f"/tenants/{tenant}/usage").json()["totals"] == usage_before  # billing records stay


def test_usage_counts_what_ran_per_day_as_json_and_csv(srv, admin):
    tenant, owner = tenant_with(admin, srv)
    install(owner, tenant, hook_flow("metered", MARK, {"id": "answer", "type": "respond_to_webhook",
                                                       "params": {"status": 201}}))
    install(owner, tenant, manual_flow("queued-one", MARK), activate=False)
    for i in range(4):
        assert httpx.post(f"{srv.url}/hooks/{tenant}/metered", json={"i": i, "pad": "x" * i}).status_code == 201
    queued = owner.post(f"/tenants/{tenant}/flows/queued-one/run", json={}).json()["execution_id"]
    finished(owner, tenant, [queued])
    with sqlite3.connect(srv.data_dir / "runs.db") as conn:
        tenant_id = owner.get(f"/tenants/{tenant}").json()["id"]
        steps, stored = conn.execute("SELECT count(*), sum(length(output)) FROM steps WHERE tenant_id=?",
                                     (tenant_id,)).fetchone()
    assert steps == 4 * 3 + 2
    expected = {"executions": 5, "steps": steps, "bytes": stored}
    report = poll(lambda: (r := owner.get(f"/tenants/{tenant}/usage").json())["totals"] == expected and r,
                  timeout=5, what=lambda: f"usage {owner.get(f'/tenants/{tenant}/usage').json()} to be {expected}")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert report["days"] == [{"day": today, **expected}] and report["to"] == today

    as_csv = owner.get(f"/tenants/{tenant}/usage", params={"format": "csv", "from": today, "to": today})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert f'filename="usage-{tenant}-{today}-{today}.csv"' in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows == [{"tenant": tenant, "day": today, **{k: str(v) for k, v in expected.items()}}]
    accepted = owner.get(f"/tenants/{tenant}/usage", headers={"accept": "text/csv"})
    assert accepted.text == as_csv.text

    assert owner.get("/usage").json()["totals"] == expected  # an API key's own tenant
    assert owner.get("/usage", params={"from": "2001-01-01", "to": "2001-01-31"}).json()["days"] == []
    ambiguous = problem(admin.get("/usage"), 422)  # a person with several tenants names one
    assert ambiguous["errors"][0]["field"] == "tenant"
    assert admin.get("/usage", params={"tenant": tenant}).json()["totals"] == expected
    assert problem(owner.get("/usage", params={"from": "yesterday"}), 422)["errors"][0]["field"] == "from"
    problem(owner.get(f"/tenants/{tenant}/usage", params={"from": today, "to": "2001-01-01"}), 422)
    stranger, _ = tenant_with(admin, srv)
    problem(owner.get("/usage", params={"tenant": stranger}), 404)
