"""/metrics: Prometheus text of a real `flowfuse serve`, for instance admins and the metrics token only."""

from __future__ import annotations

import re

import httpx

from tests.api_helpers import ADMIN, Client, new_key, new_user, signed_in_admin, start_with_admin
from tests.conftest import poll

TOKEN = "scrape-token-0123456789"


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_of_a_running_instance(tmp_path):
    srv = start_with_admin(tmp_path / "data", "serve", env={"FLOWFUSE_TELEMETRY_METRICS_TOKEN": TOKEN})
    try:
        flow = {"name": "echo", "nodes": [
            {"id": "hook", "type": "webhook", "params": {"path": "echo"}},
            {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}},
            {"id": "stop", "type": "stop_and_error", "params": {"message": "no {{ json.n }}"}}],
            "edges": [{"from": "hook", "to": "mark"}, {"from": "mark", "to": "stop"}]}
        srv.import_flow(flow)
        later = {"name": "later", "nodes": [
            {"id": "hook", "type": "webhook", "params": {"path": "later", "respond": "immediately"}},
            {"id": "mark", "type": "set", "params": {"fields": {"seen": True}}}],
            "edges": [{"from": "hook", "to": "mark"}]}
        srv.import_flow(later)
        assert httpx.post(srv.url + "/hooks/default/echo", json={"n": 1}, timeout=20).status_code == 500
        queued = httpx.post(srv.url + "/hooks/default/later", json={"n": 2}, timeout=20)
        assert queued.status_code == 202
        srv.wait_for(queued.json()["execution_id"])

        # who may read it
        anonymous = httpx.get(srv.url + "/metrics")
        assert anonymous.status_code == 401 and "metrics_token" in anonymous.json()["detail"]
        assert httpx.get(srv.url + "/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        admin = signed_in_admin(srv)
        _, email = new_user(admin, "default", "admin")
        member = Client(srv.url)
        assert member.sign_in(email).status_code == 201
        assert member.http.get(srv.url + "/metrics").status_code == 403  # a tenant admin is not an instance admin
        key = new_key(admin, "default", "admin")
        assert httpx.get(srv.url + "/metrics", headers={"authorization": f"Bearer {key}"}).status_code == 403
        by_admin = admin.http.get(srv.url + "/metrics")
        assert by_admin.status_code == 200, by_admin.text
        assert by_admin.headers["content-type"].startswith("text/plain; version=0.0.4")

        def scrape() -> str:
            r = httpx.get(srv.url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
            return r.text

        # step durations are written by the worker (and the web process) about once a second
        def with_steps() -> str | None:
            text = scrape()
            return text if _value(text, "flowfuse_step_duration_seconds_count", node_type="set", status="ok") == 2 \
                else None

        text = poll(with_steps, what=lambda: f"step histograms in\n{scrape()}")
        assert _value(text, "flowfuse_step_duration_seconds_count", node_type="stop_and_error", status="error") == 1
        assert _value(text, "flowfuse_step_duration_seconds_bucket", node_type="set", status="ok", le="+Inf") == 2
        assert _value(text, "flowfuse_executions_finished_total", tenant="default", status="succeeded") == 1
        assert _value(text, "flowfuse_executions_finished_total", tenant="default", status="failed") == 1
        assert _value(text, "flowfuse_executions", tenant="default", flow="echo", status="failed") == 1
        assert _value(text, "flowfuse_executions", tenant="default", flow="later", status="succeeded") == 1
        assert _value(text, "flowfuse_webhook_duration_seconds_count", code="5xx") == 1
        assert _value(text, "flowfuse_webhook_duration_seconds_count", code="2xx") == 1
        assert _value(text, "flowfuse_queue_depth", state="ready") is not None
        assert _value(text, "flowfuse_worker_heartbeat_age_seconds") >= 0
        for db in ("flowfuse.db", "runs.db", "queue.db", "metrics.db"):
            assert _value(text, "flowfuse_database_size_bytes", database=db) > 0
        # every sample line is `name{labels} number` and every family has HELP and TYPE
        for line in text.splitlines():
            assert line.startswith("# HELP ") or line.startswith("# TYPE ") or \
                re.fullmatch(r'[a-z_]+(\{.*\})? [-+0-9.eInf]+', line), line
        assert ADMIN not in text
    finally:
        srv.stop()
