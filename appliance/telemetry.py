"""Telemetry of every FlowFuse process: logs, step metrics, OpenTelemetry traces, Sentry errors.

`setup(settings, role)` is called once per process (`serve`, `web`, `worker`):

- logs: appliance.logs (JSON lines or text, request and execution ids, secrets redacted);
- step metrics (web and worker, always): the engine's step observer is told the duration of every
  node attempt as it is recorded, and the durations are kept as histograms in `metrics.db` in the
  data directory (a small SQLite file both processes add to about once a second; /metrics in the
  web process reads it);
- traces, only when `[telemetry] otlp_endpoint` is set: a trace per execution (its id derived
  from the execution id, so a resumed execution continues the same trace) with a span per run of
  it and a span per node attempt, and a span per web request; exported over OTLP/HTTP
  (protobuf) to `{otlp_endpoint}/v1/traces`. Unset, no tracer provider or exporter exists and
  nothing is sent anywhere (OTEL_* environment variables alone turn nothing on);
- errors, only when `[telemetry] sentry_dsn` is set: unhandled exceptions and ERROR log records go
  to the Sentry-compatible DSN (Sentry, GlitchTip) through sentry-sdk, without local variables or
  personal data, every string scrubbed by appliance.logs.redact first.

`python -m appliance.telemetry ARGS` is the `flowfuse ARGS` command line with `setup` run as
soon as the command has its settings: `flowfuse serve` starts its web and worker children so.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.executor import Executor, NodeContext, Run

from . import logs
from .settings import Settings

log = logging.getLogger("flowfuse.telemetry")

#: Upper bounds (seconds) of the step duration histogram buckets; a last bucket (+Inf) follows.
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
METRICS_DB = "metrics.db"
FLUSH_S = 1.0

_tracer = None  # opentelemetry Tracer when otlp_endpoint is set
_provider = None
_metrics: StepMetrics | None = None


def tracer():
    """The OpenTelemetry tracer of this process, or None when tracing is off."""
    return _tracer


# ---------------------------------------------------------------- step duration histograms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS step_durations (
    node_type TEXT NOT NULL,
    status TEXT NOT NULL,
    bucket INTEGER NOT NULL,   -- index into STEP_BUCKETS; len(STEP_BUCKETS) is +Inf
    count INTEGER NOT NULL,    -- observations in this bucket only (not cumulative)
    PRIMARY KEY (node_type, status, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS step_totals (
    node_type TEXT NOT NULL,
    status TEXT NOT NULL,
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    PRIMARY KEY (node_type, status)
) WITHOUT ROWID;
"""


def _connect(data_dir: Path, readonly: bool = False) -> sqlite3.Connection:
    path = Path(data_dir) / METRICS_DB
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    else:
        conn = sqlite3.connect(path, timeout=5, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    return conn


class StepMetrics:
    """Step durations observed in this process, added to metrics.db by a background thread.

    `observe` is the deque's own append (the engine calls it with a (node_type, status, seconds)
    tuple per step, on its hot path: no Python frame, no lock); the thread sorts them into
    histogram buckets about once a second and adds them to the file."""

    def __init__(self, data_dir: Path, flush_s: float = FLUSH_S):
        self.data_dir = Path(data_dir)
        self._seen: collections.deque[tuple[str, str, float]] = collections.deque()
        self.observe = self._seen.append
        #: (node_type, status) -> [counts per bucket..., count, sum] not written yet (a failed write keeps them)
        self._pending: dict[tuple[str, str], list[float]] = {}
        self._flushing = threading.Lock()  # the thread's flush and a caller's (close) never interleave
        self._conn = _connect(self.data_dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(flush_s,), name="flowfuse-metrics", daemon=True)
        self._thread.start()

    def _gather(self) -> None:
        seen, pending = self._seen, self._pending
        for _ in range(len(seen)):  # popleft is atomic: observations made meanwhile wait for the next round
            node_type, status, seconds = seen.popleft()
            row = pending.get((node_type, status))
            if row is None:
                row = pending[(node_type, status)] = [0] * (len(STEP_BUCKETS) + 3)
            row[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
            row[-2] += 1
            row[-1] += seconds

    def flush(self) -> None:
        """Write what was observed so far (called by the thread, and at close)."""
        with self._flushing:
            self._gather()
            if self._pending:
                self._write()

    def _write(self) -> None:
        try:
            with self._conn:
                for (node_type, status), row in self._pending.items():
                    self._conn.executemany(
                        "INSERT INTO step_durations VALUES (?,?,?,?) ON CONFLICT (node_type, status, bucket) "
                        "DO UPDATE SET count = count + excluded.count",
                        [(node_type, status, i, n) for i, n in enumerate(row[:-2]) if n])
                    self._conn.execute(
                        "INSERT INTO step_totals VALUES (?,?,?,?) ON CONFLICT (node_type, status) "
                        "DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum",
                        (node_type, status, row[-2], row[-1]))
        except sqlite3.Error as exc:  # metrics must never stop executions: keep the counts for the next try
            log.warning("could not write step metrics to %s: %s", self.data_dir / METRICS_DB, exc)
            return
        self._pending = {}

    def _loop(self, flush_s: float) -> None:
        while not self._stop.wait(flush_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        self._conn.close()


def read_step_histograms(data_dir: Path) -> list[dict[str, Any]]:
    """Every (node_type, status) histogram in metrics.db: buckets (cumulative, with +Inf), count, sum."""
    if not (Path(data_dir) / METRICS_DB).exists():
        return []
    conn = _connect(data_dir, readonly=True)
    try:
        totals = conn.execute("SELECT node_type, status, count, sum FROM step_totals ORDER BY 1, 2").fetchall()
        per = {}
        for node_type, status, bucket, count in conn.execute("SELECT node_type, status, bucket, count "
                                                              "FROM step_durations"):
            per.setdefault((node_type, status), {})[bucket] = count
    except sqlite3.OperationalError:  # created by a process that has not written its tables yet
        return []
    finally:
        conn.close()
    found = []
    for node_type, status, count, total in totals:
        counts = per.get((node_type, status), {})
        running, buckets = 0, []
        for i in range(len(STEP_BUCKETS) + 1):
            running += counts.get(i, 0)
            buckets.append(running)
        found.append({"node_type": node_type, "status": status, "buckets": buckets, "count": count, "sum": total})
    return found


# ---------------------------------------------------------------- the engine's step hook (tracing only)

def _trace_ids(execution_id: str) -> tuple[int, int]:
    digest = hashlib.sha256(execution_id.encode()).digest()
    return (int.from_bytes(digest[:16], "big") or 1), (int.from_bytes(digest[16:24], "big") or 1)


def execution_trace_id(execution_id: str) -> str:
    """The trace id (32 hex digits) of an execution's trace."""
    return f"{_trace_ids(execution_id)[0]:032x}"


@contextlib.contextmanager
def _span(name: str, **options):
    """A span of the tracer, current inside the block; a failure ends it as an error."""
    from opentelemetry import context, trace

    span = _tracer.start_span(name, **options)
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        _end_span(span, exc)
        raise
    else:
        _end_span(span, None)
    finally:
        context.detach(token)


def _end_span(span, exc: BaseException | None) -> None:
    import asyncio

    from opentelemetry.trace import Status, StatusCode

    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        message = logs.redact(f"{type(exc).__name__}: {exc}")
        span.set_status(Status(StatusCode.ERROR, message))
        span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": message})
    span.end()


def step_hook(run: Run, ctx: NodeContext | None):
    """The engine's StepHook (see engine.executor) while tracing: a span per invocation of a run, parent
    of a span per attempt of a node."""
    if ctx is not None:
        return _span(f"step {ctx.node.id}", attributes={
            "flowfuse.execution_id": ctx.run.ref.id, "flowfuse.node": ctx.node.id,
            "flowfuse.node_type": ctx.node.type, "flowfuse.step_key": ctx.key, "flowfuse.attempt": ctx.attempt})
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

    trace_id, span_id = _trace_ids(run.ref.id)
    root = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    current = trace.get_current_span().get_span_context()  # e.g. the webhook request that runs it inline
    return _span(f"execution {run.flow.name}", context=trace.set_span_in_context(NonRecordingSpan(root)),
                 links=[Link(current)] if current.is_valid else None,
                 attributes={"flowfuse.execution_id": run.ref.id, "flowfuse.tenant_id": run.ref.tenant_id,
                             "flowfuse.flow": run.flow.name, "flowfuse.trigger": run.trigger})


def _observe_and_log(step: tuple[str, str, float]) -> None:
    """The step observer at DEBUG: the duration goes to the histograms and to the log."""
    if _metrics is not None:
        _metrics.observe(step)
    node_type, status, seconds = step
    log.debug("step of %s %s in %.1f ms", node_type, "succeeded" if status == "ok" else "failed", seconds * 1000)


# ---------------------------------------------------------------- Sentry

_SECRET_KEYS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "password", "secret",
                "token", "api_key", "apikey", "credential", "private_key")


def scrub(value: Any) -> Any:
    """An event (or any JSON-like value) with secrets replaced: values under secret-looking keys,
    and every string through appliance.logs.redact."""
    if isinstance(value, str):
        return logs.redact(value)
    if isinstance(value, Mapping):
        return {k: ("[redacted]" if isinstance(k, str) and any(s in k.lower() for s in _SECRET_KEYS)
                    and isinstance(v, (str, bytes)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], str) and value[0].lower() in _SECRET_KEYS:
            return [value[0], "[redacted]"]  # a header as a [name, value] pair
        return [scrub(v) for v in value]
    return value


def _before_send(event: dict, hint: dict) -> dict:
    return scrub(event)


def setup_sentry(settings: Settings, role: str) -> None:
    import sentry_sdk
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(dsn=settings.telemetry.sentry_dsn, send_default_pii=False, include_local_variables=False,
                    max_request_body_size="never", before_send=_before_send, before_breadcrumb=_breadcrumb,
                    event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + ["credential", "private_key"],
                                                 recursive=True),
                    traces_sample_rate=None, release=_release(), server_name=None)
    sentry_sdk.set_tag("flowfuse.role", role)


def _breadcrumb(crumb: dict, hint: dict) -> dict:
    return scrub(crumb)


def _release() -> str | None:
    try:
        from importlib.metadata import version

        return f"flowfuse@{version('flowfuse')}"
    except Exception:
        return None


# ---------------------------------------------------------------- OpenTelemetry

def traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def setup_tracing(settings: Settings, role: str):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _provider
    name = settings.telemetry.service_name + ("-worker" if role == "worker" else "")
    _provider = TracerProvider(resource=Resource.create({"service.name": name, "flowfuse.role": role}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(
        settings.telemetry.otlp_endpoint)), schedule_delay_millis=1000))
    trace.set_tracer_provider(_provider)
    return _provider.get_tracer("flowfuse")


# ---------------------------------------------------------------- per process

def setup(settings: Settings, role: str) -> None:
    """Logs, metrics, traces and error reports of this process (see the module docstring)."""
    global _tracer, _metrics
    logs.setup(settings, role)
    if settings.telemetry.sentry_dsn:
        setup_sentry(settings, role)
    if settings.telemetry.otlp_endpoint and role != "serve":
        _tracer = setup_tracing(settings, role)
        log.info("tracing to %s", traces_url(settings.telemetry.otlp_endpoint))
    if role in ("web", "worker"):
        if settings.data_dir.is_dir():
            _metrics = StepMetrics(settings.data_dir)
        # set as staticmethods: a plain function would bind as a method of the Executor
        if log.isEnabledFor(logging.DEBUG):
            Executor.step_observer = staticmethod(_observe_and_log)
        elif _metrics is not None:
            Executor.step_observer = staticmethod(_metrics.observe)  # a deque's append: no Python frame at all
        if _tracer is not None:
            Executor.step_hook = staticmethod(step_hook)


def shutdown() -> None:
    """Write what is buffered (step metrics, spans); called at exit."""
    global _metrics
    Executor.step_observer = None
    if _metrics is not None:
        _metrics.close()
        _metrics = None
    if _provider is not None:
        _provider.force_flush(5000)
