"""Logs: JSON lines off a terminal, request and execution ids, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging

import httpx

from appliance import logs
from appliance.settings import load
from tests.conftest import FAST_ENV, Server, flowfuse, free_port, poll


def _settings(**env: str):
    return load(env={**FAST_ENV, "FLOWFUSE_CONFIG": "", **env})


def test_the_filter_redacts_headers_api_keys_and_credential_secrets_and_adds_ids():
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        logs.setup(_settings(FLOWFUSE_LOGGING_FORMAT="json"), "test", stream=stream)
        logs.remember_secrets(["s3cr3t-credential-value", "abc"])  # under 4 characters: ignored
        token = logs.request_id.set("req-1")
        run = logs.execution_id.set("exe-1")
        log = logging.getLogger("flowfuse.test")
        log.info("headers %s", {"authorization": "Bearer tok-XYZ-123", "Cookie": "session=cook-XYZ-456",
                                "x-trace": "keep-me"})
        log.warning("Authorization: Basic dXNlcjpwYXNz\nnext line")
        log.info("key ffk_AbCdEf0123456789_xyz used; url https://x.test/?api_key=qq-XYZ-789&page=2; abc")
        try:
            raise RuntimeError("failed with s3cr3t-credential-value")
        except RuntimeError:
            log.exception("the node failed")
        logs.execution_id.reset(run)
        logs.request_id.reset(token)
        log.info("outside")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    text = stream.getvalue()
    for secret in ("tok-XYZ-123", "cook-XYZ-456", "dXNlcjpwYXNz", "AbCdEf0123456789", "qq-XYZ-789",
                   "s3cr3t-credential-value"):
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "INFO", "ERROR", "INFO"]
    assert all(line["request_id"] == "req-1" and line["execution_id"] == "exe-1" for line in lines[:4])
    assert "request_id" not in lines[4] and "execution_id" not in lines[4]
    assert "keep-me" in lines[0]["msg"] and "[redacted]" in lines[0]["msg"]
    assert "page=2" in lines[2]["msg"] and lines[2]["msg"].endswith("; abc")
    assert "RuntimeError: failed with [redacted]" in lines[3]["exc"]


def test_text_format_on_request():
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        logs.setup(_settings(FLOWFUSE_LOGGING_FORMAT="text"), "test", stream=stream)
        token = logs.request_id.set("req-9")
        logging.getLogger("flowfuse.test").info("hello ffk_0123456789abcdef")
        logs.request_id.reset(token)
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    line = stream.getvalue().strip()
    assert " INFO flowfuse.test [req=req-9]: hello ffk_[redacted]" in line
    assert not line.startswith("{")


def test_serve_writes_json_lines_with_ids_and_never_a_secret(tmp_path, peer):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    secret = "cred-SECRET-5e6f7a8b"
    made = flowfuse("credentials", "set", "api", "--type", "bearer", "--data", json.dumps({"token": secret}),
                    "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    srv = Server(data, free_port(), env={"FLOWFUSE_LOGGING_LEVEL": "DEBUG"}).start("serve")
    try:
        flow = {"name": "call", "nodes": [
            {"id": "hook", "type": "webhook", "params": {"path": "call"}},
            {"id": "req", "type": "http_request", "credential": "api",
             "params": {"url": peer.url + "/echo", "method": "POST", "body": {"token": "{{ json.token }}"}}}],
            "edges": [{"from": "hook", "to": "req"}]}
        srv.import_flow(flow)
        header = "Bearer hdr-SECRET-1a2b3c4d"
        r = httpx.post(srv.url + "/hooks/default/call", json={"token": secret}, headers={"authorization": header},
                       timeout=20)
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        r = httpx.post(srv.url + "/hooks/default/call", json={"n": 2}, headers={"x-request-id": "proxy-id-42"},
                       timeout=20)
        assert r.headers["x-request-id"] == "proxy-id-42"
        executions = srv.executions()
        ids = {e["id"] for e in executions}
        assert len(ids) == 2

        def lines():
            return [json.loads(line) for line in srv.log.read_text().splitlines() if line.strip()]

        # every line is a JSON object (stderr is a file here, not a terminal)
        poll(lambda: any(line.get("execution_id") in ids for line in lines()), what="a line with an execution id")
        found = lines()
        assert any(line.get("request_id") == rid for line in found)
        assert any(line.get("request_id") == "proxy-id-42" for line in found)
        assert {line["role"] for line in found} >= {"serve", "web"}
        # one access line per request, FlowFuse's own (uvicorn's would be a second, costly one)
        assert any(line["logger"] == "flowfuse.access" and "/hooks/default/call" in line["msg"] for line in found)
        assert not any(line["logger"] == "uvicorn.access" for line in found)
    finally:
        srv.stop()
    text = srv.log.read_text()
    assert "hdr-SECRET" not in text and secret not in text
    assert "[redacted]" in text  # the DEBUG access log did see the Authorization header
