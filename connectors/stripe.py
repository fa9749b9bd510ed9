"""Stripe: customers, payment intents, refunds, lists with pagination; a webhook trigger with the
`Stripe-Signature` verified.

Stripe takes form-encoded bodies whose nested fields are written `metadata[order_id]=7`
(`form_encode`), answers errors as `{"error": {"type", "code", "message"}}`, and replays a POST
sent again with the same `Idempotency-Key`: every create passes the step's idempotency key on,
so a step re-run after a crash creates nothing twice. Lists page with `starting_after` while
`has_more` is true.

Events Stripe sends are signed: `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"{t}.{raw body}" with the endpoint secret>` (several v1 while a secret is being rolled).
`verify_signature` checks it and refuses timestamps outside the tolerance (replays).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import quote, urlencode

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry, Unverified, WebhookRequest
from .sdk.auth import register_scheme
from .sdk.http import call

API = "https://api.stripe.com"
TOLERANCE_S = 300
ICON = "stripe.svg"
CATEGORY = "Stripe"
#: Pages a list node follows at most (100 objects each), so a runaway list cannot fill a run.
MAX_PAGES = 100


def form_encode(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: {"metadata": {"a": 1}, "types": ["card"]} ->
    [("metadata[a]", "1"), ("types[0]", "card")]; booleans as true/false, None left out."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            pairs += form_encode(sub, f"{prefix}[{key}]" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            pairs += form_encode(sub, f"{prefix}[{i}]")
    elif value is None:
        pass
    elif isinstance(value, bool):
        pairs.append((prefix, "true" if value else "false"))
    else:
        pairs.append((prefix, str(value)))
    return pairs


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The v1 signature Stripe computes for this timestamp and raw body."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, header: str | None, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> int:
    """Raise Unverified unless one v1 in the `Stripe-Signature` header signs `body`; returns its t."""
    if not secret:
        raise Unverified("the trigger's credential has no endpoint secret")
    if not header:
        raise Unverified("missing Stripe-Signature header")
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v.strip() for k, v in parts if k.strip() == "t"]
    signatures = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        raise Unverified("Stripe-Signature must hold t=<timestamp> and at least one v1=<signature>")
    stamp = int(stamps[0])
    expected = signature(secret, stamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise Unverified("no v1 signature in Stripe-Signature matches the request (wrong endpoint secret?)")
    if abs(now - stamp) > tolerance_s:
        raise Unverified(f"Stripe-Signature timestamp is more than {int(tolerance_s)} s from now (a replay?)")
    return stamp


def _verify(request: WebhookRequest) -> None:
    tolerance = request.params.get("tolerance_s", TOLERANCE_S)
    verify_signature((request.credential or {}).get("endpoint_secret", ""), request.headers.get("stripe-signature"),
                     request.body, request.now, tolerance)


def _secret_key(credential: Any, request: Any) -> None:
    key = credential.get("secret_key")
    if not key:
        raise NodeError("the stripe credential has no secret_key")
    request.headers["Authorization"] = f"Bearer {key}"


def _url(ctx: NodeContext, path: str) -> str:
    return f"{str(ctx.param('base_url')).rstrip('/')}{path}"


async def _post(ctx: NodeContext, path: str, fields: dict, key: str) -> dict:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if ctx.param("api_version"):
        headers["Stripe-Version"] = ctx.param("api_version")
    response = await call(ctx, "POST", _url(ctx, path), content=urlencode(form_encode(fields)).encode(),
                          idempotency=key, headers=headers)
    return response.json()


def _keys(ctx: NodeContext, items: list[dict]) -> list[str]:
    """One idempotency key per item: the step's key, suffixed for items after the first (as http_request)."""
    key = ctx.idempotency_key
    return [key if i == 0 else f"{key}#{i}" for i in range(len(items))]


def _fields(ctx: NodeContext, item: dict, names: tuple[str, ...]) -> dict:
    fields = {name: ctx.param(name, item) for name in names}
    extra = ctx.param("extra", item) or {}
    if not isinstance(extra, dict):
        raise NodeError("param 'extra' must be an object of more Stripe fields")
    return {**{k: v for k, v in fields.items() if v not in (None, "", {})}, **extra}


def _create(path: str, names: tuple[str, ...]):
    async def run(ctx: NodeContext, items: list[dict]) -> list[dict]:
        return [await _post(ctx, path, _fields(ctx, item, names), key)
                for item, key in zip(items, _keys(ctx, items))]
    return run


async def _update_customer(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item, key in zip(items, _keys(ctx, items)):
        customer = ctx.param("customer", item)
        out.append(await _post(ctx, f"/v1/customers/{quote(str(customer), safe='')}", _fields(ctx, item, ("email", "name", "description",
                                                                                      "metadata")), key))
    return out


async def _list(ctx: NodeContext, items: list[dict]) -> list[dict]:
    """Every object of the list (following has_more/starting_after up to `limit` objects), one item each."""
    out: list[dict] = []
    for item in items[:1] or [{}]:
        resource = ctx.param("resource", item)
        limit = ctx.param("limit", item)
        filters = ctx.param("filters", item) or {}
        after = None
        for _ in range(MAX_PAGES):
            size = ctx.param("page_size", item)
            page_size = min(size, limit - len(out)) if limit else size
            params = form_encode({**filters, "limit": page_size, "starting_after": after})
            page = (await call(ctx, "GET", _url(ctx, f"/v1/{resource}"), params=params)).json()
            out += page.get("data", [])
            if not page.get("has_more") or not page.get("data") or (limit and len(out) >= limit):
                break
            after = page["data"][-1]["id"]
    return out


def _event(ctx: NodeContext, items: list[dict]) -> list[dict]:
    """Keep the events whose type the trigger listens to (all when `events` is empty)."""
    wanted = ctx.param("events") or []
    return [item for item in items if not wanted or item.get("type") in wanted]


BASE_URL = Param("string", default=API, description="Stripe API base URL (change only for a proxy or a test)")
METADATA = Param("object", description="key-value metadata, sent as metadata[key]=value")
EXTRA = Param("object", description="more Stripe fields, nested objects allowed (form-encoded as Stripe documents)")
CREDENTIAL_TYPES = (
    CredentialType("stripe", {"secret_key": Field("Secret key (sk_live_... or restricted rk_...)")},
                   description="A Stripe secret or restricted API key."),
    CredentialType("stripe_webhook", {"endpoint_secret": Field("Endpoint signing secret (whsec_...)")},
                   description="The signing secret of a Stripe webhook endpoint, to verify events."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    register_scheme("stripe", _secret_key)
    common = {"category": CATEGORY, "icon": ICON, "credential_types": ("stripe",)}
    version = Param("string", description="Stripe-Version header (default: the account's API version)")
    add = registry.add
    add(NodeType("stripe.create_customer", _create("/v1/customers", ("email", "name", "description", "metadata")),
                 label="Create customer", params={
        "email": Param("string"), "name": Param("string"), "description": Param("string"), "metadata": METADATA,
        "extra": EXTRA, "base_url": BASE_URL, "api_version": version,
    }, description="Creates a customer (POST /v1/customers), idempotently; outputs the customer.", **common))
    add(NodeType("stripe.update_customer", _update_customer, label="Update customer", params={
        "customer": Param("string", required=True, description="customer id, cus_..."),
        "email": Param("string"), "name": Param("string"), "description": Param("string"), "metadata": METADATA,
        "extra": EXTRA, "base_url": BASE_URL, "api_version": version,
    }, description="Updates a customer (POST /v1/customers/{id}); outputs the customer.", **common))
    add(NodeType("stripe.create_payment_intent",
                 _create("/v1/payment_intents", ("amount", "currency", "customer", "description", "metadata")),
                 label="Create payment intent", params={
        "amount": Param("integer", required=True, description="in the currency's smallest unit (cents)"),
        "currency": Param("string", required=True, description="three-letter ISO code, lower case: eur, usd"),
        "customer": Param("string", description="customer id, cus_..."), "description": Param("string"),
        "metadata": METADATA, "extra": EXTRA, "base_url": BASE_URL, "api_version": version,
    }, description="Creates a payment intent (POST /v1/payment_intents), idempotently.", **common))
    add(NodeType("stripe.create_refund", _create("/v1/refunds", ("payment_intent", "amount", "reason", "metadata")),
                 label="Create refund", params={
        "payment_intent": Param("string", required=True, description="payment intent id, pi_..."),
        "amount": Param("integer", description="in the smallest unit; default: the whole amount"),
        "reason": Param("string", description="duplicate, fraudulent or requested_by_customer"),
        "metadata": METADATA, "extra": EXTRA, "base_url": BASE_URL, "api_version": version,
    }, description="Refunds a payment intent (POST /v1/refunds), idempotently.", **common))
    add(NodeType("stripe.list", _list, label="List objects", params={
        "resource": Param("string", default="customers", choices=("customers", "payment_intents", "refunds",
                                                                  "charges", "invoices", "subscriptions")),
        "filters": Param("object", description="list filters, e.g. {email: ...} or {created: {gte: 1700000000}}"),
        "limit": Param("integer", default=100, description="most objects to return in all (0: every one)"),
        "page_size": Param("integer", default=100, description="objects per request (Stripe's limit, 1 to 100)"),
        "base_url": BASE_URL,
    }, description="Lists objects, following has_more/starting_after; outputs one item per object.", **common))
    add(NodeType("stripe.webhook", _event, label="Stripe event", category=CATEGORY, icon=ICON,
                 credential_types=("stripe_webhook",), trigger_kind="webhook", verify=_verify, pure=True, params={
        "path": Param("string", required=True, expression=False,
                      description="path under /hooks/{tenant}/ to register as the endpoint URL in Stripe"),
        "method": Param("string", default="POST", choices=("POST",), expression=False),
        "respond": Param("string", default="when_done", choices=("when_done", "immediately"), expression=False,
                         description="immediately acknowledges Stripe at once (recommended for slow flows)"),
        "events": Param("list", default=[], expression=False,
                        description="event types to keep, e.g. [payment_intent.succeeded]; empty: all"),
        "tolerance_s": Param("integer", default=TOLERANCE_S, expression=False,
                             description="largest age of a signature's timestamp, in seconds"),
    }, description="Started by a Stripe event sent to the webhook endpoint; the Stripe-Signature is verified. "
                   "The item is the event: id, type, data.object."))
