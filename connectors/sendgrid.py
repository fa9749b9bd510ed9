"""SendGrid: send mail, plain or from a dynamic template, through v3 Mail Send.

`POST /v3/mail/send` with a JSON body (personalizations, from, subject, content or template_id
with dynamic_template_data). SendGrid answers 202 with no body and the message id in
`X-Message-Id`; errors list each problem as `{"errors": [{"message", "field"}]}`, all of which
end up in the NodeError.
"""

from __future__ import annotations

from typing import Any

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry
from .sdk.auth import register_scheme
from .sdk.http import call

API = "https://api.sendgrid.com"
ICON = "sendgrid.svg"
CATEGORY = "SendGrid"


def _key(credential: Any, request: Any) -> None:
    key = credential.get("api_key")
    if not key:
        raise NodeError("the sendgrid credential has no api_key")
    request.headers["Authorization"] = f"Bearer {key}"


def _addresses(value: Any, what: str) -> list[dict]:
    """"a@x", "a@x, b@y", ["a@x"], {"email", "name"} or a list of those -> [{"email", "name"?}]."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, dict):
        value = [value]
    out = []
    for v in value or []:
        if isinstance(v, str):
            out.append({"email": v})
        elif isinstance(v, dict) and v.get("email"):
            out.append({k: v[k] for k in ("email", "name") if v.get(k)})
        else:
            raise NodeError(f"{what}: each address must be an email or {{email, name}}, got {v!r}")
    return out


def _mail(ctx: NodeContext, item: dict, template: bool) -> dict:
    to = _addresses(ctx.param("to", item), "to")
    if not to:
        raise NodeError("to: give at least one recipient")
    personalization: dict[str, Any] = {"to": to}
    for name in ("cc", "bcc"):
        found = _addresses(ctx.param(name, item), name)
        if found:
            personalization[name] = found
    sender = _addresses(ctx.param("from", item), "from")
    mail: dict[str, Any] = {"personalizations": [personalization], "from": sender[0] if sender else {}}
    reply_to = _addresses(ctx.param("reply_to", item), "reply_to")
    if reply_to:
        mail["reply_to"] = reply_to[0]
    if template:
        mail["template_id"] = ctx.param("template_id", item)
        personalization["dynamic_template_data"] = ctx.param("data", item) or {}
    else:
        mail["subject"] = ctx.param("subject", item)
        content = [{"type": "text/plain", "value": ctx.param("text", item)}] if ctx.param("text", item) else []
        if ctx.param("html", item):
            content.append({"type": "text/html", "value": ctx.param("html", item)})
        mail["content"] = content
    categories = ctx.param("categories", item)
    if categories:
        mail["categories"] = categories
    return mail


def _sender(template: bool):
    async def run(ctx: NodeContext, items: list[dict]) -> list[dict]:
        url = f"{str(ctx.param('base_url')).rstrip('/')}/v3/mail/send"
        out = []
        for item in items:
            mail = _mail(ctx, item, template)
            response = await call(ctx, "POST", url, json=mail)
            out.append({"status": response.status_code, "message_id": response.headers.get("x-message-id"),
                        "to": [a["email"] for a in mail["personalizations"][0]["to"]]})
        return out
    return run


BASE_URL = Param("string", default=API, description="SendGrid API base URL (EU accounts: https://api.eu.sendgrid.com)")
ADDRESS = "an email, 'a@x, b@y', {email, name} or a list of those"


def register(registry: Registry) -> None:
    registry.add_credential_type(CredentialType("sendgrid", {"api_key": Field("API key (SG....)")},
                                                description="A SendGrid API key with Mail Send access."))
    register_scheme("sendgrid", _key)
    common = {"category": CATEGORY, "icon": ICON, "credential_types": ("sendgrid",)}
    addressing = {
        "to": Param("any", required=True, description=ADDRESS),
        "cc": Param("any", description=ADDRESS), "bcc": Param("any", description=ADDRESS),
        "from": Param("any", required=True, description="a verified sender: email or {email, name}"),
        "reply_to": Param("any", description="email or {email, name}"),
        "categories": Param("list", description="category names for SendGrid's statistics"),
    }
    registry.add(NodeType("sendgrid.send_mail", _sender(False), label="Send mail", params={
        **addressing, "subject": Param("string", required=True),
        "text": Param("string", description="plain-text body"), "html": Param("string", description="HTML body"),
        "base_url": BASE_URL,
    }, description="Sends an email (v3 mail/send); outputs status and SendGrid's message_id.", **common))
    registry.add(NodeType("sendgrid.send_template", _sender(True), label="Send template mail", params={
        **addressing, "template_id": Param("string", required=True, description="dynamic template id, d-..."),
        "data": Param("object", description="dynamic_template_data: the template's {{variables}}"),
        "base_url": BASE_URL,
    }, description="Sends an email from a dynamic template with per-item data.", **common))
