"""Slack: post, update and delete messages, upload files, look up users; triggers for slash
commands and interactive buttons.

The Web API answers HTTP 200 even when a call fails, with `{"ok": false, "error": "<code>"}`:
`_api` turns that into a NodeError naming the method and Slack's error code. Rate limits are
HTTP 429 with Retry-After, which `connectors.sdk.http.call` honours.

Requests from Slack (slash commands, interactivity) are signed with the app's signing secret:
`X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{X-Slack-Request-Timestamp}:{raw body}"))`.
`verify_signature` checks it and refuses timestamps more than five minutes from now (replays).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry, Unverified, WebhookRequest
from .sdk.auth import register_scheme
from .sdk.http import call

API = "https://slack.com/api"
#: Slack's replay window: a request whose timestamp is further than this from now is refused.
TOLERANCE_S = 300
ICON = "slack.svg"
CATEGORY = "Slack"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Slack-Signature` Slack sends for this timestamp and raw body."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str | None, sent: str | None, body: bytes, now: float,
                     tolerance_s: float = TOLERANCE_S) -> None:
    """Raise Unverified unless `sent` is Slack's signature of `body` at `timestamp`, within the window."""
    if not secret:
        raise Unverified("the trigger's credential has no signing secret")
    if not timestamp or not sent:
        raise Unverified("missing X-Slack-Signature or X-Slack-Request-Timestamp header")
    try:
        stamp = int(timestamp)
    except ValueError:
        raise Unverified("X-Slack-Request-Timestamp is not a Unix time") from None
    if abs(now - stamp) > tolerance_s:
        raise Unverified(f"request timestamp is more than {int(tolerance_s)} s from now (a replay?)")
    if not hmac.compare_digest(signature(secret, timestamp, body), sent):
        raise Unverified("X-Slack-Signature does not match the request (wrong signing secret?)")


def _verify(request: WebhookRequest) -> None:
    secret = (request.credential or {}).get("signing_secret", "")
    verify_signature(secret, request.headers.get("x-slack-request-timestamp"),
                     request.headers.get("x-slack-signature"), request.body, request.now)


def _bot_token(credential: Any, request: Any) -> None:
    token = credential.get("token")
    if not token:
        raise NodeError("the slack_bot credential has no token")
    request.headers["Authorization"] = f"Bearer {token}"


async def _api(ctx: NodeContext, method: str, args: dict[str, Any], *, form: bool = False,
               http_method: str = "POST") -> dict:
    """Call a Web API method; Slack's `ok: false` becomes a NodeError with its error code."""
    url = f"{str(ctx.param('base_url')).rstrip('/')}/{method}"
    args = {k: v for k, v in args.items() if v not in (None, "")}
    if http_method == "GET":
        response = await call(ctx, "GET", url, params=args)
    elif form:
        response = await call(ctx, "POST", url, data={k: v if isinstance(v, str) else json.dumps(v)
                                                      for k, v in args.items()})
    else:  # JSON bodies need the charset, or Slack warns "missing_charset"
        response = await call(ctx, "POST", url, content=json.dumps(args).encode(),
                              headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        body = response.json()
    except ValueError:
        raise NodeError(f"Slack {method} answered something that is not JSON: {response.text[:120]!r}") from None
    if not body.get("ok"):
        detail = f" (needed scope: {body['needed']})" if body.get("needed") else ""
        raise NodeError(f"Slack {method} failed: {body.get('error', 'unknown_error')}{detail}")
    return body


def _message_args(ctx: NodeContext, item: dict) -> dict:
    args = {"channel": ctx.param("channel", item), "text": ctx.param("text", item)}
    blocks = ctx.param("blocks", item)
    if blocks:
        args["blocks"] = blocks
    if not args["text"] and not blocks:
        raise NodeError("give text or blocks: Slack refuses an empty message")
    return args


async def _post(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        args = _message_args(ctx, item)
        args["thread_ts"] = ctx.param("thread_ts", item)
        body = await _api(ctx, "chat.postMessage", args)
        out.append({"channel": body["channel"], "ts": body["ts"], "message": body.get("message")})
    return out


async def _update(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        args = {**_message_args(ctx, item), "ts": ctx.param("ts", item)}
        body = await _api(ctx, "chat.update", args)
        out.append({"channel": body["channel"], "ts": body["ts"], "text": body.get("text")})
    return out


async def _delete(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        body = await _api(ctx, "chat.delete", {"channel": ctx.param("channel", item), "ts": ctx.param("ts", item)})
        out.append({"channel": body["channel"], "ts": body["ts"], "deleted": True})
    return out


def _file_bytes(ctx: NodeContext, item: dict) -> bytes:
    content = ctx.param("content", item)
    if ctx.param("encoding", item) == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (ValueError, TypeError):
            raise NodeError("content is not valid base64 (set encoding: text for plain text)") from None
    return (content if isinstance(content, str) else json.dumps(content)).encode()


async def _upload(ctx: NodeContext, items: list[dict]) -> list[dict]:
    """Slack's upload flow: ask for an upload URL, POST the bytes there, then complete the upload
    (which shares the file in the channel)."""
    out = []
    for item in items:
        data = _file_bytes(ctx, item)
        filename = ctx.param("filename", item)
        target = await _api(ctx, "files.getUploadURLExternal", {"filename": filename, "length": str(len(data))},
                            form=True)
        await call(ctx, "POST", target["upload_url"], content=data, credential=False,
                   headers={"Content-Type": "application/octet-stream"})
        done = await _api(ctx, "files.completeUploadExternal", {
            "files": [{"id": target["file_id"], "title": ctx.param("title", item) or filename}],
            "channel_id": ctx.param("channel", item), "initial_comment": ctx.param("initial_comment", item),
            "thread_ts": ctx.param("thread_ts", item)}, form=True)
        out.append({"file_id": target["file_id"], "files": done.get("files", []), "bytes": len(data)})
    return out


async def _lookup(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        body = await _api(ctx, "users.lookupByEmail", {"email": ctx.param("email", item)}, http_method="GET")
        out.append(body["user"])
    return out


def _interaction(ctx: NodeContext, items: list[dict]) -> list[dict]:
    """Slack posts interactivity as a form with one field, `payload`, holding JSON: unwrap it."""
    out = []
    for item in items:
        payload = item.get("payload")
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except ValueError:
                raise NodeError("the interaction's payload field is not JSON") from None
        out.append(payload if isinstance(payload, dict) else item)
    return out


def _base_url() -> Param:
    return Param("string", default=API, description="Slack Web API base URL (change only for a proxy or a test)")


CHANNEL = Param("string", required=True, description="channel ID (C0123...) or name (#general)")
TS = Param("string", required=True, description="the message's ts, as chat.postMessage returned it")
TEXT = Param("string", description="message text (mrkdwn); also the notification text when blocks are given")
BLOCKS = Param("list", description="Block Kit blocks, e.g. [{type: section, text: {type: mrkdwn, text: ...}}]")
CREDENTIAL_TYPES = (
    CredentialType("slack_bot", {"token": Field("Bot token (xoxb-...)")},
                   description="A Slack app's bot token, sent as a Bearer token."),
    CredentialType("slack_signing_secret", {"signing_secret": Field("Signing secret")},
                   description="A Slack app's signing secret (Basic Information page), to verify requests from Slack."),
)
TRIGGER_PARAMS = {
    "path": Param("string", required=True, expression=False, description="path under /hooks/{tenant}/ to give Slack"),
    "method": Param("string", default="POST", choices=("POST",), expression=False),
    "respond": Param("string", default="when_done", choices=("when_done", "immediately"), expression=False,
                     description="when_done answers Slack with the flow's respond_to_webhook (within Slack's 3 s)"),
}


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    register_scheme("slack_bot", _bot_token)
    common = {"category": CATEGORY, "icon": ICON, "credential_types": ("slack_bot",)}
    add = registry.add
    add(NodeType("slack.post_message", _post, label="Post message", params={
        "channel": CHANNEL, "text": TEXT, "blocks": BLOCKS,
        "thread_ts": Param("string", description="reply in this message's thread"), "base_url": _base_url(),
    }, description="Posts a message to a channel (chat.postMessage); outputs channel and ts.", **common))
    add(NodeType("slack.update_message", _update, label="Update message", params={
        "channel": CHANNEL, "ts": TS, "text": TEXT, "blocks": BLOCKS, "base_url": _base_url(),
    }, description="Replaces the text or blocks of a message the app posted (chat.update).", **common))
    add(NodeType("slack.delete_message", _delete, label="Delete message", params={
        "channel": CHANNEL, "ts": TS, "base_url": _base_url(),
    }, description="Deletes a message the app posted (chat.delete).", **common))
    add(NodeType("slack.upload_file", _upload, label="Upload file", params={
        "channel": Param("string", description="channel ID to share the file in (omit to upload privately)"),
        "filename": Param("string", required=True, description="file name shown in Slack, e.g. report.csv"),
        "content": Param("any", required=True, description="the file's content"),
        "encoding": Param("string", default="text", choices=("text", "base64"),
                          description="text (UTF-8) or base64 (binary files)"),
        "title": Param("string", description="title shown in Slack (default: the file name)"),
        "initial_comment": Param("string", description="message posted with the file"),
        "thread_ts": Param("string", description="share the file in this message's thread"),
        "base_url": _base_url(),
    }, description="Uploads a file (files.getUploadURLExternal, upload, files.completeUploadExternal).", **common))
    add(NodeType("slack.lookup_user", _lookup, label="Look up user", params={
        "email": Param("string", required=True, description="the person's email address"), "base_url": _base_url(),
    }, description="Finds a Slack user by email (users.lookupByEmail); outputs the user object.", **common))
    trigger = {"category": CATEGORY, "icon": ICON, "credential_types": ("slack_signing_secret",),
               "trigger_kind": "webhook", "verify": _verify, "pure": True}
    add(NodeType("slack.slash_command", lambda ctx, items: items, label="Slash command", params=TRIGGER_PARAMS,
                 description="Started by a Slack slash command; the request signature is verified. The item holds "
                             "Slack's fields: command, text, user_id, channel_id, response_url, trigger_id.",
                 **trigger))
    add(NodeType("slack.interaction", _interaction, label="Interactive button", params=TRIGGER_PARAMS,
                 description="Started by a click on an interactive button (Slack interactivity); the request "
                             "signature is verified. The item is Slack's payload: type, actions, user, response_url.",
                 **trigger))
