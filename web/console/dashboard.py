"""The workspace dashboard: executions over time, success rate, p95 duration, failures, quota use.

It must render in 100 ms with a million executions in the workspace, so it reads only rollups and
bounded index ranges: how executions ended per hour from runs.db's `outcomes` (kept by triggers,
runs migration 0006), executions started per day from `usage`, the newest 1,000 finished
executions for the p95, the newest failures, and the quota use from the same `QuotaBook.view` as
`GET /api/v1/tenants/{t}/quotas`.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from litestar import Request, get
from litestar.response import Template

from appliance.usage import report

from ..api.base import runtime_of
from .base import workspace, workspace_page

#: How many finished executions the p95 duration is taken over (newest first; said on the page).
DURATION_WINDOW = 1000
#: The chart's geometry in SVG user units (it scales to the page's width).
WIDTH, HEIGHT, TOP = 700, 180, 10


@get("/t/{tenant:str}", sync_to_thread=True)
def dashboard_page(request: Request, tenant: str) -> Template:
    """`?range=24h` shows the last 24 hours by hour; the default is the last 14 days by day (UTC)."""
    person, access = workspace(request, tenant, "tenant.read")
    rt = runtime_of(request)
    hourly = request.query_params.get("range") == "24h"
    buckets = _buckets(time.time(), hourly)
    for row in rt.runs.outcomes(access.tenant_id, buckets[0]["start"]):
        start = row["hour"] * 3600
        bucket = next((b for b in reversed(buckets) if b["start"] <= start), None)
        if bucket is not None:
            for status in ("succeeded", "failed", "cancelled"):
                bucket[status] += row[status]
    totals = {s: sum(b[s] for b in buckets) for s in ("succeeded", "failed", "cancelled")}
    ended = totals["succeeded"] + totals["failed"]
    started = None  # executions created, from `usage`, which counts by day: only for the 14-day view
    if not hourly:
        first_day = dt.datetime.fromtimestamp(buckets[0]["start"], dt.UTC).date()
        started = report(rt.runs_db, access.tenant_id, first_day, first_day + dt.timedelta(days=13))["totals"]
    durations = rt.runs.recent_durations(access.tenant_id, DURATION_WINDOW)
    quota = rt.quotas.view(access.tenant_id)
    return workspace_page(
        request, "dashboard.html", person, access, hourly=hourly, chart=_chart(buckets, hourly), totals=totals,
        success_rate=(100 * totals["succeeded"] / ended) if ended else None,
        started=started and started["executions"], p95=_percentile(durations, 95), p50=_percentile(durations, 50),
        durations=len(durations), window=DURATION_WINDOW,
        failures=rt.runs.list(access.tenant_id, status="failed", limit=8),
        quota=quota, running=rt.runs.count_status(access.tenant_id, "running"),
        queued=rt.runs.count_status(access.tenant_id, "queued"))


def _buckets(now: float, hourly: bool) -> list[dict[str, Any]]:
    """The chart's bars, oldest first: the last 24 hours or the last 14 UTC days, this one included."""
    step = 3600 if hourly else 86400
    current = now // step * step
    count = 24 if hourly else 14
    return [{"start": current - (count - 1 - i) * step, "succeeded": 0, "failed": 0, "cancelled": 0}
            for i in range(count)]


def _chart(buckets: list[dict[str, Any]], hourly: bool) -> dict[str, Any]:
    """Bars stacked succeeded (bottom) and failed (top), scaled to the busiest bucket, with labels."""
    peak = max([b["succeeded"] + b["failed"] for b in buckets] + [1])
    slot = WIDTH / len(buckets)
    bars = []
    for i, b in enumerate(buckets):
        when = time.gmtime(b["start"])
        ok = (HEIGHT - TOP) * b["succeeded"] / peak
        bad = (HEIGHT - TOP) * b["failed"] / peak
        bars.append({"x": round(i * slot + slot * 0.15, 1), "width": round(slot * 0.7, 1),
                     "ok_y": round(HEIGHT - ok, 1), "ok_h": round(ok, 1),
                     "bad_y": round(HEIGHT - ok - bad, 1), "bad_h": round(bad, 1),
                     "label": time.strftime("%H:00" if hourly else "%b %d", when),
                     "title": time.strftime("%Y-%m-%d %H:00 UTC" if hourly else "%Y-%m-%d", when),
                     "show_label": not hourly or i % 3 == 0, "succeeded": b["succeeded"], "failed": b["failed"],
                     "cancelled": b["cancelled"]})
    return {"bars": bars, "peak": peak, "width": WIDTH, "height": HEIGHT, "slot": slot}


def _percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


routes = [dashboard_page]
