"""Stripe API (https://docs.stripe.com/api): form-encoded request bodies with nested keys
(`metadata[order]=7`), `Authorization: Bearer sk_...`, errors as `{"error": {"type", "code",
"message", "param"}}`, lists as `{"object": "list", "data", "has_more"}` paged with
`starting_after`, and idempotent POSTs: a repeated `Idempotency-Key` replays the first answer."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from urllib.parse import parse_qsl

import httpx

from . import FakeService, Reply, Request


def decode_form(body: str) -> dict:
    """Stripe's nested form encoding back into objects: a[b]=1&a[c][0]=x -> {"a": {"b": "1", "c": ["x"]}}."""
    out: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        target = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(target, list):
                index = len(target) if part == "[]" else int(part)
                while len(target) <= index:
                    target.append(None)
                if last:
                    target[index] = value
                else:
                    if target[index] is None:
                        target[index] = [] if parts[i + 1].isdigit() or parts[i + 1] == "[]" else {}
                    target = target[index]
            else:
                if last:
                    target[part] = value
                else:
                    nxt = parts[i + 1]
                    target = target.setdefault(part, [] if nxt.isdigit() or nxt == "[]" else {})
    return out


def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> Reply:
    body = {"type": type_, "message": message}
    if code:
        body["code"] = code
    if param:
        body["param"] = param
    return Reply(status, {"error": body}, {"Request-Id": "req_fake"})


class FakeStripe(FakeService):
    def __init__(self, key: str = "sk_test_fake123") -> None:
        self.key = key
        self.objects: dict[str, dict[str, dict]] = {"customers": {}, "payment_intents": {}, "refunds": {}}
        self.replays: dict[str, Reply] = {}
        self._ids = itertools.count(1)
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.bearer != self.key:
            shown = (request.bearer or "")[:8] + "*" * 4
            return error(401, f"Invalid API Key provided: {shown}" if request.bearer else
                         "You did not provide an API key.")
        key = request.headers.get("idempotency-key")
        if request.method == "POST" and key and key in self.replays:
            first = self.replays[key]
            return Reply(first.status, first.body, {**first.headers, "Idempotent-Replayed": "true"})
        reply = self._route(request)
        if request.method == "POST" and key and reply.status < 500:
            self.replays[key] = reply
        return reply

    def _route(self, request: Request) -> Reply:
        m = re.fullmatch(r"/v1/(customers|payment_intents|refunds)(?:/([A-Za-z0-9_]+))?", request.path)
        if not m:
            return error(404, f"Unrecognized request URL ({request.method}: {request.path}).")
        kind, object_id = m.groups()
        store = self.objects[kind]
        if request.method == "GET" and object_id is None:
            return self.list(kind, request)
        if request.method == "GET":
            found = store.get(object_id)
            return Reply(200, found) if found else error(404, f"No such {kind[:-1]}: '{object_id}'",
                                                         code="resource_missing", param="id")
        if request.method != "POST":
            return error(405, "Method not allowed")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded") \
                and request.body:
            return error(400, "Invalid request: Stripe expects form-encoded parameters")
        fields = decode_form(request.body.decode())
        if object_id is not None:
            found = store.get(object_id)
            if not found:
                return error(404, f"No such {kind[:-1]}: '{object_id}'", code="resource_missing", param="id")
            found.update({k: v for k, v in fields.items() if k != "metadata"})
            found["metadata"].update(fields.get("metadata", {}))
            return Reply(200, found)
        return getattr(self, "create_" + kind)(fields)

    def _new(self, kind: str, prefix: str, obj: dict) -> Reply:
        obj = {"id": f"{prefix}_{next(self._ids):08d}", "created": 1700000000, "livemode": False, **obj}
        obj.setdefault("metadata", {})
        self.objects[kind][obj["id"]] = obj
        return Reply(200, obj)

    def create_customers(self, f: dict) -> Reply:
        return self._new("customers", "cus", {"object": "customer", "email": f.get("email"), "name": f.get("name"),
                                               "description": f.get("description"), "metadata": f.get("metadata", {})})

    def create_payment_intents(self, f: dict) -> Reply:
        for name in ("amount", "currency"):
            if name not in f:
                return error(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        if not f["amount"].isdigit():
            return error(400, "Invalid integer: " + f["amount"], code="parameter_invalid_integer", param="amount")
        return self._new("payment_intents", "pi", {
            "object": "payment_intent", "amount": int(f["amount"]), "currency": f["currency"],
            "customer": f.get("customer"), "status": "requires_payment_method",
            "payment_method_types": f.get("payment_method_types", ["card"]), "metadata": f.get("metadata", {})})

    def create_refunds(self, f: dict) -> Reply:
        intent = self.objects["payment_intents"].get(f.get("payment_intent", ""))
        if intent is None:
            return error(400, f"No such payment_intent: '{f.get('payment_intent')}'", code="resource_missing",
                         param="payment_intent")
        amount = int(f.get("amount", intent["amount"]))
        return self._new("refunds", "re", {"object": "refund", "amount": amount, "payment_intent": intent["id"],
                                             "status": "succeeded", "reason": f.get("reason")})

    def list(self, kind: str, request: Request) -> Reply:
        limit = int(request.query.get("limit", 10))
        rows = list(self.objects[kind].values())
        after = request.query.get("starting_after")
        if after:
            ids = [r["id"] for r in rows]
            if after not in ids:
                return error(400, f"No such {kind[:-1]}: '{after}'", code="resource_missing", param="starting_after")
            rows = rows[ids.index(after) + 1:]
        return Reply(200, {"object": "list", "url": f"/v1/{kind}", "data": rows[:limit], "has_more": len(rows) > limit})


def event_body(event: dict) -> bytes:
    return json.dumps({"object": "event", "api_version": "2024-06-20", **event}).encode()


def deliver_header(event: dict, endpoint_secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature: t={unix time},v1={hex HMAC-SHA256(secret, "{t}.{body}")}` for this event."""
    stamp = int(time.time()) if timestamp is None else timestamp
    v1 = hmac.new(endpoint_secret.encode(), f"{stamp}.".encode() + event_body(event), hashlib.sha256).hexdigest()
    return f"t={stamp},v1={v1}"


def deliver(url: str, event: dict, endpoint_secret: str, *, timestamp: int | None = None) -> httpx.Response:
    """POST an event the way Stripe delivers to a webhook endpoint: JSON, signed (deliver_header)."""
    return httpx.post(url, content=event_body(event), timeout=15, headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": deliver_header(event, endpoint_secret, timestamp)})
