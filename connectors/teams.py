"""Microsoft Teams: post a message through an incoming webhook, or to a channel through
Microsoft Graph.

An incoming webhook (a Teams "Incoming Webhook" connector or a Workflows webhook) takes a JSON
card at its secret URL, kept in a `teams_webhook` credential. Graph posts
`POST /teams/{team-id}/channels/{channel-id}/messages` with an app token from an
`oauth2_client_credentials` credential (token URL
https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token, scope
https://graph.microsoft.com/.default); the SDK fetches and renews that token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry
from .sdk.http import call

GRAPH = "https://graph.microsoft.com/v1.0"
ICON = "teams.svg"
CATEGORY = "Microsoft Teams"


def _card(ctx: NodeContext, item: dict) -> dict:
    """The webhook payload: an Adaptive Card given as `card`, else a simple one built from title and text."""
    card = ctx.param("card", item)
    if card:
        content = card
    else:
        text, title = ctx.param("text", item), ctx.param("title", item)
        if not text:
            raise NodeError("give text (or an Adaptive Card as card)")
        body = ([{"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True}]
                if title else []) + [{"type": "TextBlock", "text": text, "wrap": True}]
        content = {"type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                   "version": "1.4", "body": body}
    return {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                                "contentUrl": None, "content": content}]}


async def _webhook(ctx: NodeContext, items: list[dict]) -> list[dict]:
    url = (ctx.credential or {}).get("url")
    if not url:
        raise NodeError("this node needs a teams_webhook credential holding the incoming webhook's URL")
    out = []
    for item in items:
        response = await call(ctx, "POST", url, json=_card(ctx, item), credential=False)
        out.append({"status": response.status_code, "response": response.text[:200]})
    return out


async def _channel(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        team, channel = ctx.param("team_id", item), ctx.param("channel_id", item)
        body: dict[str, Any] = {"body": {"contentType": ctx.param("content_type", item),
                                         "content": ctx.param("content", item)}}
        if ctx.param("subject", item):
            body["subject"] = ctx.param("subject", item)
        url = f"{str(ctx.param('base_url')).rstrip('/')}/teams/{quote(team, safe='')}/channels/" \
              f"{quote(channel, safe=':@.')}/messages"
        out.append((await call(ctx, "POST", url, json=body)).json())
    return out


def register(registry: Registry) -> None:
    registry.add_credential_type(CredentialType(
        "teams_webhook", {"url": Field("Incoming webhook URL")},
        description="The URL of a Teams incoming webhook (it is the secret: anyone with it can post)."))
    registry.add(NodeType("teams.webhook_message", _webhook, label="Post via webhook", category=CATEGORY, icon=ICON,
                          credential_types=("teams_webhook",), params={
        "text": Param("string", description="message text (Adaptive Card TextBlock markdown)"),
        "title": Param("string", description="bold title above the text"),
        "card": Param("object", description="a full Adaptive Card instead of text and title"),
    }, description="Posts a card to a channel through an incoming webhook."))
    registry.add(NodeType("teams.channel_message", _channel, label="Post channel message (Graph)", category=CATEGORY,
                          icon=ICON, credential_types=("oauth2_client_credentials", "oauth2_authorization_code"),
                          params={
        "team_id": Param("string", required=True, description="the team's id (a GUID)"),
        "channel_id": Param("string", required=True, description="the channel's id, 19:...@thread.tacv2"),
        "content": Param("string", required=True, description="the message body"),
        "content_type": Param("string", default="html", choices=("html", "text")),
        "subject": Param("string", description="optional subject line"),
        "base_url": Param("string", default=GRAPH, description="Microsoft Graph base URL (national clouds differ)"),
    }, description="Posts a message to a channel through Microsoft Graph (ChannelMessage.Send); outputs the "
                   "chatMessage."))
