"""OpenTelemetry traces to a loopback OTLP/HTTP collector, and Sentry envelopes to a loopback DSN."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from appliance import telemetry
from appliance.settings import load
from engine.executor import Executor
from tests.conftest import FAST_ENV, ROOT, Server, flowfuse, free_port, poll


class Loopback:
    """A real HTTP server on 127.0.0.1 that keeps every POST body by path (decompressed)."""

    def __init__(self, answer: bytes = b"") -> None:
        self.bodies: list[tuple[str, bytes, dict]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli
                    body = brotli.decompress(body)
                bodies.append((self.path, body, dict(self.headers)))
                self.send_response(200)
                self.send_header("content-type", self.headers.get("content-type", "application/octet-stream"))
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Loopback(ExportTraceServiceResponse().SerializeToString())
    yield c
    c.close()


def spans(collector: Loopback) -> list[dict]:
    found = []
    for path, body, _ in list(collector.bodies):
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attrs = {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}
                    found.append({"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                  "parent": span.parent_span_id.hex(), "attrs": attrs, "service": service,
                                  "status": span.status.code})
    return found


def test_an_execution_is_one_trace_with_a_span_per_step(tmp_path, collector):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port(), env={"FLOWFUSE_TELEMETRY_OTLP_ENDPOINT": collector.url,
                                         "FLOWFUSE_TELEMETRY_SERVICE_NAME": "ff-test"}).start("serve")
    try:
        flow = {"name": "three", "nodes": [
            {"id": "hook", "type": "webhook", "params": {"path": "three", "respond": "immediately"}},
            {"id": "a", "type": "set", "params": {"fields": {"a": 1}}},
            {"id": "b", "type": "set", "params": {"fields": {"b": 2}}}],
            "edges": [{"from": "hook", "to": "a"}, {"from": "a", "to": "b"}]}
        srv.import_flow(flow)
        r = httpx.post(srv.url + "/hooks/default/three", json={"n": 1}, timeout=20)
        assert r.status_code == 202
        execution_id = r.json()["execution_id"]
        assert srv.wait_for(execution_id)["status"] == "succeeded"

        def steps():
            return [s for s in spans(collector) if s["attrs"].get("flowfuse.execution_id") == execution_id
                    and s["name"].startswith("step ")]

        poll(lambda: len(steps()) >= 3, what=lambda: f"3 step spans in {spans(collector)}")
        poll(lambda: any(s["name"] == "POST /hooks/{path}" for s in spans(collector)), what="the request span")
    finally:
        srv.stop()
    found = spans(collector)
    mine = [s for s in found if s["attrs"].get("flowfuse.execution_id") == execution_id]
    run = [s for s in mine if s["name"] == "execution three"]
    steps = sorted((s for s in mine if s["name"].startswith("step ")), key=lambda s: s["name"])
    assert len(run) == 1 and [s["name"] for s in steps] == ["step a", "step b", "step hook"]
    assert {s["trace_id"] for s in mine} == {telemetry.execution_trace_id(execution_id)}
    assert all(s["parent"] == run[0]["span_id"] for s in steps)
    assert run[0]["service"] == "ff-test-worker"
    request = [s for s in found if s["name"] == "POST /hooks/{path}"]
    assert request and request[0]["service"] == "ff-test" and request[0]["attrs"]["http.response.status_code"] == 202


def test_without_an_endpoint_there_is_no_tracer_and_no_exporter(tmp_path):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    settings = load(env={**FAST_ENV, "FLOWFUSE_CONFIG": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                    overrides={"storage.data_dir": str(tmp_path)})
    import logging
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        telemetry.setup(settings, "worker")
        assert telemetry.tracer() is None
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # the API's no-op proxy: nothing exported
        assert Executor.step_hook is None  # no spans: the engine runs steps without a context manager
        assert Executor.step_observer is not None  # step durations still go to the histograms
    finally:
        telemetry.shutdown()
        Executor.step_hook = Executor.step_observer = None
        root.handlers[:] = before[0]
        root.setLevel(before[1])


CRASH = """
import sys
from appliance.settings import load
from appliance import logs, telemetry
settings = load(env={"FLOWFUSE_CONFIG": "", "FLOWFUSE_TELEMETRY_SENTRY_DSN": sys.argv[1]})
telemetry.setup(settings, "worker")
logs.remember_secrets(["cred-SECRET-9f8e7d"])
headers = {"authorization": "Bearer hdr-SECRET-1a2b", "x-trace": "t-1"}
raise RuntimeError("the vault said cred-SECRET-9f8e7d for ffk_SECRETkey0123456789 " + repr(headers))
"""


def test_unhandled_errors_go_to_the_sentry_dsn_scrubbed(tmp_path):
    sentry = Loopback(b"{}")
    try:
        dsn = f"http://publickey0123@127.0.0.1:{sentry.server.server_address[1]}/42"
        done = subprocess.run([sys.executable, "-c", CRASH, dsn], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)
        assert done.returncode == 1
        assert "RuntimeError" in done.stderr and "SECRET" not in done.stderr  # the log line is redacted too
        poll(lambda: sentry.bodies, what="an envelope at the DSN")
    finally:
        sentry.close()
    path, body, headers = sentry.bodies[0]
    assert path == "/api/42/envelope/"
    assert "sentry_key=publickey0123" in headers.get("X-Sentry-Auth", "")
    text = body.decode()
    assert "RuntimeError" in text and "SECRET" not in text
    items = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = [i for i in items if "exception" in i]
    assert events and events[0]["tags"]["flowfuse.role"] == "worker"
