"""`GET /metrics`: Prometheus text exposition (format 0.0.4) of the whole instance.

The web and worker processes are separate, so what is exposed is read at scrape time from where
each process keeps it, not from this process's memory (except webhook latency, which only this
process sees):

- flowfuse_executions_finished_total{tenant,status}: the `outcomes` rollup of runs.db (kept when
  retention deletes old executions);
- flowfuse_executions{tenant,flow,status}: executions stored now, counted on the
  (tenant_id, flow_id, status) index;
- flowfuse_step_duration_seconds{node_type,status}: histograms the engine's step observer records in
  metrics.db (appliance.telemetry), web and worker alike;
- flowfuse_webhook_duration_seconds{code}: webhook requests answered by this process;
- flowfuse_queue_depth{state}: messages in queue.db, ready or scheduled for later;
- flowfuse_worker_heartbeat_age_seconds: since the freshest worker heartbeat;
- flowfuse_database_size_bytes{database}: each SQLite file with its write-ahead log.

Who may read it: an instance admin (session or API key), or a scraper sending
`Authorization: Bearer <[telemetry] metrics_token>`.
"""

from __future__ import annotations

import bisect
import hmac
import itertools
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from litestar import Request, Response, get

from appliance import telemetry
from appliance.identity import Forbidden, Unauthorized
from appliance.telemetry import STEP_BUCKETS, read_step_histograms

from .api.base import principal_of, problem, runtime_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DATABASES = ("flowfuse.db", "runs.db", "queue.db", "audit.db", "metrics.db")


class Histogram:
    """A labelled histogram kept in this process's memory (thread-safe, cheap to observe)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._series: dict[str, list[float]] = {}  # label value -> [per-bucket counts..., +Inf, count, sum]

    def observe(self, label: str, seconds: float) -> None:
        index = bisect.bisect_left(self.buckets, seconds)  # the first bucket whose bound is >= seconds
        with self._lock:
            row = self._series.get(label)
            if row is None:
                row = self._series[label] = [0] * (len(self.buckets) + 3)
            row[index] += 1
            row[-2] += 1
            row[-1] += seconds

    def snapshot(self) -> list[tuple[str, list[int], int, float]]:
        """(label, cumulative bucket counts with +Inf, count, sum) per label."""
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        found = []
        for label, row in sorted(series.items()):
            running, cumulative = 0, []
            for n in row[:-2]:
                running += n
                cumulative.append(int(running))
            found.append((label, cumulative, int(row[-2]), row[-1]))
        return found


#: Time from a webhook request's arrival to the end of its response, by status class (2xx, 4xx...).
WEBHOOK_LATENCY = Histogram(WEBHOOK_BUCKETS)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: object) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")

    def histogram(self, name: str, bounds: tuple[float, ...], cumulative: list[int], count: int, total: float,
                  **labels: object) -> None:
        for bound, n in zip([*bounds, float("inf")], cumulative):
            self.sample(f"{name}_bucket", n, **labels, le=_number(float(bound)))
        self.sample(f"{name}_count", count, **labels)
        self.sample(f"{name}_sum", float(total), **labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def render(runtime) -> str:
    """The exposition of every metric (see the module docstring)."""
    data = runtime.settings.data_dir
    out = Exposition()
    tenants = {r["id"]: r["slug"] for r in runtime.control.query("SELECT id, slug FROM tenants")}
    flows = {r["id"]: r["name"] for r in runtime.control.query("SELECT id, name FROM flows")}

    out.family("flowfuse_executions_finished_total", "counter",
               "Executions that ended, by tenant and status (from the outcomes rollup; survives retention).")
    rows = runtime.runs_db.query("SELECT tenant_id, sum(succeeded) AS s, sum(failed) AS f, sum(cancelled) AS c "
                                 "FROM outcomes GROUP BY tenant_id ORDER BY tenant_id")
    for r in rows:
        tenant = tenants.get(r["tenant_id"], r["tenant_id"])
        for status, key in (("succeeded", "s"), ("failed", "f"), ("cancelled", "c")):
            out.sample("flowfuse_executions_finished_total", r[key] or 0, tenant=tenant, status=status)

    out.family("flowfuse_executions", "gauge", "Executions stored now, by tenant, flow and status.")
    rows = runtime.runs_db.query("SELECT tenant_id, flow_id, status, count(*) AS n FROM executions "
                                 "GROUP BY tenant_id, flow_id, status ORDER BY 1, 2, 3")
    for r in rows:
        out.sample("flowfuse_executions", r["n"], tenant=tenants.get(r["tenant_id"], r["tenant_id"]),
                   flow=flows.get(r["flow_id"], r["flow_id"] or ""), status=r["status"])

    out.family("flowfuse_step_duration_seconds", "histogram",
               "Duration of node attempts (web and worker), by node type and outcome (ok, error).")
    for h in read_step_histograms(data):
        out.histogram("flowfuse_step_duration_seconds", STEP_BUCKETS, h["buckets"], h["count"], h["sum"],
                      node_type=h["node_type"], status=h["status"])

    out.family("flowfuse_webhook_duration_seconds", "histogram",
               "Webhook requests from arrival to the end of the response, by status class (this web process).")
    for label, cumulative, count, total in WEBHOOK_LATENCY.snapshot():
        out.histogram("flowfuse_webhook_duration_seconds", WEBHOOK_BUCKETS, cumulative, count, total, code=label)

    out.family("flowfuse_queue_depth", "gauge", "Messages in the queue: ready to run now, or scheduled for later.")
    ready = scheduled = 0
    queue_db = data / "queue.db"
    if queue_db.exists():
        conn = _readonly(queue_db)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            ready = conn.execute("SELECT count(*) FROM task").fetchone()[0] if "task" in tables else 0
            scheduled = conn.execute("SELECT count(*) FROM schedule").fetchone()[0] if "schedule" in tables else 0
        finally:
            conn.close()
    out.sample("flowfuse_queue_depth", ready, state="ready")
    out.sample("flowfuse_queue_depth", scheduled, state="scheduled")

    beat = runtime.runs_db.one("SELECT max(heartbeat_at) AS beat FROM processes WHERE kind='worker'")
    out.family("flowfuse_worker_heartbeat_age_seconds", "gauge",
               "Seconds since the freshest worker heartbeat (absent: no worker has ever reported).")
    if beat and beat["beat"]:
        out.sample("flowfuse_worker_heartbeat_age_seconds", round(max(0.0, time.time() - beat["beat"]), 3))

    out.family("flowfuse_database_size_bytes", "gauge", "Size of each SQLite database with its write-ahead log.")
    for name in DATABASES:
        size = sum(p.stat().st_size for p in (data / name, data / f"{name}-wal") if p.exists())
        if (data / name).exists():
            out.sample("flowfuse_database_size_bytes", size, database=name)
    return out.text()


def _allowed(request: Request) -> Response | None:
    """None if the caller may read /metrics, else the problem response to send."""
    token = request.app.state.runtime.settings.telemetry.metrics_token
    auth = request.headers.get("authorization", "")
    if token and auth:
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
    try:
        principal = principal_of(request)
    except Unauthorized as exc:
        detail = str(exc) + (" (or send the [telemetry] metrics_token as a bearer token)" if token else
                             " (or set [telemetry] metrics_token for a scraper)")
        return problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="flowfuse"'})
    except Forbidden as exc:
        return problem(403, "Forbidden", str(exc))
    if not principal.is_admin:
        return problem(403, "Forbidden", "only instance admins (or a scraper with the [telemetry] metrics_token) "
                                         "may read /metrics")
    return None


@get("/metrics", include_in_schema=False, sync_to_thread=True)
def metrics(request: Request) -> Response:
    """Prometheus metrics of the instance (see the module docstring)."""
    refused = _allowed(request)
    if refused is not None:
        return refused
    return Response(render(runtime_of(request)), media_type=CONTENT_TYPE)


# ---------------------------------------------------------------- request ids, spans, webhook latency

_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_request_prefix = secrets.token_hex(3)
_request_seq = itertools.count(1)
_access = logging.getLogger("flowfuse.access")


def request_id(scope) -> str:
    """The caller's X-Request-Id when it is a sane token (a proxy's), else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= 64 and set(given) <= _REQUEST_ID_CHARS:
                return given
            break
    return f"{_request_prefix}-{next(_request_seq):x}"


def observe_request(scope, hook: bool, status: int, elapsed: float, span) -> None:
    """After a request (see web.app.App): webhook latency, the span's end, the DEBUG access line."""
    if hook:
        WEBHOOK_LATENCY.observe(f"{status // 100}xx" if status else "none", elapsed)
    if span is not None:
        _end_span(*span, status)
    if _access.isEnabledFor(logging.DEBUG):
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        _access.debug("%s %s -> %s in %.1f ms; headers %s", scope["method"], scope["path"], status, elapsed * 1000,
                      headers)


def start_span(scope, rid: str):
    """A server span for this request, current until observe_request ends it (tracing is on)."""
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
               if k in (b"traceparent", b"tracestate")}
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    path = scope["path"]
    route = "/hooks/{path}" if path.startswith("/hooks/") else path  # webhook paths are per flow: keep names few
    span = telemetry.tracer().start_span(
        f"{scope['method']} {route}", context=parent, kind=SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "url.path": path, "flowfuse.request_id": rid})
    return span, context.attach(trace.set_span_in_context(span))


def _end_span(span, ctx_token, status: int) -> None:
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if status >= 500 or not status:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    context.detach(ctx_token)
