"""The cloud connectors (Slack, Teams, SendGrid, Stripe, GitHub, Salesforce, AI chat, GraphQL, SOAP),
each run inside a real flow through the engine against a loopback fake of its service
(tests/fakes/) that speaks the documented wire format, errors, 429 + Retry-After and pagination.
The signed webhook triggers run on a real `flowfuse serve`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import sqlite3
import time
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
from lxml import etree

from appliance.runtime import Runtime
from connectors import github, slack, stripe
from engine.nodes import Unverified
from tests.conftest import Server, flowfuse, free_port
from tests.fakes import Reply
from tests.fakes import github as fake_github
from tests.fakes import slack as fake_slack
from tests.fakes import stripe as fake_stripe
from tests.fakes.ai import FakeAI
from tests.fakes.github import FakeGitHub
from tests.fakes.graphql import FakeGraphQL
from tests.fakes.salesforce import FakeSalesforce
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.slack import FakeSlack
from tests.fakes.soap import NS, SOAP, FakeSoap
from tests.fakes.stripe import FakeStripe, decode_form
from tests.fakes.teams import FakeTeams


@pytest.fixture
def runtime(settings):
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def fake(request):
    """The fake named by the test's parametrisation: `@pytest.mark.parametrize("fake", [FakeX], indirect=True)`."""
    service = request.param()
    yield service
    service.close()


def credential(runtime: Runtime, name: str, type_: str, fields: dict) -> str:
    runtime.vault.put(runtime.tenant_id("default"), name, type_, fields)
    return name


def chain(*nodes: dict, name: str = "cloud") -> dict:
    """A manual trigger followed by `nodes` in a line; each node is {"id", "type", "params", "credential"?}."""
    all_nodes = [{"id": "start", "type": "manual"}, *nodes]
    return {"name": name, "nodes": all_nodes,
            "edges": [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(all_nodes)]}


def run(runtime: Runtime, doc: dict, items: list[dict] | None = None):
    row = runtime.catalog.save_flow(runtime.tenant_id("default"), doc)
    return asyncio.run(runtime.run_inline(row, "manual", items if items is not None else [{}]))


def ok(runtime: Runtime, doc: dict, items: list[dict] | None = None) -> tuple[str, list[dict]]:
    execution_id, outcome = run(runtime, doc, items)
    assert outcome.status == "succeeded", outcome.error
    return execution_id, outcome.output


def failed(runtime: Runtime, doc: dict, items: list[dict] | None = None) -> str:
    _, outcome = run(runtime, doc, items)
    assert outcome.status == "failed", outcome.output
    return outcome.error["message"]


def step_items(runtime: Runtime, execution_id: str, node: str) -> list[dict]:
    [step] = [s for s in runtime.runs.show(execution_id)["steps"] if s["node"] == node]
    return step["items"]


def waited_for_retry_after(requests, seconds: float) -> bool:
    """The second request came at least Retry-After seconds after the 429."""
    return len(requests) == 2 and requests[1].at - requests[0].at >= seconds


# -- Slack --------------------------------------------------------------------------------------------------------


@pytest.fixture
def slack_fake():
    service = FakeSlack()
    yield service
    service.close()


def slack_node(fake, id_: str, type_: str, **params) -> dict:
    return {"id": id_, "type": f"slack.{type_}", "credential": "slack",
            "params": {"base_url": fake.url + "/api", **params}}


def test_slack_post_update_delete_in_one_flow(runtime, slack_fake):
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-test-token"})
    doc = chain(slack_node(slack_fake, "post", "post_message", channel="C1", text="Order {{ json.id }} shipped"),
                slack_node(slack_fake, "edit", "update_message", channel="{{ json.channel }}", ts="{{ json.ts }}",
                           text="Order delivered"),
                slack_node(slack_fake, "drop", "delete_message", channel="{{ json.channel }}", ts="{{ json.ts }}"))
    execution_id, [out] = ok(runtime, doc, [{"id": 42}])
    assert out["deleted"] is True
    post, update, delete = slack_fake.requests
    assert post.path == "/api/chat.postMessage"
    assert post.headers["authorization"] == "Bearer xoxb-test-token"
    assert post.headers["content-type"] == "application/json; charset=utf-8"
    assert post.json() == {"channel": "C1", "text": "Order 42 shipped"}
    [posted] = step_items(runtime, execution_id, "post")
    assert update.json() == {"channel": "C1", "ts": posted["ts"], "text": "Order delivered"}
    assert delete.json() == {"channel": "C1", "ts": posted["ts"]}
    assert slack_fake.messages == {}
    assert "xoxb-test-token" not in json.dumps(runtime.runs.show(execution_id))


def test_slack_ok_false_surfaces_slacks_error_code(runtime, slack_fake):
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-test-token"})
    message = failed(runtime, chain(slack_node(slack_fake, "post", "post_message", channel="C_ARCHIVED", text="x")))
    assert message == "Slack chat.postMessage failed: is_archived"
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-revoked"})
    message = failed(runtime, chain(slack_node(slack_fake, "post", "post_message", channel="C1", text="x")))
    assert message == "Slack chat.postMessage failed: invalid_auth"


def test_slack_429_retry_after_is_honoured(runtime, slack_fake):
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-test-token"})
    slack_fake.rate_limit_next("/api/chat.postMessage", retry_after=1)
    _, [out] = ok(runtime, chain(slack_node(slack_fake, "post", "post_message", channel="C1", text="hello")))
    assert out["channel"] == "C1"
    assert waited_for_retry_after(slack_fake.of("/api/chat.postMessage"), 1.0)
    assert len(slack_fake.messages) == 1


def test_slack_upload_file_uses_the_external_upload_flow(runtime, slack_fake):
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-test-token"})
    content = base64.b64encode(bytes(range(200))).decode()
    doc = chain(slack_node(slack_fake, "up", "upload_file", channel="C9", filename="{{ json.name }}",
                           content="{{ json.data }}", encoding="base64", initial_comment="nightly export"))
    _, [out] = ok(runtime, doc, [{"name": "export.bin", "data": content}])
    assert [r.path for r in slack_fake.requests] == ["/api/files.getUploadURLExternal", f"/upload/{out['file_id']}",
                                                     "/api/files.completeUploadExternal"]
    get_url, upload, complete = slack_fake.requests
    assert get_url.form() == {"filename": "export.bin", "length": "200"}
    assert "authorization" not in upload.headers  # the upload URL is pre-signed
    assert json.loads(complete.form()["files"]) == [{"id": out["file_id"], "title": "export.bin"}]
    stored = slack_fake.uploads[out["file_id"]]
    assert stored["content"] == bytes(range(200))
    assert (stored["channel"], stored["comment"]) == ("C9", "nightly export")
    assert out["bytes"] == 200


def test_slack_lookup_user_by_email(runtime, slack_fake):
    credential(runtime, "slack", "slack_bot", {"token": "xoxb-test-token"})
    _, [user] = ok(runtime, chain(slack_node(slack_fake, "who", "lookup_user", email="{{ json.email }}")),
                   [{"email": "ada@example.com"}])
    assert user["id"] == "U0ADA"
    assert slack_fake.requests[0].query == {"email": "ada@example.com"}
    message = failed(runtime, chain(slack_node(slack_fake, "who", "lookup_user", email="nobody@example.com")))
    assert message == "Slack users.lookupByEmail failed: users_not_found"


def test_slack_signature_matches_slacks_documented_example():
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    secret, stamp = "8f742231b10e8888abcd99yyyzzz85a5", "1531420618"
    documented = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack.signature(secret, stamp, body) == documented
    slack.verify_signature(secret, stamp, documented, body, now=1531420618 + 299)
    with pytest.raises(Unverified, match="more than 300 s from now"):
        slack.verify_signature(secret, stamp, documented, body, now=1531420618 + 301)
    with pytest.raises(Unverified, match="does not match"):
        slack.verify_signature(secret, stamp, documented, body + b"x", now=1531420618)
    with pytest.raises(Unverified, match="missing"):
        slack.verify_signature(secret, None, documented, body, now=1531420618)


# -- Stripe -------------------------------------------------------------------------------------------------------


@pytest.fixture
def stripe_fake():
    service = FakeStripe()
    yield service
    service.close()


def stripe_node(fake, id_: str, type_: str, **params) -> dict:
    return {"id": id_, "type": f"stripe.{type_}", "credential": "stripe", "params": {"base_url": fake.url, **params}}


def test_stripe_create_customer_is_form_encoded_with_idempotency_keys(runtime, stripe_fake):
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_fake123"})
    doc = chain(stripe_node(stripe_fake, "cus", "create_customer", email="{{ json.email }}", name="{{ json.name }}",
                            metadata={"order": "{{ json.order }}", "source": "flowfuse"}))
    execution_id, out = ok(runtime, doc, [{"email": "a@example.com", "name": "Ada", "order": 7},
                                          {"email": "b@example.com", "name": "Bob", "order": 8}])
    first, second = stripe_fake.of("/v1/customers")
    assert first.headers["authorization"] == "Bearer sk_test_fake123"
    assert first.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(first.body.decode()) == {"email": ["a@example.com"], "name": ["Ada"], "metadata[order]": ["7"],
                                             "metadata[source]": ["flowfuse"]}
    assert first.headers["idempotency-key"] == f"{execution_id}:cus:1"
    assert second.headers["idempotency-key"] == f"{execution_id}:cus:1#1"
    assert [c["metadata"] for c in out] == [{"order": "7", "source": "flowfuse"}, {"order": "8", "source": "flowfuse"}]
    assert out[0]["id"].startswith("cus_")


def test_stripe_payment_intent_then_refund(runtime, stripe_fake):
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_fake123"})
    doc = chain(stripe_node(stripe_fake, "pay", "create_payment_intent", amount="{{ json.cents }}", currency="eur",
                            extra={"payment_method_types": ["card", "sepa_debit"]}),
                stripe_node(stripe_fake, "back", "create_refund", payment_intent="{{ json.id }}", amount=500,
                            reason="requested_by_customer"))
    _, [refund] = ok(runtime, doc, [{"cents": 1999}])
    pay = decode_form(stripe_fake.of("/v1/payment_intents")[0].body.decode())
    assert pay == {"amount": "1999", "currency": "eur", "payment_method_types": ["card", "sepa_debit"]}
    assert refund["object"] == "refund" and refund["amount"] == 500 and refund["payment_intent"].startswith("pi_")


def test_stripe_errors_surface_stripes_message(runtime, stripe_fake):
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_fake123"})
    message = failed(runtime, chain(stripe_node(stripe_fake, "back", "create_refund", payment_intent="pi_missing")))
    assert message.endswith("answered HTTP 400: No such payment_intent: 'pi_missing'")
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_wrongkey99"})
    message = failed(runtime, chain(stripe_node(stripe_fake, "cus", "create_customer", email="a@example.com")))
    assert "answered HTTP 401: Invalid API Key provided: sk_test_****" in message
    assert "sk_test_wrongkey99" not in message


def test_stripe_list_follows_starting_after(runtime, stripe_fake):
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_fake123"})
    doc = chain(stripe_node(stripe_fake, "cus", "create_customer", email="{{ json.email }}"),
                name="seed")
    ok(runtime, doc, [{"email": f"c{i}@example.com"} for i in range(5)])
    _, out = ok(runtime, chain(stripe_node(stripe_fake, "all", "list", resource="customers", page_size=2, limit=0)))
    assert [c["email"] for c in out] == [f"c{i}@example.com" for i in range(5)]
    pages = [r for r in stripe_fake.requests if r.method == "GET"]
    assert [p.query.get("starting_after") for p in pages] == [None, out[1]["id"], out[3]["id"]]
    assert all(p.query["limit"] == "2" for p in pages)


def test_stripe_429_retry_after_is_honoured_and_the_key_is_kept(runtime, stripe_fake):
    credential(runtime, "stripe", "stripe", {"secret_key": "sk_test_fake123"})
    stripe_fake.rate_limit_next("/v1/customers", retry_after=1, body={"error": {"type": "rate_limit_error",
                                                                               "message": "Too many requests"}})
    _, [out] = ok(runtime, chain(stripe_node(stripe_fake, "cus", "create_customer", email="a@example.com")))
    requests = stripe_fake.of("/v1/customers")
    assert waited_for_retry_after(requests, 1.0)
    assert requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]
    assert len(stripe_fake.objects["customers"]) == 1 and out["email"] == "a@example.com"


def test_stripe_signature_scheme():
    body, secret = b'{"id": "evt_1", "type": "payment_intent.succeeded"}', "whsec_test"
    stamp = 1700000000
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert stripe.signature(secret, stamp, body) == expected
    # several v1 while a secret is rolled, and a v0 (test mode, ignored): one matching v1 is enough
    header = f"t={stamp},v1={'0' * 64},v1={expected},v0={'1' * 64}"
    assert stripe.verify_signature(secret, header, body, now=stamp + 10) == stamp
    with pytest.raises(Unverified, match="more than 300 s"):
        stripe.verify_signature(secret, header, body, now=stamp + 301)
    with pytest.raises(Unverified, match="no v1 signature"):
        stripe.verify_signature("whsec_other", header, body, now=stamp)
    with pytest.raises(Unverified, match="must hold t="):
        stripe.verify_signature(secret, f"v1={expected}", body, now=stamp)


def test_stripe_form_encoding_of_nested_values():
    assert stripe.form_encode({"metadata": {"a": 1}, "items": [{"price": "p_1", "qty": 2}], "off": False,
                               "skip": None}) == [("metadata[a]", "1"), ("items[0][price]", "p_1"),
                                                  ("items[0][qty]", "2"), ("off", "false")]


# -- GitHub -------------------------------------------------------------------------------------------------------


@pytest.fixture
def github_fake():
    service = FakeGitHub()
    yield service
    service.close()


def github_node(fake, id_: str, type_: str, **params) -> dict:
    return {"id": id_, "type": f"github.{type_}", "credential": "gh",
            "params": {"base_url": fake.url, "owner": "acme", "repo": "app", **params}}


def test_github_issue_comment_close_pull_request_and_dispatch(runtime, github_fake):
    credential(runtime, "gh", "github", {"token": "ghp_faketoken"})
    doc = chain(github_node(github_fake, "issue", "create_issue", title="Build {{ json.build }} failed",
                            body="see logs", labels=["ci"]),
                github_node(github_fake, "say", "create_comment", number="{{ json.number }}", body="on it"),
                github_node(github_fake, "pr", "create_pull_request", title="Fix build", head="fix", base="main"),
                github_node(github_fake, "go", "repository_dispatch", event_type="deploy",
                            client_payload={"ref": "main"}))
    _, [out] = ok(runtime, doc, [{"build": 17}])
    assert out == {"dispatched": True, "event_type": "deploy"}
    first = github_fake.requests[0]
    assert first.headers["authorization"] == "Bearer ghp_faketoken"
    assert first.headers["accept"] == "application/vnd.github+json"
    assert first.headers["x-github-api-version"] == "2022-11-28"
    assert first.json() == {"title": "Build 17 failed", "body": "see logs", "labels": ["ci"]}
    [issue] = github_fake.issues["acme/app"]
    assert github_fake.comments[0]["issue"] == issue["number"] and github_fake.comments[0]["body"] == "on it"
    assert github_fake.pulls[0]["head"] == {"ref": "fix"}
    assert github_fake.dispatches == [{"repo": "acme/app", "event_type": "deploy", "client_payload": {"ref": "main"}}]
    ok(runtime, chain(github_node(github_fake, "close", "update_issue", number=issue["number"], state="closed")))
    assert github_fake.issues["acme/app"][0]["state"] == "closed"


def test_github_errors_surface_the_message_and_invalid_fields(runtime, github_fake):
    credential(runtime, "gh", "github", {"token": "ghp_faketoken"})
    message = failed(runtime, chain(github_node(github_fake, "pr", "create_pull_request", title="x", head="{{ '' }}",
                                                base="main")))
    assert message.endswith("answered HTTP 422: Validation Failed (head: missing_field)")
    credential(runtime, "gh", "github", {"token": "ghp_revoked"})
    message = failed(runtime, chain(github_node(github_fake, "issue", "create_issue", title="x")))
    assert message.endswith("answered HTTP 401: Bad credentials")


def test_github_list_follows_the_link_header(runtime, github_fake):
    credential(runtime, "gh", "github", {"token": "ghp_faketoken"})
    ok(runtime, chain(github_node(github_fake, "issue", "create_issue", title="{{ json.t }}")),
       [{"t": f"issue {i}"} for i in range(5)])
    _, out = ok(runtime, chain(github_node(github_fake, "all", "list_issues", per_page=2, limit=0)))
    assert [i["title"] for i in out] == [f"issue {i}" for i in range(5)]
    pages = [r for r in github_fake.requests if r.method == "GET"]
    assert [p.query.get("page") for p in pages] == [None, "2", "3"]


def test_github_429_retry_after_is_honoured(runtime, github_fake):
    credential(runtime, "gh", "github", {"token": "ghp_faketoken"})
    github_fake.rate_limit_next("/repos/acme/app/issues", retry_after=1,
                                body={"message": "You have exceeded a secondary rate limit."})
    _, [issue] = ok(runtime, chain(github_node(github_fake, "issue", "create_issue", title="later")))
    assert issue["title"] == "later"
    assert waited_for_retry_after(github_fake.of("/repos/acme/app/issues"), 1.0)


def test_github_signature_matches_githubs_documented_example():
    # docs.github.com, "Validating webhook deliveries": test values
    documented = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github.signature("It's a Secret to Everybody", b"Hello, World!") == documented
    github.verify_signature("It's a Secret to Everybody", documented, b"Hello, World!")
    with pytest.raises(Unverified, match="does not match"):
        github.verify_signature("It's a Secret to Everybody", documented, b"Hello, World?")
    with pytest.raises(Unverified, match="missing X-Hub-Signature-256"):
        github.verify_signature("It's a Secret to Everybody", None, b"Hello, World!")


# -- SendGrid -----------------------------------------------------------------------------------------------------


@pytest.fixture
def sendgrid_fake():
    service = FakeSendGrid()
    yield service
    service.close()


def sendgrid_node(fake, type_: str, **params) -> dict:
    return {"id": "mail", "type": f"sendgrid.{type_}", "credential": "sg",
            "params": {"base_url": fake.url, "from": {"email": "shop@example.com", "name": "Shop"}, **params}}


def test_sendgrid_plain_and_template_mail(runtime, sendgrid_fake):
    credential(runtime, "sg", "sendgrid", {"api_key": "SG.fake-key"})
    _, [out] = ok(runtime, chain(sendgrid_node(sendgrid_fake, "send_mail", to="{{ json.email }}", cc="x@example.com, "
                                               "y@example.com", subject="Hi {{ json.name }}", text="Welcome",
                                               html="<p>Welcome</p>")),
                  [{"email": "ada@example.com", "name": "Ada"}])
    assert out == {"status": 202, "message_id": "msg-1", "to": ["ada@example.com"]}
    [request] = sendgrid_fake.requests
    assert request.headers["authorization"] == "Bearer SG.fake-key"
    assert request.json() == {
        "personalizations": [{"to": [{"email": "ada@example.com"}],
                              "cc": [{"email": "x@example.com"}, {"email": "y@example.com"}]}],
        "from": {"email": "shop@example.com", "name": "Shop"}, "subject": "Hi Ada",
        "content": [{"type": "text/plain", "value": "Welcome"}, {"type": "text/html", "value": "<p>Welcome</p>"}]}
    ok(runtime, chain(sendgrid_node(sendgrid_fake, "send_template", to=[{"email": "bob@example.com", "name": "Bob"}],
                                    template_id="d-123", data={"order": "{{ json.order }}"})), [{"order": 9}])
    template = sendgrid_fake.sent[1]
    assert template["template_id"] == "d-123"
    assert template["personalizations"] == [{"to": [{"email": "bob@example.com", "name": "Bob"}],
                                             "dynamic_template_data": {"order": 9}}]


def test_sendgrid_errors_and_429(runtime, sendgrid_fake):
    credential(runtime, "sg", "sendgrid", {"api_key": "SG.fake-key"})
    message = failed(runtime, chain(sendgrid_node(sendgrid_fake, "send_template", to="a@example.com",
                                                  template_id="not-a-guid")))
    assert message.endswith("answered HTTP 400: The template_id must be a valid GUID.")
    sendgrid_fake.rate_limit_next("/v3/mail/send", retry_after=1, body={"errors": [{"message": "too many requests"}]})
    ok(runtime, chain(sendgrid_node(sendgrid_fake, "send_mail", to="a@example.com", subject="s", text="t")))
    assert waited_for_retry_after(sendgrid_fake.of("/v3/mail/send")[1:], 1.0)


# -- Microsoft Teams ----------------------------------------------------------------------------------------------


@pytest.fixture
def teams_fake():
    service = FakeTeams()
    yield service
    service.close()


def test_teams_incoming_webhook_posts_an_adaptive_card(runtime, teams_fake):
    credential(runtime, "hook", "teams_webhook", {"url": teams_fake.url + "/webhookb2/good"})
    doc = chain({"id": "say", "type": "teams.webhook_message", "credential": "hook",
                 "params": {"title": "Deploy", "text": "Version {{ json.v }} is live"}})
    execution_id, [out] = ok(runtime, doc, [{"v": "1.2"}])
    assert out["status"] == 200 and out["response"] == "1"
    [card] = teams_fake.webhook_posts
    content = card["attachments"][0]["content"]
    assert card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [b["text"] for b in content["body"]] == ["Deploy", "Version 1.2 is live"]
    assert "/webhookb2/good" not in json.dumps(runtime.runs.show(execution_id))  # the URL is the secret
    message = failed(runtime, chain({"id": "say", "type": "teams.webhook_message", "credential": "hook",
                                     "params": {"card": {"type": "AdaptiveCard"}}}))
    assert message.endswith("answered HTTP 400: Bad payload received by generic incoming webhook.")


def test_teams_graph_channel_message_with_client_credentials(runtime, teams_fake):
    credential(runtime, "graph", "oauth2_client_credentials", {
        "token_url": teams_fake.url + "/contoso.onmicrosoft.com/oauth2/v2.0/token", "client_id": "app-id",
        "client_secret": "app-secret", "scope": "https://graph.microsoft.com/.default"})
    node = {"id": "post", "type": "teams.channel_message", "credential": "graph",
            "params": {"base_url": teams_fake.url + "/v1.0", "team_id": "{{ json.team }}",
                       "channel_id": "19:abc@thread.tacv2", "content": "<b>{{ json.text }}</b>"}}
    execution_id, [out] = ok(runtime, chain(node), [{"team": "team-1", "text": "hello"}])
    assert out["body"] == {"contentType": "html", "content": "<b>hello</b>"}
    token_request = teams_fake.of("/contoso.onmicrosoft.com/oauth2/v2.0/token")[0]
    assert token_request.form()["grant_type"] == "client_credentials"
    post = teams_fake.of("/v1.0/teams/team-1/channels/19:abc@thread.tacv2/messages")[0]
    assert post.bearer in teams_fake.tokens
    assert post.bearer not in json.dumps(runtime.runs.show(execution_id))
    message = failed(runtime, chain(node), [{"team": "forbidden-team", "text": "x"}])
    assert message.endswith("answered HTTP 403: Missing role permissions on the request. API requires one of "
                            "'ChannelMessage.Send, Teamwork.Migrate.All'.")


# -- Salesforce ---------------------------------------------------------------------------------------------------


@pytest.fixture
def salesforce_fake():
    service = FakeSalesforce()
    yield service
    service.close()


def sf_node(fake, id_: str, type_: str, **params) -> dict:
    return {"id": id_, "type": f"salesforce.{type_}", "credential": "sf",
            "params": {"instance_url": fake.url, "api_version": "v59.0", **params}}


def test_salesforce_create_upsert_update_and_paged_query(runtime, salesforce_fake):
    credential(runtime, "sf", "oauth2_client_credentials", {
        "token_url": salesforce_fake.url + "/services/oauth2/token", "client_id": "sf-client",
        "client_secret": "sf-secret"})
    _, created = ok(runtime, chain(sf_node(salesforce_fake, "new", "create", sobject="Account",
                                           fields={"Name": "{{ json.name }}"})),
                    [{"name": f"Acme {i}"} for i in range(3)])
    assert all(c["success"] and c["id"].startswith("001") for c in created)
    upsert = sf_node(salesforce_fake, "up", "upsert", sobject="Account", external_id_field="Ext_Id__c",
                     external_id="{{ json.ext }}", fields={"Name": "{{ json.name }}"})
    _, [first] = ok(runtime, chain(upsert), [{"ext": "E-1", "name": "Globex"}])
    _, [again] = ok(runtime, chain(upsert), [{"ext": "E-1", "name": "Globex Corp"}])
    assert first["created"] is True and again == {"id": first["id"], "created": False, "success": True}
    ok(runtime, chain(sf_node(salesforce_fake, "edit", "update", sobject="Account", id=created[0]["id"],
                              fields={"Name": "Acme Renamed"})))
    _, records = ok(runtime, chain(sf_node(salesforce_fake, "q", "query", soql="SELECT Id, Name FROM Account")))
    assert [r["Name"] for r in records] == ["Acme Renamed", "Acme 1", "Acme 2", "Globex Corp"]
    queries = [r for r in salesforce_fake.requests if "/query" in r.path]
    assert queries[0].query == {"q": "SELECT Id, Name FROM Account"}
    assert len(queries) == 2 and queries[1].path.startswith("/services/data/v59.0/query/01g")  # nextRecordsUrl
    assert salesforce_fake.of("/services/oauth2/token")[0].form()["grant_type"] == "client_credentials"
    patch = next(r for r in salesforce_fake.requests if r.method == "PATCH")
    assert patch.path == "/services/data/v59.0/sobjects/Account/Ext_Id__c/E-1"


def test_salesforce_errors_surface_code_and_message(runtime, salesforce_fake):
    credential(runtime, "sf", "oauth2_client_credentials", {
        "token_url": salesforce_fake.url + "/services/oauth2/token", "client_id": "sf-client",
        "client_secret": "sf-secret"})
    message = failed(runtime, chain(sf_node(salesforce_fake, "q", "query", soql="SELEKT nonsense")))
    assert message.endswith("answered HTTP 400: MALFORMED_QUERY: unexpected token: nonsense")
    message = failed(runtime, chain(sf_node(salesforce_fake, "new", "create", sobject="Account",
                                            fields={"Phone": "1"})))
    assert message.endswith("REQUIRED_FIELD_MISSING: Required fields are missing: [Name]")


# -- AI chat ------------------------------------------------------------------------------------------------------


@pytest.fixture
def ai_fake():
    service = FakeAI()
    yield service
    service.close()


def ai_node(fake, **params) -> dict:
    return {"id": "ask", "type": "ai.chat", "credential": "ai",
            "params": {"base_url": fake.url + "/v1", "model": "test-model", **params}}


def test_ai_chat_builds_messages_from_expressions(runtime, ai_fake):
    credential(runtime, "ai", "bearer", {"token": "sk-local-test"})
    _, [out] = ok(runtime, chain(ai_node(ai_fake, system="Be brief.", prompt="Summarise: {{ json.text }}",
                                         temperature=0.2)), [{"text": "a long ticket"}])
    assert out["content"] == "You said: Summarise: a long ticket"
    assert out["usage"]["total_tokens"] == 19 and out["finish_reason"] == "stop"
    [request] = ai_fake.requests
    assert request.headers["authorization"] == "Bearer sk-local-test"
    assert request.json() == {"model": "test-model", "temperature": 0.2, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarise: a long ticket"}]}


def test_ai_chat_structured_output_is_parsed(runtime, ai_fake):
    credential(runtime, "ai", "bearer", {"token": "sk-local-test"})
    schema = {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]},
                                               "score": {"type": "number"}}, "required": ["sentiment", "score"],
              "additionalProperties": False}
    _, [out] = ok(runtime, chain(ai_node(ai_fake, prompt="{{ json.review }}", json_schema=schema,
                                         schema_name="review")), [{"review": "great"}])
    assert out["json"] == {"sentiment": "positive", "score": 0.5}
    sent = ai_fake.requests[0].json()["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}}
    ai_fake.content = "Sure! Here it is: positive"
    message = failed(runtime, chain(ai_node(ai_fake, prompt="x", json_schema=schema)))
    assert message == "the model was asked for JSON matching json_schema but answered: 'Sure! Here it is: positive'"


def test_ai_chat_errors_and_a_local_server_without_key(runtime, ai_fake):
    credential(runtime, "ai", "bearer", {"token": "sk-local-test"})
    message = failed(runtime, chain(ai_node(ai_fake, model="gpt-nonexistent", prompt="hi")))
    assert message.endswith("answered HTTP 404: The model `gpt-nonexistent` does not exist or you do not have "
                            "access to it.")
    ai_fake.key = None  # a local server (llama.cpp, Ollama) that takes no key
    node = ai_node(ai_fake, prompt="hi")
    del node["credential"]
    _, [out] = ok(runtime, chain(node))
    assert out["content"] == "You said: hi"
    assert "authorization" not in ai_fake.requests[-1].headers


# -- GraphQL ------------------------------------------------------------------------------------------------------


@pytest.fixture
def graphql_fake():
    service = FakeGraphQL()
    yield service
    service.close()


def gql_node(fake, **params) -> dict:
    return {"id": "gql", "type": "graphql.request", "credential": "gql", "params": {"url": fake.url + "/graphql",
                                                                                    **params}}


def test_graphql_query_and_mutation_with_variables(runtime, graphql_fake):
    credential(runtime, "gql", "bearer", {"token": "gql-token"})
    _, [out] = ok(runtime, chain(gql_node(graphql_fake, query="query Open($done: Boolean) { todos(done: $done) "
                                          "{ id title } }", variables={"done": False})))
    assert out == {"data": {"todos": [{"id": "2", "title": "ship"}]}}
    assert graphql_fake.requests[0].headers["authorization"] == "Bearer gql-token"
    _, out = ok(runtime, chain(gql_node(graphql_fake, query="mutation Add($t: String!) { addTodo(title: $t) "
                                        "{ id done } }", variables={"t": "{{ json.title }}"})),
                [{"title": "a"}, {"title": "b"}])
    assert [o["data"]["addTodo"] for o in out] == [{"id": "3", "done": False}, {"id": "4", "done": False}]
    assert graphql_fake.requests[1].json()["variables"] == {"t": "a"}


def test_graphql_errors_are_surfaced(runtime, graphql_fake):
    credential(runtime, "gql", "bearer", {"token": "gql-token"})
    message = failed(runtime, chain(gql_node(graphql_fake, query="mutation { finish(id: \"99\") { id } }")))
    assert message == f"GraphQL errors from {graphql_fake.url}/graphql: no to-do with id 99 (at finish)"
    message = failed(runtime, chain(gql_node(graphql_fake, query="{ nope }")))
    assert "Cannot query field 'nope' on type 'Query'." in message


# -- SOAP ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def soap_fake():
    service = FakeSoap()
    yield service
    service.close()


def soap_node(fake, **params) -> dict:
    return {"id": "soap", "type": "soap.call", "credential": "soap",
            "params": {"wsdl": fake.url + "/calculator?wsdl", **params}}


def test_soap_calls_operations_from_the_wsdl(runtime, soap_fake):
    credential(runtime, "soap", "basic", {"username": "soapuser", "password": "soappass"})
    _, out = ok(runtime, chain(soap_node(soap_fake, operation="Add", args={"a": "{{ json.a }}", "b": 2})),
                [{"a": 3}, {"a": 40}])
    assert out == [{"result": 5}, {"result": 42}]
    _, [divided] = ok(runtime, chain(soap_node(soap_fake, operation="Divide", args={"a": 17, "b": 5})))
    assert divided == {"result": {"quotient": 3, "remainder": 2}}
    post = next(r for r in soap_fake.requests if r.method == "POST")
    assert post.headers["soapaction"] == '"http://example.com/calculator/Add"'
    assert post.headers["content-type"].startswith("text/xml")
    add = etree.fromstring(post.body).find(f"{{{SOAP}}}Body/{{{NS}}}Add")
    assert [(etree.QName(e).localname, e.text) for e in add] == [("a", "3"), ("b", "2")]


def test_soap_fault_and_unknown_operation_fail_clearly(runtime, soap_fake):
    credential(runtime, "soap", "basic", {"username": "soapuser", "password": "soappass"})
    message = failed(runtime, chain(soap_node(soap_fake, operation="Divide", args={"a": 1, "b": 0})))
    assert message == "SOAP fault from Divide: Division by zero (faultcode soap:Client)"
    message = failed(runtime, chain(soap_node(soap_fake, operation="Multiply", args={})))
    assert message == "the WSDL has no operation 'Multiply' (operations: Add, Divide)"
    credential(runtime, "soap", "basic", {"username": "soapuser", "password": "wrong"})
    message = failed(runtime, chain(soap_node(soap_fake, operation="Add", args={"a": 1, "b": 1})))
    assert message.endswith("answered HTTP 401: Unauthorized")


# -- signed webhook triggers on a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory):
    """One `flowfuse serve` with a Slack, a Stripe and a GitHub trigger flow, each with its secret."""
    data = tmp_path_factory.mktemp("hooks") / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    srv = Server(data, free_port()).start("serve")
    for name, type_, fields in [("slack-signing", "slack_signing_secret", {"signing_secret": "slack-secret"}),
                                ("stripe-endpoint", "stripe_webhook", {"endpoint_secret": "whsec_test"}),
                                ("gh-hook", "github_webhook", {"secret": "gh-secret"})]:
        made = srv.cli("credentials", "set", name, "--type", type_, "--data", json.dumps(fields))
        assert made.returncode == 0, made.stderr
    flows = [("slash", "slack.slash_command", "slack/commands", "slack-signing"),
             ("clicks", "slack.interaction", "slack/actions", "slack-signing"),
             ("stripe", "stripe.webhook", "stripe/events", "stripe-endpoint"),
             ("github", "github.webhook", "github/events", "gh-hook")]
    for name, type_, path, cred in flows:
        srv.import_flow({"name": name, "nodes": [
            {"id": "in", "type": type_, "credential": cred,
             "params": {"path": path, **({"respond": "immediately"} if name == "stripe" else {})}},
            {"id": "out", "type": "set", "params": {"fields": {"seen": True}}},
        ], "edges": [{"from": "in", "to": "out"}]})
    yield srv
    srv.stop()


def execution_count(srv: Server) -> int:
    """Executions in runs.db, read directly (cheaper than a `flowfuse executions list` per check)."""
    conn = sqlite3.connect(f"file:{srv.data_dir / 'runs.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM executions").fetchone()[0]
    finally:
        conn.close()


def hook_url(srv: Server, path: str) -> str:
    return f"{srv.url}/hooks/default/{path}"


SLASH = (b"token=x&team_id=T1&channel_id=C1&user_id=U1&user_name=ada&command=%2Fdeploy&text=api+v2&"
         b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1&trigger_id=1.2.3")


def test_slack_slash_command_with_a_good_signature_runs_the_flow(hooks_server):
    r = fake_slack.deliver(hook_url(hooks_server, "slack/commands"), SLASH, "slack-secret")
    assert r.status_code == 200, r.text
    assert r.json()["command"] == "/deploy" and r.json()["text"] == "api v2" and r.json()["seen"] is True
    assert hooks_server.execution(r.headers["x-flowfuse-execution"])["status"] == "succeeded"


@pytest.mark.parametrize("why, send", [
    ("wrong secret", lambda url: fake_slack.deliver(url, SLASH, "not-the-secret")),
    ("expired", lambda url: fake_slack.deliver(url, SLASH, "slack-secret", timestamp=int(time.time()) - 301)),
    ("unsigned", lambda url: httpx.post(url, content=SLASH,
                                        headers={"content-type": "application/x-www-form-urlencoded"})),
])
def test_slack_bad_or_expired_signature_gets_401_and_starts_nothing(hooks_server, why, send):
    before = execution_count(hooks_server)
    r = send(hook_url(hooks_server, "slack/commands"))
    assert r.status_code == 401, why
    assert "x-flowfuse-execution" not in r.headers
    assert execution_count(hooks_server) == before


def test_slack_button_click_payload_is_unwrapped(hooks_server):
    payload = {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "approve", "value": "42"}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    r = fake_slack.deliver(hook_url(hooks_server, "slack/actions"), body, "slack-secret")
    assert r.status_code == 200, r.text
    assert r.json()["actions"] == [{"action_id": "approve", "value": "42"}] and r.json()["type"] == "block_actions"


EVENT = {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "amount": 1999}}}


def test_stripe_event_with_a_good_signature_runs_the_flow(hooks_server):
    r = fake_stripe.deliver(hook_url(hooks_server, "stripe/events"), EVENT, "whsec_test")
    assert r.status_code == 202, r.text  # the flow acknowledges at once (respond: immediately)
    done = hooks_server.wait_for(r.json()["execution_id"])
    assert done["status"] == "succeeded"


@pytest.mark.parametrize("why, send", [
    ("wrong secret", lambda url: fake_stripe.deliver(url, EVENT, "whsec_other")),
    ("expired", lambda url: fake_stripe.deliver(url, EVENT, "whsec_test", timestamp=int(time.time()) - 600)),
    ("tampered", lambda url: httpx.post(url, content=b'{"id": "evt_forged"}', headers={
        "content-type": "application/json",
        "stripe-signature": fake_stripe.deliver_header(EVENT, "whsec_test")})),
])
def test_stripe_bad_or_expired_signature_gets_401_and_starts_nothing(hooks_server, why, send):
    before = execution_count(hooks_server)
    r = send(hook_url(hooks_server, "stripe/events"))
    assert r.status_code == 401, why
    assert execution_count(hooks_server) == before


def test_github_delivery_signature_is_checked(hooks_server):
    url = hook_url(hooks_server, "github/events")
    payload = {"action": "opened", "issue": {"number": 1}}
    before = execution_count(hooks_server)
    r = fake_github.deliver(url, "issues", payload, secret="nope")
    assert r.status_code == 401
    assert r.json()["error"] == "X-Hub-Signature-256 does not match the request (wrong webhook secret?)"
    r = fake_github.deliver(url, "issues", payload, secret=None)
    assert r.status_code == 401
    assert execution_count(hooks_server) == before
    r = fake_github.deliver(url, "issues", payload, secret="gh-secret")
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "opened", "issue": {"number": 1}, "seen": True}
    assert hooks_server.execution(r.headers["x-flowfuse-execution"])["status"] == "succeeded"
    assert execution_count(hooks_server) == before + 1


def test_fakes_answer_in_their_documented_error_format():
    """The fakes themselves: a quick check that they refuse what the real services refuse."""
    fake = FakeStripe()
    try:
        r = httpx.post(fake.url + "/v1/payment_intents", data={"currency": "eur"},
                       headers={"Authorization": "Bearer sk_test_fake123"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "parameter_missing"
        fake.answer_next("/v1/customers", Reply(500, {"error": {"type": "api_error", "message": "boom"}}))
        assert httpx.get(fake.url + "/v1/customers", headers={"Authorization": "Bearer sk_test_fake123"}
                         ).status_code == 500
    finally:
        fake.close()
