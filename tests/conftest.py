"""Shared fixtures: real data directories, a real `flowfuse serve` on 127.0.0.1, real HTTP peers."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.runtime import init_data_dir
from appliance.settings import load
from tests.browser import browser, page  # noqa: F401 (fixtures for console tests)

ROOT = Path(__file__).resolve().parent.parent
#: Fast heartbeats, polls and cron ticks so that tests of recovery and schedules finish quickly.
FAST_ENV = {
    "FLOWFUSE_WORKER_HEARTBEAT_S": "0.3",
    "FLOWFUSE_WORKER_STALE_AFTER_S": "3",
    "FLOWFUSE_WORKER_THREADS": "8",
    "FLOWFUSE_WORKER_MAX_POLL_INTERVAL_S": "0.05",
    "FLOWFUSE_SCHEDULE_TICK_S": "0.25",
    "FLOWFUSE_ENGINE_INLINE_WAIT_MAX_S": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flowfuse(*args: str, env: dict[str, str] | None = None, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `flowfuse` command line."""
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
                          env={**os.environ, **FAST_ENV, **(env or {})}, input=input, timeout=timeout, cwd=ROOT)


def poll(condition, timeout: float = 20, what: Any = "condition", interval: float = 0.05):
    """Wait until `condition()` is truthy and return its value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what() if callable(what) else what} not reached after {timeout} s")


def status(data_dir: Path, execution_id: str) -> str | None:
    """An execution's status read straight from runs.db (cheap enough to poll)."""
    conn = sqlite3.connect(f"file:{data_dir / 'runs.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT status FROM executions WHERE id=?", (execution_id,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


@pytest.fixture
def settings(tmp_path):
    """Settings over a fresh, initialised data directory (no config file)."""
    s = load(env={**FAST_ENV, "FLOWFUSE_CONFIG": ""}, overrides={"storage.data_dir": str(tmp_path / "data")})
    init_data_dir(s)
    return s


@dataclass
class Server:
    """A `flowfuse serve` (or `web`/`worker`) process tree on 127.0.0.1."""

    data_dir: Path
    port: int
    proc: subprocess.Popen | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return flowfuse(*args, "--data-dir", str(self.data_dir), env=self.env, input=input)

    def import_flow(self, doc: dict[str, Any], activate: bool = True) -> dict[str, Any]:
        path = self.data_dir.parent / f"{doc['name'].replace(' ', '_').replace('/', '_')}.json"
        path.write_text(json.dumps(doc))
        result = self.cli("flow", "import", str(path), *(["--activate"] if activate else []))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def execution(self, execution_id: str) -> dict[str, Any]:
        result = self.cli("executions", "show", execution_id, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def executions(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("executions", "list", "--json", "--limit", "1000", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_for(self, execution_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.execution(execution_id)
            if found["status"] in statuses:
                return found
            time.sleep(0.1)
        raise AssertionError(f"execution {execution_id} is still {found['status']} after {timeout} s")

    def start(self, *command: str) -> "Server":
        self.log = self.data_dir.parent / f"{command[0]}-{self.port}.log"
        args = [sys.executable, "-m", "appliance", *command, "--data-dir", str(self.data_dir)]
        if command[0] in ("serve", "web"):
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, env={**os.environ, **FAST_ENV, **self.env}, cwd=ROOT,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        if command[0] in ("serve", "web"):
            self.wait_ready(expect=200 if command[0] == "serve" else None)
        return self

    def wait_ready(self, expect: int | None = 200, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=1)
                if expect is None or r.status_code == expect:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def children(self) -> dict[str, int]:
        """pid of the `web` and `worker` children of a `serve` process."""
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        found = {}
        for line in out.stdout.splitlines():
            pid, _, cmd = line.strip().partition(" ")
            for kind in ("web", "worker"):
                if f" {kind} " in f" {cmd} ":
                    found[kind] = int(pid)
        return found


@pytest.fixture
def server(tmp_path):
    """A running `flowfuse serve` over a fresh data directory; stopped after the test."""
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port()).start("serve")
    yield srv
    srv.stop()


class _PeerServer(ThreadingHTTPServer):
    #: The default listen backlog (5) resets connections when many executions call the peer at once.
    request_queue_size = 128


class Peer:
    """A real HTTP server on 127.0.0.1 that counts requests per path and can be told how to answer.

    `behave[path]` is a function (count, request) -> (status, body dict, delay s) for custom answers.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.requests: list[dict[str, Any]] = []
        self.behave: dict[str, Any] = {}
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with peer.lock:
                    peer.counts[path] += 1
                    count = peer.counts[path]
                    record = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                              "body": body.decode(errors="replace"), "at": time.time()}
                    peer.requests.append(record)
                status, answer, delay = 200, {"path": path, "count": count}, 0.0
                if path in peer.behave:
                    status, answer, delay = peer.behave[path](count, record)
                if delay:
                    time.sleep(delay)
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller went away (killed or cancelled while this answer was delayed)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = _PeerServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def of(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].split("?")[0] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()
