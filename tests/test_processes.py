"""The processes: /healthz and /readyz, `flowfuse serve` supervising web and worker, SIGTERM, `web` alone."""

from __future__ import annotations

import os
import signal
import socket

import httpx

from conftest import Server, flowfuse, free_port, poll




def status_of(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it has exited all the same
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_readyz_follows_the_workers_heartbeat(server):
    health = httpx.get(server.url + "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}

    worker = server.children()["worker"]
    os.kill(worker, signal.SIGSTOP)  # alive but silent: its heartbeat goes stale (after 3 s under FAST_ENV)
    try:
        not_ready = poll(lambda: (r := httpx.get(server.url + "/readyz")).status_code == 503 and r,
                               what="/readyz 503 with the worker stopped")
        assert any("worker" in p for p in not_ready.json()["problems"])
        assert httpx.get(server.url + "/healthz").status_code == 200  # the web process itself is fine
    finally:
        os.kill(worker, signal.SIGCONT)
    poll(lambda: status_of(server.url + "/readyz") == 200, what="/readyz 200 after the worker continues")
    assert server.children()["worker"] == worker  # it was the same worker that came back, not a new one


def test_serve_restarts_a_killed_child(server):
    before = server.children()
    assert set(before) == {"web", "worker"}
    assert before["web"] != before["worker"] != server.proc.pid

    os.kill(before["worker"], signal.SIGKILL)
    after_worker = poll(lambda: (c := server.children()).get("worker") not in (None, before["worker"]) and c,
                              what="a new worker")
    assert after_worker["web"] == before["web"]

    os.kill(before["web"], signal.SIGKILL)
    after_web = poll(lambda: (c := server.children()).get("web") not in (None, before["web"]) and c,
                           what="a new web process")
    assert after_web["worker"] == after_worker["worker"]
    # both answer again: the new web process is up and sees the new worker's heartbeat
    poll(lambda: status_of(server.url + "/readyz") == 200, what="/readyz 200 after the restarts")
    assert server.proc.poll() is None


def test_sigterm_stops_web_and_worker_and_exits_0(server):
    children = server.children()
    assert set(children) == {"web", "worker"}
    os.kill(server.proc.pid, signal.SIGTERM)  # the supervisor only, as systemd would send it
    assert server.proc.wait(timeout=30) == 0
    for kind, pid in children.items():
        assert gone(pid), f"{kind} (pid {pid}) is still running"
    assert port_closed(server.port)
    log = server.log.read_text()
    assert "Traceback" not in log, log


def test_web_alone_is_ready_without_a_worker(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    web = Server(data, free_port()).start("web")
    strict = Server(data, free_port()).start("web", "--expect-worker")
    worker = None
    try:
        ready = httpx.get(web.url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert httpx.get(web.url + "/healthz").status_code == 200

        # the web process that serve starts waits for a worker ...
        not_ready = poll(lambda: (r := httpx.get(strict.url + "/readyz")).status_code == 503 and r,
                               what="/readyz 503 without a worker")
        assert any("worker" in p for p in not_ready.json()["problems"])
        # ... and is ready once one runs, in its own process
        worker = Server(data, 0).start("worker")
        poll(lambda: status_of(strict.url + "/readyz") == 200, what="/readyz 200 once the worker runs")

        # each stops on SIGTERM. uvicorn shuts down gracefully and then re-raises the signal it caught, and a
        # worker still starting its consumer has no handler yet: status 0 or "terminated by SIGTERM" both occur.
        for srv in (worker, web):
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert port_closed(web.port)
        for srv in (web, worker):
            assert "Traceback" not in srv.log.read_text(), srv.log.read_text()
    finally:
        for srv in (web, strict, worker):
            if srv is not None:
                srv.stop()
