"""FlowFuse benchmarks: each figure is printed beside its target. Run with `make bench`.

1. Synchronous webhook -> set -> respond under wrk (50 connections), every execution recorded.
2. A 100-step sequential flow of `set` nodes, every step checkpointed, on one worker process.
3. Asynchronous webhooks drained through Huey by the worker.
4. Resident memory of web + worker, idle and under load 1.
5. `GET /api/v1/tenants/{tenant}/executions` pages over 1,000,000 executions of 100 flows (`--only list`).
6. Console pages (flows list, executions list, an execution, the dashboard) with 10,000 flows and
   1,000,000 executions in one tenant (`--only pages`).
7. CPU instructions per synchronous webhook under valgrind (`--only instructions`): unlike throughput,
   it does not move with the machine's load, so a regression of a few percent shows.

Everything runs on 127.0.0.1 against real processes (`flowfuse serve` / `flowfuse worker`) over
a fresh data directory. Figures depend on the machine; bench/README.md records measured runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYNC_FLOW = {"name": "bench-sync", "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "bench-sync", "method": "POST"}},
    {"id": "set", "type": "set", "params": {"fields": {"total": "{{ json.amount * 2 }}", "ok": True}}},
    {"id": "respond", "type": "respond_to_webhook", "params": {"status": 200}},
], "edges": [{"from": "hook", "to": "set"}, {"from": "set", "to": "respond"}]}

ASYNC_FLOW = {"name": "bench-async", "nodes": [
    {"id": "hook", "type": "webhook", "params": {"path": "bench-async", "method": "POST", "respond": "immediately"}},
    {"id": "set", "type": "set", "params": {"fields": {"total": "{{ json.amount * 2 }}"}}},
], "edges": [{"from": "hook", "to": "set"}]}


def long_flow(steps: int = 100) -> dict:
    nodes = [{"id": "start", "type": "manual"}] + [
        {"id": f"s{i}", "type": "set", "params": {"fields": {"step": i, "acc": "{{ json.acc + 1 }}"}}}
        for i in range(steps)]
    edges = [{"from": "start", "to": "s0"}] + [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(steps - 1)]
    return {"name": "bench-100-steps", "nodes": nodes, "edges": edges}


LUA = """wrk.method = "POST"
wrk.body = '{"amount": 21, "customer": "c-1"}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(data: Path, *args: str, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "appliance", *args, "--data-dir", str(data)], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if out.returncode:
        raise SystemExit(f"flowfuse {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> dict[str, int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        cpid, _, cmd = line.strip().partition(" ")
        for kind in ("web", "worker"):
            if f" {kind} " in f" {cmd} ":
                found[kind] = int(cpid)
    return found


class Serve:
    def __init__(self, data: Path, env: dict | None = None):
        self.data, self.port = data, free_port()
        self.log = (data.parent / "serve.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--data-dir", str(data), "--port",
                                      str(self.port)], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("flowfuse serve did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)


def wrk(url: str, seconds: int, connections: int = 50, lua: str = LUA) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(lua)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True).stdout
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {"rps": rps, "requests": total, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}


def count(data: Path, sql: str) -> int:
    with sqlite3.connect(data / "runs.db") as conn:
        return conn.execute(sql).fetchone()[0]


def line(name: str, value: float, unit: str, target: str, ok: bool) -> None:
    print(f"  {name:<48} {value:>10,.1f} {unit:<14} target {target:<14} {'OK' if ok else 'BELOW TARGET'}")


def prepare(base: Path, name: str, flow: dict, activate: bool = True) -> Path:
    """A fresh data directory under base/name with the flow imported (and activated)."""
    data = base / name / "data"
    cli(data, "init")
    flow_file = base / name / "flow.json"
    flow_file.write_text(json.dumps(flow))
    cli(data, "flow", "import", str(flow_file), *(["--activate"] if activate else []))
    return data


def bench_sync_and_memory(base: Path, seconds: int) -> None:
    data = prepare(base, "sync", SYNC_FLOW)
    serve = Serve(data)
    try:
        time.sleep(2)
        pids = children(serve.proc.pid)
        idle = rss_mb(pids["web"]) + rss_mb(pids["worker"])
        url = f"{serve.url}/hooks/default/bench-sync"
        wrk(url, 3)  # warm up
        before = count(data, "SELECT count(*) FROM executions")
        peak = [0.0]
        sampler = subprocess.Popen([sys.executable, "-c", (
            "import sys,time\n"
            "def r(p):\n"
            "  for l in open(f'/proc/{p}/status'):\n"
            "    if l.startswith('VmRSS:'): return int(l.split()[1])/1024\n"
            "m=0\nend=time.time()+float(sys.argv[3])\n"
            "while time.time()<end:\n"
            "  m=max(m,r(sys.argv[1])+r(sys.argv[2])); time.sleep(0.2)\n"
            "print(m)"), str(pids["web"]), str(pids["worker"]), str(seconds)], stdout=subprocess.PIPE, text=True)
        result = wrk(url, seconds)
        peak[0] = float(sampler.communicate()[0].strip() or 0)
        time.sleep(1)
        recorded = count(data, "SELECT count(*) FROM executions WHERE status='succeeded'") - before
        steps = count(data, "SELECT count(*) FROM steps")
    finally:
        serve.stop()
    print(f"1. Synchronous webhook -> set -> respond, wrk -t1 -c50 -d{seconds}s "
          f"({result['requests']:,} requests, {result['non2xx']} non-2xx{', socket errors ' + result['socket_errors'] if result['socket_errors'] else ''})")
    line("executions/s", result["rps"], "exec/s", ">= 3,000", result["rps"] >= 3000)
    line("p99 latency", result["p99_ms"], "ms", "<= 30", result["p99_ms"] <= 30)
    line("p50 latency", result["p50_ms"], "ms", "(no target)", True)
    line("executions recorded in runs.db / requests answered", recorded / max(1, result["requests"]) * 100, "%",
         "100 %", recorded >= result["requests"])
    print(f"  ({steps:,} step rows in runs.db)")
    print("4. Resident memory (web + worker)")
    line("idle", idle, "MB", "<= 150", idle <= 150)
    line("peak under load 1", peak[0], "MB", "<= 300", peak[0] <= 300)


def queued_long_flows(base: Path, name: str, flows: int) -> Path:
    """A data directory with `flows` runs of the 100-step flow queued (in runs.db, not in Huey's queue)."""
    data = prepare(base, name, long_flow(), activate=False)
    from appliance.runtime import Runtime
    from appliance.settings import load

    settings = load(env={}, overrides={"storage.data_dir": str(data)})
    runtime = Runtime(settings)
    flow = runtime.catalog.flow(runtime.tenant_id("default"), "bench-100-steps")
    for _ in range(flows):
        runtime.queue_execution(flow, "manual", [{"acc": 0}])
    runtime.close()
    return data


def bench_long_flow(base: Path, flows: int, checkpoint: str) -> None:
    data = queued_long_flows(base, "long", flows)
    env = {"FLOWFUSE_ENGINE_CHECKPOINT": checkpoint, "FLOWFUSE_WORKER_CONCURRENCY": "64"}
    log = (base / "long" / "worker.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "worker", "--data-dir", str(data)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    try:
        while count(data, "SELECT count(*) FROM executions WHERE status IN ('succeeded','failed')") < flows:
            if time.monotonic() - start > 600:
                raise SystemExit("the 100-step benchmark did not finish in 10 minutes")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    failed = count(data, "SELECT count(*) FROM executions WHERE status='failed'")
    steps = count(data, "SELECT count(*) FROM steps")
    with sqlite3.connect(data / "runs.db") as conn:
        first, last = conn.execute("SELECT min(started_at), max(ended_at) FROM steps").fetchone()
    running = last - first
    how = "each step checkpointed" if checkpoint == "every_step" else "checkpoint = effects (one commit per run)"
    print(f"2. {flows} runs of a 100-step sequential flow of set nodes, {how}, one worker "
          f"({failed} failed; {steps:,} step rows; {elapsed - running:.2f} s of process start before the first step)")
    line("flows/s, first step to last", flows / running, "flows/s", ">= 200", flows / running >= 200)
    line("steps/s, first step to last", steps / running, "steps/s", ">= 20,000", steps / running >= 20000)
    line("flows/s, from starting the worker process", flows / elapsed, "flows/s", "(no target)", True)


def bench_async(base: Path, seconds: int) -> None:
    data = prepare(base, "async", ASYNC_FLOW)
    serve = Serve(data)
    try:
        url = f"{serve.url}/hooks/default/bench-async"
        finished = "SELECT count(*) FROM executions WHERE status IN ('succeeded', 'failed')"
        start = time.monotonic()
        result = wrk(url, seconds)
        load_end, done_at_load_end = time.monotonic(), count(data, finished)
        accepted = count(data, "SELECT count(*) FROM executions")
        while count(data, finished) < accepted:
            if time.monotonic() - start > seconds + 600:
                raise SystemExit("the worker did not drain the queue in 10 minutes")
            time.sleep(0.05)
        drained = time.monotonic() - start
        alone = (accepted - done_at_load_end) / max(1e-9, time.monotonic() - load_end)
        done = count(data, "SELECT count(*) FROM executions WHERE status='succeeded'")
    finally:
        serve.stop()
    print(f"3. Asynchronous webhooks drained through Huey, wrk -t1 -c50 -d{seconds}s ({result['requests']:,} "
          f"accepted with 202, {result['non2xx']} non-2xx)")
    line("accepted (202) per second", result["rps"], "req/s", "(no target)", True)
    line("finished per second, from first request to last finish", done / drained, "exec/s", ">= 1,000",
         done / drained >= 1000)
    line("finished per second after the load stopped (worker alone)", alone, "exec/s", ">= 1,000", alone >= 1000)


LIST_STATUSES = {"succeeded": 90, "failed": 8, "cancelled": 1.5, "waiting": 0.5}  # % of the rows
LIST_LUA = """wrk.headers["Authorization"] = "Bearer {key}"
local paths = {{{paths}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def list_flow(i: int) -> dict:
    trigger = ({"id": "hook", "type": "webhook", "params": {"path": f"list-{i}"}} if i % 2
               else {"id": "hook", "type": "manual"})
    set_ok = {"id": "set", "type": "set", "params": {"fields": {"ok": True}}}
    return {"name": f"list-{i:03d}", "nodes": [trigger, set_ok], "edges": [{"from": "hook", "to": "set"}]}


def fill_executions(data: Path, tenant_id: str, flows: list, total: int, days: int = 30) -> None:
    """Bulk-insert `total` executions spread over the last `days` days, with runs.py's own EXEC_SQL.

    Ids are made like runs.new_id (milliseconds, sequence, 24 random bits), evenly spaced in time. Flows
    get Zipf-like shares (the busiest about 19 %, the quietest about 0.2 %); statuses follow
    LIST_STATUSES (no queued or running rows, which the worker would pick up). Only the newest 1,000
    executions get step rows (two each): the list never reads steps.
    """
    from appliance.runs import EXEC_SQL, STEP_SQL

    rng = random.Random(7)
    end_ms = int(time.time() * 1000)
    start_ms, spacing = end_ms - days * 86_400_000, days * 86_400_000 / total
    statuses, status_weights = list(LIST_STATUSES), list(LIST_STATUSES.values())
    flow_weights = [1 / (k + 1) for k in range(len(flows))]

    def row(i: int, flow, status: str) -> dict:
        created = (start_ms + i * spacing) / 1000
        finished = None if status == "waiting" else created + rng.uniform(0.005, 2)
        return {"id": f"{int(start_ms + i * spacing):012x}0000{rng.getrandbits(24):06x}", "tenant_id": tenant_id,
                "flow_id": flow.id, "flow_name": flow.name, "flow_version": 1, "status": status,
                "trigger": flow.trigger_type, "input": b'[{"amount": %d, "customer": "c-%d"}]' % (i % 500, i % 9973),
                "meta": None, "output": b'[{"ok": true}]' if status == "succeeded" else None,
                "error": '{"node": "set", "message": "HTTP 502 from upstream"}' if status == "failed" else None,
                "parent_id": None, "dedup_key": None, "resume_at": None, "owner": None, "created_at": created,
                "finished_at": finished}

    with sqlite3.connect(data / "runs.db") as conn:
        conn.execute("PRAGMA synchronous=OFF")  # setting up, not measured
        batch = 100_000
        for first in range(0, total, batch):
            n = min(batch, total - first)
            chosen = zip(rng.choices(flows, flow_weights, k=n), rng.choices(statuses, status_weights, k=n))
            conn.executemany(EXEC_SQL, (row(first + k, f, s) for k, (f, s) in enumerate(chosen)))
            conn.commit()
        newest = [r[0] for r in conn.execute("SELECT id FROM executions ORDER BY id DESC LIMIT 1000")]
        conn.executemany(STEP_SQL, [(e, seq, tenant_id, node, node, 1, "succeeded", 1, b'{"main": [{"ok": true}]}', None,
                                     None, 0, time.time(), time.time()) for e in newest
                                    for seq, node in enumerate(("hook", "set"))])
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def bench_list(base: Path, seconds: int, total: int) -> None:
    from appliance.runtime import Runtime
    from appliance.settings import load

    data, password = base / "list" / "data", "correct horse battery staple 9"
    cli(data, "init", "--admin-email", "bench@example.com", env={"FLOWFUSE_ADMIN_PASSWORD": password})
    runtime = Runtime(load(env={}, overrides={"storage.data_dir": str(data)}))
    tenant_id = runtime.tenant_id("default")
    flows = [runtime.catalog.save_flow(tenant_id, list_flow(i)) for i in range(100)]
    runtime.close()
    start = time.monotonic()
    fill_executions(data, tenant_id, flows, total)
    filled = time.monotonic() - start
    with sqlite3.connect(data / "runs.db") as conn:
        deep = [r[0] for r in conn.execute("SELECT id FROM executions ORDER BY id DESC LIMIT ? OFFSET ?",
                                           (total // 10, total * 85 // 100))][::max(1, total // 1000)]
    size = (data / "runs.db").stat().st_size / 2**20
    print(f"5. Execution list, {total:,} executions of 100 flows in tenant 'default' (runs.db {size:,.0f} MB, "
          f"bulk-inserted in {filled:.0f} s), one connection (wrk -t1 -c1 -d{seconds}s), 50 per page")
    serve = Serve(data)
    try:
        http = httpx.Client(base_url=f"{serve.url}/api/v1", timeout=30)
        signed = http.post("/session", json={"email": "bench@example.com", "password": password})
        made = http.post("/tenants/default/api-keys", json={"name": "bench", "role": "viewer"},
                         headers={"x-csrf-token": signed.json()["csrf_token"]})
        key = made.json()["key"]
        page = "/api/v1/tenants/default/executions?limit=50"
        names = [f.name for f in flows]
        cases = [  # (what, paths visited in turn)
            ("first page", [page]),
            (f"deep page (before = the {total * 85 // 100:,}th-{total * 95 // 100:,}th newest, 100 cursors)",
             [f"{page}&before={b}" for b in deep]),
            ("first page of one flow (each of the 100 in turn)", [f"{page}&flow={n}" for n in names]),
            ("first page of one status (each of 4 in turn)", [f"{page}&status={s}" for s in LIST_STATUSES]),
            ("deep page of one flow and status (100 flows x 4 statuses)",
             [f"{page}&flow={n}&status={s}&before={deep[50]}" for n in names for s in LIST_STATUSES]),
        ]
        for what, paths in cases:
            sizes = []
            for path in paths:  # every path once: checks it answers, and warms up
                r = http.get(path.removeprefix("/api/v1"), headers={"authorization": f"Bearer {key}"})
                r.raise_for_status()
                sizes.append(len(r.json()["items"]))
            lua = LIST_LUA.format(key=key, paths=", ".join(f'"{path}"' for path in paths))
            result = wrk(serve.url, seconds, connections=1, lua=lua)
            print(f"  {what}: {result['requests']:,} requests, {result['non2xx']} non-2xx, "
                  f"{min(sizes)}-{max(sizes)} items a page")
            line("p99 latency", result["p99_ms"], "ms", "<= 20", result["p99_ms"] <= 20)
            line("p50 latency", result["p50_ms"], "ms", "(no target)", True)
    finally:
        serve.stop()


PAGE_TAGS = ("sales", "billing", "ops", "nightly", "eu", "us", "crm", "alerts")


def page_flows(data: Path, tenant_id: str, total: int) -> list:
    """Bulk-insert `total` flows (half webhook, half manual; one to three of PAGE_TAGS each) into
    flowfuse.db with the columns Catalog.save_flow writes; the flow_tags triggers index their tags."""
    from collections import namedtuple

    Row = namedtuple("Row", "id name trigger_type")
    rng, now, rows, versions, made = random.Random(11), time.time(), [], [], []
    for i in range(total):
        doc = list_flow(i)
        doc["name"] = f"flow-{i:05d}"
        if doc["nodes"][0]["type"] == "webhook":
            doc["nodes"][0]["params"]["path"] = f"page-{i}"
        doc["tags"] = rng.sample(PAGE_TAGS, rng.randint(1, 3))
        fid, definition = f"f_{i:012x}", json.dumps(doc, indent=2)
        trigger = doc["nodes"][0]["type"]
        path = doc["nodes"][0]["params"]["path"] if trigger == "webhook" else None
        rows.append((fid, tenant_id, doc["name"], 1, definition, int(i % 10 == 0), trigger, path,
                     "POST" if path else None, now, now))
        versions.append((fid, tenant_id, 1, definition, now))
        made.append(Row(fid, doc["name"], trigger))
    with sqlite3.connect(data / "flowfuse.db") as conn:
        conn.executemany("INSERT INTO flows (id, tenant_id, name, version, definition, active, trigger_type, "
                         "webhook_path, webhook_method, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.executemany("INSERT INTO flow_versions VALUES (?,?,?,?,?)", versions)
    return made


def fill_usage(data: Path) -> None:
    """The `usage` and `outcomes` tables as the meter would have written them for the bulk-inserted rows
    (per tenant and UTC day; per tenant and hour)."""
    with sqlite3.connect(data / "runs.db") as conn:
        conn.execute("DELETE FROM outcomes")
        conn.execute("INSERT INTO outcomes (tenant_id, hour, succeeded, failed, cancelled) SELECT tenant_id, "
                     "CAST(created_at / 3600 AS INTEGER), sum(status = 'succeeded'), sum(status = 'failed'), "
                     "sum(status = 'cancelled') FROM executions GROUP BY 1, 2")
        conn.execute("DELETE FROM usage")
        conn.execute("INSERT INTO usage (tenant_id, day, executions, steps, bytes) SELECT tenant_id, "
                     "date(created_at, 'unixepoch'), count(*), 0, 0 FROM executions GROUP BY 1, 2")
        conn.execute("UPDATE usage SET steps = s.n, bytes = s.b FROM (SELECT e.tenant_id, date(e.created_at, "
                     "'unixepoch') AS day, count(*) AS n, sum(length(st.output)) AS b FROM steps st JOIN executions e "
                     "ON e.id = st.execution_id GROUP BY 1, 2) AS s WHERE usage.tenant_id = s.tenant_id AND "
                     "usage.day = s.day")


def bench_pages(base: Path, requests: int, total: int, flow_count: int = 10_000) -> None:
    """Server-side rendering of the console's pages, timed from a client on 127.0.0.1 (one at a time)."""
    from appliance.runtime import Runtime
    from appliance.settings import load

    data, password = base / "pages" / "data", "correct horse battery staple 9"
    cli(data, "init", "--admin-email", "bench@example.com", env={"FLOWFUSE_ADMIN_PASSWORD": password})
    runtime = Runtime(load(env={}, overrides={"storage.data_dir": str(data)}))
    tenant_id = runtime.tenant_id("default")
    runtime.close()
    start = time.monotonic()
    flows = page_flows(data, tenant_id, flow_count)
    fill_executions(data, tenant_id, flows, total, days=14)
    fill_usage(data)
    filled = time.monotonic() - start
    with sqlite3.connect(data / "runs.db") as conn:
        newest = conn.execute("SELECT id FROM executions ORDER BY id DESC LIMIT 1").fetchone()[0]
        deep = conn.execute("SELECT id FROM executions ORDER BY id DESC LIMIT 1 OFFSET ?", (total // 2,)).fetchone()[0]
    size = (data / "runs.db").stat().st_size / 2**20
    print(f"6. Console pages, {flow_count:,} flows and {total:,} executions over 14 days in tenant 'default' "
          f"(runs.db {size:,.0f} MB, bulk-inserted in {filled:.0f} s), {requests} requests a page, one at a time")
    serve = Serve(data)
    try:
        http = httpx.Client(base_url=serve.url, timeout=30)
        assert http.post("/api/v1/session", json={"email": "bench@example.com", "password": password}).status_code == 201
        busiest = flows[0].name
        cases = [
            ("dashboard (14 days)", "/t/default"),
            ("dashboard (24 hours)", "/t/default?range=24h"),
            ("flows list, first page", "/t/default/flows"),
            ("flows list, search", "/t/default/flows?q=flow-09"),
            ("flows list, tag and a later page", "/t/default/flows?tag=ops&after=flow-05000"),
            ("executions list, first page", "/t/default/executions"),
            ("executions list, deep page of one flow and status",
             f"/t/default/executions?flow={busiest}&status=failed&before={deep}"),
            ("execution detail", f"/t/default/executions/{newest}"),
        ]
        for what, path in cases:
            times = []
            for i in range(requests + 5):  # the first 5 warm up
                begin = time.perf_counter()
                r = http.get(path)
                elapsed = (time.perf_counter() - begin) * 1000
                if r.status_code != 200:
                    raise SystemExit(f"GET {path} answered {r.status_code}: {r.text[:300]}")
                if i >= 5:
                    times.append(elapsed)
            times.sort()
            p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95) - 1]
            print(f"  {what}: GET {path.split('?')[0]}{'?' + path.split('?')[1][:40] if '?' in path else ''}, "
                  f"{len(r.content) // 1024} KB")
            line("p95 latency", p95, "ms", "<= 100", p95 <= 100)
            line("p50 latency", p50, "ms", "(no target)", True)
    finally:
        serve.stop()


def bench_instructions(base: Path) -> None:
    """Benchmark 7 (see bench/instructions.py): two runs of each harness over fresh data directories,
    their difference divided by the extra webhooks or steps."""
    print("7. CPU instructions per synchronous webhook (the web app in process, no uvicorn) and per step of\n"
          "   benchmark 2's flow (the worker's engine path in process, no Huey; then its rows alone through\n"
          "   RunStore.commit), under valgrind")
    if shutil.which("valgrind") is None:
        print("  skipped: valgrind is not installed (apt-get install valgrind)")
        return
    from instructions import count

    per = (count("webhooks", prepare(base, "instr-long", SYNC_FLOW), 1300) -
           count("webhooks", prepare(base, "instr-short", SYNC_FLOW), 300)) / 1000
    line("instructions per webhook", per, "", "(no target)", True)
    per = (count("steps", queued_long_flows(base, "instr-steps-long", 364), 364) -
           count("steps", queued_long_flows(base, "instr-steps-short", 164), 164)) / (200 * 101)
    line("instructions per step", per, "", "(no target)", True)
    store = (count("store", queued_long_flows(base, "instr-store-long", 364), 364) -
             count("store", queued_long_flows(base, "instr-store-short", 164), 164)) / (200 * 101)
    line("  of which the store (the same rows, no engine)", store, "", "(no target)", True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="length of each wrk run")
    parser.add_argument("--flows", type=int, default=2000, help="runs of the 100-step flow")
    parser.add_argument("--executions", type=int, default=1_000_000, help="executions in runs.db for the list")
    parser.add_argument("--only", choices=["sync", "long", "async", "list", "pages", "instructions"],
                        action="append")
    parser.add_argument("--requests", type=int, default=200, help="requests per console page (pages)")
    parser.add_argument("--checkpoint", choices=["every_step", "effects"], default="every_step",
                        help="engine.checkpoint for the 100-step flow (the target is for every_step)")
    args = parser.parse_args()
    print(f"FlowFuse benchmarks on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="flowfuse-bench-") as tmp:
        base = Path(tmp)
        if not args.only or "sync" in args.only:
            bench_sync_and_memory(base, args.seconds)
        if not args.only or "long" in args.only:
            bench_long_flow(base, args.flows, args.checkpoint)
        if not args.only or "async" in args.only:
            bench_async(base, args.seconds)
        if not args.only or "list" in args.only:
            bench_list(base, args.seconds, args.executions)
        if not args.only or "pages" in args.only:
            bench_pages(base, args.requests, args.executions)
        if not args.only or "instructions" in args.only:
            bench_instructions(base)


if __name__ == "__main__":
    main()
