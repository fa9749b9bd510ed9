"""Email: send through SMTP (TLS, STARTTLS or plain, with attachments) and a new-mail trigger on IMAP.

The standard library's smtplib and imaplib do the talking, in a thread (they block). Both verify
the server's certificate against the system's CAs, or against the credential's `ca_cert` (PEM) for
a server with an internal CA. A sent message's Message-ID is derived from the step's idempotency
key, so a message sent again after a crash carries the same id and receivers can drop the copy.

The IMAP trigger remembers the mailbox's UIDVALIDITY and the highest UID it has seen; the first
poll notes where the mailbox is now, so activating a flow does not replay old mail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import imaplib
import logging
import re
import smtplib
import ssl
from collections.abc import Mapping
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, PollResult, Registry

log = logging.getLogger("flowfuse.connectors.email")
TIMEOUT_S = 30
SECURITY = ("tls", "starttls", "none")
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024


def _security(credential: Mapping[str, Any]) -> str:
    security = credential.get("security") or "starttls"
    if security not in SECURITY:
        raise NodeError(f"the credential's security {security!r} must be one of tls, starttls, none")
    return security


def _port(credential: Mapping[str, Any], defaults: dict[str, int]) -> int:
    raw = credential.get("port") or str(defaults[_security(credential)])
    if not str(raw).isdigit() or not 0 < int(raw) < 65536:
        raise NodeError(f"the credential's port {raw!r} is not a port number")
    return int(raw)


def _tls(credential: Mapping[str, Any]) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cadata=credential.get("ca_cert") or None)
    except (ssl.SSLError, ValueError) as exc:
        raise NodeError(f"the credential's ca_cert is not a PEM certificate: {exc}") from None


def _need(credential: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    if not credential or credential.get("type") != kind:
        raise NodeError(f"this node needs a credential of type {kind}")
    return credential


def _redacted(exc: BaseException, credential: Mapping[str, Any]) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = credential.get("password")
    return text.replace(password, "***") if password else text


# -- SMTP --------------------------------------------------------------------------------------------------------


def _addresses(value: Any, what: str) -> list[str]:
    if value in (None, "", []):
        return []
    raw = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in raw):
        raise NodeError(f"param {what!r} must be an address, a comma-separated list or a list of addresses")
    found = [address for _, address in getaddresses(raw) if address]
    for address in found:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
            raise NodeError(f"param {what!r}: {address!r} is not an email address")
    return found


def _attachment(message: EmailMessage, spec: Any, index: int) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("filename"), str) or "content" not in spec:
        raise NodeError(f"attachments[{index}] must be an object with filename and content "
                        "(and optionally encoding: base64 or text, content_type)")
    content, encoding = spec["content"], spec.get("encoding") or "base64"
    if encoding == "base64":
        try:
            data = base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            raise NodeError(f"attachments[{index}] ({spec['filename']}): content is not base64 "
                            "(set encoding: text for plain text)") from None
    elif encoding == "text":
        data = str(content).encode()
    else:
        raise NodeError(f"attachments[{index}]: encoding must be base64 or text, got {encoding!r}")
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise NodeError(f"attachments[{index}] is larger than {MAX_ATTACHMENT_BYTES} bytes")
    maintype, _, subtype = (spec.get("content_type") or "application/octet-stream").partition("/")
    message.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=spec["filename"])


def build_message(p: Mapping[str, Any], message_id: str) -> tuple[EmailMessage, list[str]]:
    """The message for one item's params, and every recipient (to, cc and bcc)."""
    sender = _addresses(p.get("from"), "from")
    to, cc, bcc = (_addresses(p.get(k), k) for k in ("to", "cc", "bcc"))
    if len(sender) != 1:
        raise NodeError("param 'from' must be one address")
    if not to + cc + bcc:
        raise NodeError("the message has no recipient: set 'to' (or cc, bcc)")
    message = EmailMessage(policy=policy.SMTP)
    try:
        message["From"] = p["from"] if isinstance(p["from"], str) else sender[0]
        message["To"] = ", ".join(to) if isinstance(p.get("to"), list) else (p.get("to") or "")
        if cc:
            message["Cc"] = ", ".join(cc)
        if p.get("reply_to"):
            message["Reply-To"] = str(p["reply_to"])
        message["Subject"] = str(p.get("subject") or "")
        message["Message-ID"] = message_id
        for name, value in (p.get("headers") or {}).items():
            message[str(name)] = str(value)
    except (ValueError, TypeError) as exc:  # a header with a line break, a malformed address
        raise NodeError(f"cannot build the message headers: {exc}") from None
    text, html = p.get("text"), p.get("html")
    message.set_content(str(text) if text is not None else "")
    if html is not None:
        message.add_alternative(str(html), subtype="html")
    for i, spec in enumerate(p.get("attachments") or []):
        _attachment(message, spec, i)
    return message, to + cc + bcc


def send(credential: Mapping[str, Any], message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
    """Deliver one message (blocking). Returns the recipients the server refused."""
    security = _security(credential)
    host, port = credential.get("host"), _port(credential, {"tls": 465, "starttls": 587, "none": 25})
    try:
        if security == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_S, context=_tls(credential))
        else:
            smtp = smtplib.SMTP(host, port, timeout=TIMEOUT_S)
        with smtp:
            if security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise NodeError(f"the SMTP server {host}:{port} does not offer STARTTLS; "
                                    "use security tls, or none on a trusted network")
                smtp.starttls(context=_tls(credential))
                smtp.ehlo()
            if credential.get("user"):
                smtp.login(credential["user"], credential.get("password") or "")
            refused = smtp.send_message(message, to_addrs=recipients)
    except NodeError:
        raise
    except smtplib.SMTPAuthenticationError:
        raise NodeError(f"the SMTP server {host}:{port} refused the user name or password") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise NodeError(f"the SMTP server refused every recipient: {', '.join(exc.recipients)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise NodeError(f"sending through {host}:{port} failed: {_redacted(exc, credential)}") from None
    return {address: f"{code} {text.decode(errors='replace')}" for address, (code, text) in refused.items()}


def _message_id(key: str, sender: str) -> str:
    domain = sender.rpartition("@")[2].strip("> ") or "flowfuse.local"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


async def _send(ctx: NodeContext, items: list[dict]) -> list[dict]:
    credential = _need(ctx.credential, "smtp")
    out = []
    for i, item in enumerate(items):
        p = ctx.params(item)
        key = ctx.idempotency_key if i == 0 else f"{ctx.idempotency_key}#{i}"
        message, recipients = build_message(p, _message_id(key, str(p.get("from") or "")))
        refused = await asyncio.to_thread(send, credential, message, recipients)
        out.append({"message_id": str(message["Message-ID"]), "accepted": [r for r in recipients if r not in refused],
                    "refused": refused})
    return out


# -- IMAP --------------------------------------------------------------------------------------------------------


def _imap(credential: Mapping[str, Any]) -> imaplib.IMAP4:
    security = _security(credential)
    host, port = credential.get("host"), _port(credential, {"tls": 993, "starttls": 143, "none": 143})
    try:
        if security == "tls":
            conn = imaplib.IMAP4_SSL(host, port, ssl_context=_tls(credential), timeout=TIMEOUT_S)
        else:
            conn = imaplib.IMAP4(host, port, timeout=TIMEOUT_S)
            if security == "starttls":
                conn.starttls(ssl_context=_tls(credential))
        conn.login(credential.get("user") or "", credential.get("password") or "")
        return conn
    except imaplib.IMAP4.error as exc:
        raise NodeError(f"the IMAP server {host}:{port} refused to sign in: {_redacted(exc, credential)}") from None
    except (OSError, ssl.SSLError) as exc:
        raise NodeError(f"cannot reach the IMAP server {host}:{port}: {_redacted(exc, credential)}") from None


def _number(conn: imaplib.IMAP4, name: str) -> int | None:
    _, data = conn.response(name)
    try:
        return int(data[-1]) if data and data[-1] is not None else None
    except (TypeError, ValueError):
        return None


def _search(conn: imaplib.IMAP4, criteria: str) -> list[int]:
    status, data = conn.uid("SEARCH", None, criteria)
    if status != "OK":
        raise NodeError(f"the IMAP server refused UID SEARCH: {data}")
    return sorted(int(n) for n in b" ".join(d for d in data if d).split())


def _text_part(message: Any, kind: str) -> str | None:
    part = message.get_body(preferencelist=(kind,))
    return part.get_content() if part is not None else None


def parse_mail(uid: int, raw: bytes, with_content: bool) -> dict[str, Any]:
    """One message as an item: addresses, subject, date, text, html and attachments."""
    message = message_from_bytes(raw, policy=policy.default)
    try:
        date = parsedate_to_datetime(message["Date"]).isoformat() if message["Date"] else None
    except (TypeError, ValueError):
        date = None
    attachments = []
    for part in message.iter_attachments():
        data = part.get_payload(decode=True) or b""
        found = {"filename": part.get_filename(), "content_type": part.get_content_type(), "size": len(data)}
        if with_content:
            found["content"] = base64.b64encode(data).decode()
        attachments.append(found)

    def header(name: str) -> str | None:  # a plain str, not the header object (which is not JSON)
        return str(message[name]) if message[name] is not None else None

    return {"uid": uid, "message_id": header("Message-ID"), "subject": header("Subject") or "",
            "from": [a for _, a in getaddresses([message["From"] or ""]) if a],
            "to": [a for _, a in getaddresses(message.get_all("To") or []) if a],
            "cc": [a for _, a in getaddresses(message.get_all("Cc") or []) if a],
            "date": date, "text": _text_part(message, "plain"), "html": _text_part(message, "html"),
            "attachments": attachments}


def new_mail(credential: Mapping[str, Any], params: Mapping[str, Any], cursor: Any) -> PollResult:
    """One poll of the mailbox (blocking): messages with a UID above the cursor's, oldest first."""
    credential = _need(credential, "imap")
    mailbox = params.get("mailbox") or "INBOX"
    limit = int(params.get("limit") or 50)
    conn = _imap(credential)
    try:
        status, data = conn.select(_quoted(mailbox), readonly=True)
        if status != "OK":
            raise NodeError(f"the IMAP server has no mailbox {mailbox!r}: {data}")
        validity, uidnext = _number(conn, "UIDVALIDITY"), _number(conn, "UIDNEXT")
        if not isinstance(cursor, dict) or cursor.get("uidvalidity") != validity:
            if isinstance(cursor, dict):
                log.warning("mailbox %s was renumbered (UIDVALIDITY changed); going on from its newest message", mailbox)
            if cursor is None and params.get("start") == "beginning":
                cursor = {"uidvalidity": validity, "uid": 0}
            else:
                top = uidnext - 1 if uidnext else max(_search(conn, "ALL") or [0])
                return PollResult([], {"uidvalidity": validity, "uid": top})
        last = int(cursor.get("uid") or 0)
        uids = [uid for uid in _search(conn, f"UID {last + 1}:*") if uid > last][:limit]
        items = []
        for uid in uids:
            status, data = conn.uid("FETCH", str(uid), "(RFC822)")
            raw = next((part[1] for part in data if isinstance(part, tuple)), None)
            if status != "OK" or raw is None:
                raise NodeError(f"the IMAP server did not return message {uid}: {data}")
            items.append(parse_mail(uid, raw, bool(params.get("attachment_content"))))
        return PollResult(items, {"uidvalidity": validity, "uid": uids[-1] if uids else last})
    except imaplib.IMAP4.error as exc:
        raise NodeError(f"the IMAP server answered an error: {_redacted(exc, credential)}") from None
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _quoted(mailbox: str) -> str:
    if any(c in mailbox for c in '"\\\r\n'):
        raise NodeError(f"mailbox name {mailbox!r} may not hold quotes, backslashes or line breaks")
    return f'"{mailbox}"'


async def _poll(pctx: Any) -> PollResult:
    return await asyncio.to_thread(new_mail, pctx.credential, pctx.params, pctx.cursor)


# -- registration ------------------------------------------------------------------------------------------------


def _server_fields(default_ports: str) -> dict[str, Field]:
    return {"host": Field("Host", secret=False),
            "port": Field(f"Port ({default_ports})", secret=False, required=False),
            "security": Field("tls, starttls (default) or none", secret=False, required=False),
            "user": Field("User name", secret=False, required=False),
            "password": Field("Password", required=False),
            "ca_cert": Field("CA certificate (PEM), for a server with a private CA", secret=False, required=False)}


CREDENTIAL_TYPES = (
    CredentialType("smtp", _server_fields("465 for tls, 587 for starttls, 25 for none"),
                   description="An SMTP server to send mail through."),
    CredentialType("imap", _server_fields("993 for tls, 143 otherwise"), description="An IMAP mailbox to watch."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    registry.add(NodeType(
        type="email.send", run=_send, label="Send email", category="Email", icon="email.svg",
        credential_types=("smtp",),
        params={"from": Param("string", required=True),
                "to": Param("any", description="an address, a comma-separated list or a list"),
                "cc": Param("any"), "bcc": Param("any"), "reply_to": Param("string"),
                "subject": Param("string", default=""),
                "text": Param("string", description="plain-text body"),
                "html": Param("string", description="HTML body (sent as an alternative to the text)"),
                "attachments": Param("list", description="[{filename, content, encoding: base64|text, content_type}]"),
                "headers": Param("object", description="extra headers")},
        description="Sends one email per item through SMTP; outputs its Message-ID and the accepted recipients."))
    registry.add(NodeType(
        type="email.new_mail", run=None, label="New email (IMAP)", category="Email", icon="email.svg",
        credential_types=("imap",), trigger=True, trigger_kind="polling", poll=_poll,
        params={"mailbox": Param("string", default="INBOX", expression=False),
                "interval_s": Param("number", default=60, expression=False),
                "limit": Param("integer", default=50, expression=False, description="messages per poll, at most"),
                "attachment_content": Param("boolean", default=False, expression=False,
                                            description="include attachments' content (base64), not only their names"),
                "start": Param("string", default="now", choices=("now", "beginning"), expression=False)},
        description="Starts the flow with each message that arrives in a mailbox, each message once."))
