"""Loopback fakes of cloud APIs: real HTTP servers on 127.0.0.1 that speak each service's documented
wire format (auth, body encoding, errors, 429 with Retry-After, pagination), so the connectors are
tested over real HTTP without internet access.

Each service module subclasses `FakeService` and implements `route(request) -> Reply`. Every request
is recorded in `requests`; `answer_next(path, reply)` queues a one-off answer (a 429, a 500) for the
next request to a path, which is how tests check that connectors honour Retry-After.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes as is, None -> empty
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


class FakeService:
    """A real HTTP server on 127.0.0.1; subclasses answer in their service's format."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._next: dict[str, list[Reply]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                request = Request(self.command, split.path, {k: v[-1] for k, v in parse_qs(split.query).items()},
                                  {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with fake.lock:
                    fake.requests.append(request)
                    queued = fake._next.get(request.path)
                    reply = queued.pop(0) if queued else None
                if reply is None:
                    try:
                        reply = fake.route(request)
                    except Exception as exc:  # noqa: BLE001 (a bug in the fake: say so instead of hanging the client)
                        reply = Reply(599, {"fake_error": repr(exc)})
                fake._send(self, reply)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        headers = dict(reply.headers)
        body = reply.body
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        elif isinstance(body, str):
            payload = body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            payload = body or b""
        handler.send_response(reply.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def route(self, request: Request) -> Reply:  # pragma: no cover - overridden
        return Reply(404, {"error": "not found"})

    def answer_next(self, path: str, reply: Reply) -> None:
        """Answer the next request to `path` with `reply` instead of routing it."""
        with self.lock:
            self._next.setdefault(path, []).append(reply)

    def rate_limit_next(self, path: str, retry_after: int = 1, body: Any = None) -> None:
        self.answer_next(path, Reply(429, body if body is not None else {"error": "rate limited"},
                                     {"Retry-After": str(retry_after)}))

    def of(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
