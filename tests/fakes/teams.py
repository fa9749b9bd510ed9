"""Microsoft Teams: an incoming webhook (POST a card as JSON; answers 200 with the text "1", errors
as plain text) and Microsoft Graph (`POST /v1.0/teams/{team}/channels/{channel}/messages` with a
bearer token from the Microsoft identity platform's client-credentials token endpoint
`/{tenant}/oauth2/v2.0/token`; errors as `{"error": {"code", "message"}}`)."""

from __future__ import annotations

import itertools
import re

from . import FakeService, Reply, Request


class FakeTeams(FakeService):
    def __init__(self, client_id: str = "app-id", client_secret: str = "app-secret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.tokens: set[str] = set()
        self.webhook_posts: list[dict] = []
        self.channel_messages: list[dict] = []
        self._ids = itertools.count(1)
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path.startswith("/webhookb2/"):
            return self.incoming_webhook(request)
        if re.fullmatch(r"/[\w.-]+/oauth2/v2\.0/token", request.path):
            return self.token(request)
        m = re.fullmatch(r"/v1\.0/teams/([\w-]+)/channels/([\w:@.-]+)/messages", request.path)
        if m and request.method == "POST":
            return self.channel_message(request, *m.groups())
        return Reply(404, {"error": {"code": "NotFound", "message": f"Resource not found for the segment "
                                                                  f"'{request.path.rsplit('/', 1)[-1]}'."}})

    def incoming_webhook(self, request: Request) -> Reply:
        if request.path != "/webhookb2/good":
            return Reply(404, "Webhook not found")
        try:
            card = request.json()
        except ValueError:
            card = None
        cards = [a.get("content") or {} for a in (card or {}).get("attachments", [])] if isinstance(card, dict) else []
        if not isinstance(card, dict) or not (card.get("text") or (cards and all(c.get("body") for c in cards))):
            return Reply(400, "Bad payload received by generic incoming webhook.")
        self.webhook_posts.append(card)
        return Reply(200, "1")

    def token(self, request: Request) -> Reply:
        form = request.form()
        if form.get("grant_type") != "client_credentials":
            return Reply(400, {"error": "unsupported_grant_type",
                               "error_description": "AADSTS70003: The app requested an unsupported grant type."})
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            # the secret may also come as HTTP Basic (RFC 6749 2.3.1)
            import base64
            auth = request.headers.get("authorization", "")
            pair = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            if pair != f"{self.client_id}:{self.client_secret}":
                return Reply(401, {"error": "invalid_client",
                                   "error_description": "AADSTS7000215: Invalid client secret provided."})
        token = f"graph-token-{next(self._ids)}"
        self.tokens.add(token)
        return Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                           "access_token": token})

    def channel_message(self, request: Request, team: str, channel: str) -> Reply:
        if request.bearer not in self.tokens:
            return Reply(401, {"error": {"code": "InvalidAuthenticationToken",
                                         "message": "Access token is empty."}})
        if team == "forbidden-team":
            return Reply(403, {"error": {"code": "Forbidden", "message": "Missing role permissions on the request. "
                                         "API requires one of 'ChannelMessage.Send, Teamwork.Migrate.All'."}})
        body = request.json() or {}
        content = (body.get("body") or {}).get("content")
        if not content:
            return Reply(400, {"error": {"code": "BadRequest", "message": "Missing body content"}})
        message = {"id": f"16{next(self._ids):011d}", "messageType": "message", "subject": body.get("subject"),
                   "body": body["body"], "channelIdentity": {"teamId": team, "channelId": channel}}
        self.channel_messages.append(message)
        return Reply(201, message)
