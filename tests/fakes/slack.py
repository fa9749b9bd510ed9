"""Slack Web API (https://api.slack.com/web): every method answers HTTP 200 with `{"ok": true, ...}`
or `{"ok": false, "error": "<code>"}`; rate limits are HTTP 429 with Retry-After. Files use the
current upload flow: files.getUploadURLExternal -> POST the bytes to upload_url ->
files.completeUploadExternal."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time

import httpx

from . import FakeService, Reply, Request


class FakeSlack(FakeService):
    def __init__(self, token: str = "xoxb-test-token") -> None:
        self.token = token
        self.messages: dict[tuple[str, str], dict] = {}
        self.uploads: dict[str, dict] = {}
        self.users = {"ada@example.com": {"id": "U0ADA", "name": "ada", "real_name": "Ada Lovelace",
                                          "profile": {"email": "ada@example.com"}}}
        self._ts = itertools.count(1)
        super().__init__()

    def args(self, request: Request) -> dict:
        """Slack accepts JSON bodies (write methods) and form bodies / query strings (all methods)."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            return request.json() or {}
        if request.method == "GET":
            return dict(request.query)
        return request.form()

    def route(self, request: Request) -> Reply:
        if request.path.startswith("/upload/"):
            return self.receive_upload(request)
        if not request.path.startswith("/api/"):
            return Reply(404, "not found")
        method = request.path.removeprefix("/api/")
        if request.bearer != self.token:
            return Reply(200, {"ok": False, "error": "not_authed" if request.bearer is None else "invalid_auth"})
        handler = getattr(self, "m_" + method.replace(".", "_"), None)
        if handler is None:
            return Reply(200, {"ok": False, "error": "unknown_method"})
        return Reply(200, handler(self.args(request)))

    def m_chat_postMessage(self, a: dict) -> dict:
        if not a.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not (a.get("text") or a.get("blocks") or a.get("attachments")):
            return {"ok": False, "error": "no_text"}
        if a["channel"] == "C_ARCHIVED":
            return {"ok": False, "error": "is_archived"}
        ts = f"1700000000.{next(self._ts):06d}"
        message = {"type": "message", "text": a.get("text", ""), "ts": ts, "user": "U0BOT"}
        if a.get("blocks"):
            message["blocks"] = a["blocks"]
        if a.get("thread_ts"):
            message["thread_ts"] = a["thread_ts"]
        self.messages[(a["channel"], ts)] = message
        return {"ok": True, "channel": a["channel"], "ts": ts, "message": message}

    def m_chat_update(self, a: dict) -> dict:
        found = self.messages.get((a.get("channel"), a.get("ts")))
        if found is None:
            return {"ok": False, "error": "message_not_found"}
        found["text"] = a.get("text", found["text"])
        return {"ok": True, "channel": a["channel"], "ts": a["ts"], "text": found["text"]}

    def m_chat_delete(self, a: dict) -> dict:
        if self.messages.pop((a.get("channel"), a.get("ts")), None) is None:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": a["channel"], "ts": a["ts"]}

    def m_users_lookupByEmail(self, a: dict) -> dict:
        user = self.users.get(a.get("email", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "users_not_found"}

    def m_files_getUploadURLExternal(self, a: dict) -> dict:
        if not a.get("filename") or not str(a.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{len(self.uploads) + 1:05d}"
        self.uploads[file_id] = {"filename": a["filename"], "length": int(a["length"]), "content": None}
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def receive_upload(self, request: Request) -> Reply:
        file_id = request.path.removeprefix("/upload/")
        upload = self.uploads.get(file_id)
        if upload is None or request.method != "POST":
            return Reply(404, "not found")
        upload["content"] = request.body
        upload["content_type"] = request.headers.get("content-type", "")
        return Reply(200, f"OK - {len(request.body)}")

    def m_files_completeUploadExternal(self, a: dict) -> dict:
        files = a.get("files")
        files = json.loads(files) if isinstance(files, str) else files
        out = []
        for f in files or []:
            upload = self.uploads.get(f.get("id"))
            if upload is None or upload["content"] is None or len(upload["content"]) != upload["length"]:
                return {"ok": False, "error": "file_not_found" if upload is None else "file_upload_size_mismatch"}
            upload.update(title=f.get("title"), channel=a.get("channel_id"), comment=a.get("initial_comment"))
            out.append({"id": f["id"], "title": f.get("title") or upload["filename"]})
        if not out:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "files": out}


def deliver(url: str, body: bytes, signing_secret: str, *, timestamp: int | None = None,
            content_type: str = "application/x-www-form-urlencoded") -> httpx.Response:
    """Send a request the way Slack sends slash commands and interactivity to an app: signed with
    `X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))` and `X-Slack-Request-Timestamp`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return httpx.post(url, content=body, timeout=15, headers={
        "Content-Type": content_type, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"})
