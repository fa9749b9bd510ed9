"""GitHub: issues, comments, pull requests, repository dispatch; a webhook trigger with the
`X-Hub-Signature-256` HMAC verified.

Requests carry `Accept: application/vnd.github+json` and `X-GitHub-Api-Version`; errors come back
as `{"message", "errors"}` (422 lists each invalid field, which `_raise` adds to the message).
Lists follow the `Link: <...>; rel="next"` header. Deliveries GitHub sends are signed with
`X-Hub-Signature-256: sha256=hex(HMAC-SHA256(webhook secret, raw body))`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import quote

import httpx

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry, Unverified, WebhookRequest
from .sdk.auth import register_scheme
from .sdk.http import call, error_message

API = "https://api.github.com"
API_VERSION = "2022-11-28"
ICON = "github.svg"
CATEGORY = "GitHub"
MAX_PAGES = 50


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, sent: str | None, body: bytes) -> None:
    """Raise Unverified unless `sent` (X-Hub-Signature-256) is GitHub's signature of `body`."""
    if not secret:
        raise Unverified("the trigger's credential has no webhook secret")
    if not sent:
        raise Unverified("missing X-Hub-Signature-256 header (set a secret on the GitHub webhook)")
    if not hmac.compare_digest(signature(secret, body), sent.strip()):
        raise Unverified("X-Hub-Signature-256 does not match the request (wrong webhook secret?)")


def _verify(request: WebhookRequest) -> None:
    verify_signature((request.credential or {}).get("secret", ""), request.headers.get("x-hub-signature-256"),
                     request.body)


def _token(credential: Any, request: Any) -> None:
    token = credential.get("token")
    if not token:
        raise NodeError("the github credential has no token")
    request.headers["Authorization"] = f"Bearer {token}"


HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}


async def _request(ctx: NodeContext, method: str, path_or_url: str, body: dict | None = None,
                   params: dict | None = None) -> httpx.Response:
    url = path_or_url if path_or_url.startswith("http") else \
        f"{str(ctx.param('base_url')).rstrip('/')}{path_or_url}"
    response = await call(ctx, method, url, json=body, params=params, headers=HEADERS, raise_for_status=False)
    if response.status_code >= 400:
        _raise(method, url, response)
    return response


def _raise(method: str, url: str, response: httpx.Response) -> None:
    message = error_message(response)
    try:
        details = [e for e in response.json().get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError):
        details = []
    if details:
        message += " (" + "; ".join(f"{e.get('field', '')}: {e.get('message') or e.get('code')}" for e in details) + ")"
    raise NodeError(f"GitHub {method} {url} answered HTTP {response.status_code}: {message}")


def _repo(ctx: NodeContext, item: dict) -> str:
    owner, repo = ctx.param("owner", item), ctx.param("repo", item)
    if not owner or not repo:
        raise NodeError("give owner and repo, e.g. owner: octocat, repo: hello-world")
    return f"/repos/{quote(str(owner), safe='')}/{quote(str(repo), safe='')}"


def _clean(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if v not in (None, "")}


async def _create_issue(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return [(await _request(ctx, "POST", _repo(ctx, item) + "/issues", _clean({
        "title": ctx.param("title", item), "body": ctx.param("body", item), "labels": ctx.param("labels", item),
        "assignees": ctx.param("assignees", item)}))).json() for item in items]


async def _update_issue(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return [(await _request(ctx, "PATCH", f"{_repo(ctx, item)}/issues/{ctx.param('number', item)}", _clean({
        "title": ctx.param("title", item), "body": ctx.param("body", item), "state": ctx.param("state", item),
        "labels": ctx.param("labels", item)}))).json() for item in items]


async def _comment(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return [(await _request(ctx, "POST", f"{_repo(ctx, item)}/issues/{ctx.param('number', item)}/comments",
                            {"body": ctx.param("body", item)})).json() for item in items]


async def _create_pull(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return [(await _request(ctx, "POST", _repo(ctx, item) + "/pulls", _clean({
        "title": ctx.param("title", item), "head": ctx.param("head", item), "base": ctx.param("base", item),
        "body": ctx.param("body", item), "draft": ctx.param("draft", item)}))).json() for item in items]


async def _dispatch(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        payload = ctx.param("client_payload", item) or {}
        await _request(ctx, "POST", _repo(ctx, item) + "/dispatches",
                       {"event_type": ctx.param("event_type", item), "client_payload": payload})
        out.append({"dispatched": True, "event_type": ctx.param("event_type", item)})
    return out


def _lister(kind: str):
    async def run(ctx: NodeContext, items: list[dict]) -> list[dict]:
        """Every issue or pull request, following the Link header's rel="next" up to `limit`."""
        item = items[0] if items else {}
        limit = ctx.param("limit", item)
        url: str | None = _repo(ctx, item) + f"/{kind}"
        params: dict | None = {"state": ctx.param("state", item), "per_page": ctx.param("per_page", item)}
        out: list[dict] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            response = await _request(ctx, "GET", url, params=params)
            out += response.json()
            if limit and len(out) >= limit:
                return out[:limit]
            url, params = response.links.get("next", {}).get("url"), None  # the next URL carries its query
        return out
    return run


async def _event(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return items


BASE_URL = Param("string", default=API, description="GitHub API base URL (GitHub Enterprise: https://HOST/api/v3)")
OWNER = Param("string", required=True, description="the repository's owner (user or organisation)")
REPO = Param("string", required=True, description="the repository's name")
NUMBER = Param("integer", required=True, description="the issue or pull request number")
CREDENTIAL_TYPES = (
    CredentialType("github", {"token": Field("Token (fine-grained or classic personal access token, or app token)")},
                   description="A GitHub token, sent as a Bearer token."),
    CredentialType("github_webhook", {"secret": Field("Webhook secret")},
                   description="The secret set on a GitHub webhook, to verify its deliveries."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    register_scheme("github", _token)
    common = {"category": CATEGORY, "icon": ICON, "credential_types": ("github", "bearer")}
    repo = {"owner": OWNER, "repo": REPO}
    add = registry.add
    add(NodeType("github.create_issue", _create_issue, label="Create issue", params={
        **repo, "title": Param("string", required=True), "body": Param("string", description="Markdown"),
        "labels": Param("list", description="label names"), "assignees": Param("list", description="logins"),
        "base_url": BASE_URL,
    }, description="Opens an issue; outputs the issue (number, html_url...).", **common))
    add(NodeType("github.update_issue", _update_issue, label="Update issue", params={
        **repo, "number": NUMBER, "title": Param("string"), "body": Param("string"),
        "state": Param("string", description="open or closed"), "labels": Param("list"), "base_url": BASE_URL,
    }, description="Edits, closes or reopens an issue.", **common))
    add(NodeType("github.list_issues", _lister("issues"), label="List issues", params={
        **repo, "state": Param("string", default="open", choices=("open", "closed", "all")),
        "per_page": Param("integer", default=100, description="issues per request (1 to 100)"),
        "limit": Param("integer", default=100, description="most issues to return (0: all)"), "base_url": BASE_URL,
    }, description="Lists issues, following Link pagination; one item per issue. Runs once, with the "
                               "first item's params.", **common))
    add(NodeType("github.create_comment", _comment, label="Comment", params={
        **repo, "number": NUMBER, "body": Param("string", required=True, description="Markdown"),
        "base_url": BASE_URL,
    }, description="Comments on an issue or pull request.", **common))
    add(NodeType("github.create_pull_request", _create_pull, label="Create pull request", params={
        **repo, "title": Param("string", required=True), "head": Param("string", required=True,
                                                                       description="branch with the changes"),
        "base": Param("string", required=True, description="branch to merge into"), "body": Param("string"),
        "draft": Param("boolean", default=False), "base_url": BASE_URL,
    }, description="Opens a pull request; outputs it.", **common))
    add(NodeType("github.list_pull_requests", _lister("pulls"), label="List pull requests", params={
        **repo, "state": Param("string", default="open", choices=("open", "closed", "all")),
        "per_page": Param("integer", default=100, description="pull requests per request (1 to 100)"),
        "limit": Param("integer", default=100, description="most pull requests to return (0: all)"),
        "base_url": BASE_URL,
    }, description="Lists pull requests, following Link pagination; one item per pull request. Runs "
                               "once, with the first item's params.", **common))
    add(NodeType("github.repository_dispatch", _dispatch, label="Repository dispatch", params={
        **repo, "event_type": Param("string", required=True, description="the event type workflows listen to"),
        "client_payload": Param("object", description="JSON payload for the workflows"), "base_url": BASE_URL,
    }, description="Triggers GitHub Actions workflows listening to repository_dispatch.", **common))
    add(NodeType("github.webhook", _event, label="GitHub event", category=CATEGORY, icon=ICON,
                 credential_types=("github_webhook",), trigger_kind="webhook", verify=_verify, pure=True, params={
        "path": Param("string", required=True, expression=False,
                      description="path under /hooks/{tenant}/ to give GitHub as the Payload URL"),
        "method": Param("string", default="POST", choices=("POST",), expression=False),
        "respond": Param("string", default="when_done", choices=("when_done", "immediately"), expression=False,
                         description="immediately answers 202 at once (GitHub waits 10 s at most)"),
    }, description="Started by a GitHub webhook delivery (content type application/json); X-Hub-Signature-256 "
                   "is verified. The item is the event payload; request.headers has x-github-event."))
