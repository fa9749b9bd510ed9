"""GitHub REST API (https://docs.github.com/rest): `Authorization: Bearer <token>`, JSON bodies,
errors as `{"message", "documentation_url", "errors"?}`, list pagination through the `Link` header
(`<...&page=2>; rel="next"`), repository dispatch answered 204."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid

import httpx

from . import FakeService, Reply, Request

DOCS = "https://docs.github.com/rest"


def error(status: int, message: str, errors: list | None = None) -> Reply:
    body = {"message": message, "documentation_url": DOCS}
    if errors:
        body["errors"] = errors
    return Reply(status, body)


class FakeGitHub(FakeService):
    def __init__(self, token: str = "ghp_faketoken") -> None:
        self.token = token
        self.issues: dict[str, list[dict]] = {}
        self.comments: list[dict] = []
        self.pulls: list[dict] = []
        self.dispatches: list[dict] = []
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.bearer != self.token:
            return error(401, "Bad credentials")
        m = re.fullmatch(r"/repos/([\w.-]+)/([\w.-]+)/(issues|pulls|dispatches)(?:/(\d+))?(/comments)?", request.path)
        if not m:
            return error(404, "Not Found")
        owner, repo, kind, number, comments = m.groups()
        full = f"{owner}/{repo}"
        if full == "acme/missing":
            return error(404, "Not Found")
        body = request.json() if request.body else {}
        if kind == "dispatches" and request.method == "POST":
            if not body.get("event_type"):
                return error(422, "Invalid request.\n\n\"event_type\" wasn't supplied.")
            self.dispatches.append({"repo": full, **body})
            return Reply(204)
        if kind == "issues" and comments and request.method == "POST":
            if not body.get("body"):
                return error(422, "Validation Failed", [{"resource": "IssueComment", "code": "missing_field",
                                                          "field": "body"}])
            comment = {"id": 1000 + len(self.comments), "issue": int(number), "body": body["body"],
                       "html_url": f"https://github.com/{full}/issues/{number}#issuecomment-{len(self.comments)}"}
            self.comments.append(comment)
            return Reply(201, comment)
        items = self.issues.setdefault(full, []) if kind == "issues" else self.pulls
        if request.method == "GET" and number is None:
            return self.page(request, [i for i in items if i.get("state") == request.query.get("state", "open")
                                       or request.query.get("state") == "all"])
        if request.method == "POST" and number is None:
            required = ("title",) if kind == "issues" else ("title", "head", "base")
            missing = [f for f in required if not body.get(f)]
            if missing:
                return error(422, "Validation Failed", [{"resource": "Issue" if kind == "issues" else "PullRequest",
                                                          "code": "missing_field", "field": f} for f in missing])
            number = len(self.issues.get(full, [])) + len(self.pulls) + 1
            item = {"number": number, "state": "open", "title": body["title"], "body": body.get("body"),
                    "html_url": f"https://github.com/{full}/{'issues' if kind == 'issues' else 'pull'}/{number}",
                    "labels": [{"name": n} for n in body.get("labels", [])]}
            if kind == "pulls":
                item.update(head={"ref": body["head"]}, base={"ref": body["base"]}, draft=body.get("draft", False))
            items.append(item)
            return Reply(201, item)
        found = next((i for i in items if i["number"] == int(number or 0)), None)
        if found is None:
            return error(404, "Not Found")
        if request.method == "PATCH":
            found.update({k: v for k, v in body.items() if k in ("title", "body", "state")})
            return Reply(200, found)
        return Reply(200, found)

    def page(self, request: Request, rows: list[dict]) -> Reply:
        per_page = int(request.query.get("per_page", 30))
        page = int(request.query.get("page", 1))
        chunk = rows[(page - 1) * per_page: page * per_page]
        links = []
        base = f"{self.url}{request.path}?state={request.query.get('state', 'open')}&per_page={per_page}"
        if page * per_page < len(rows):
            links.append(f'<{base}&page={page + 1}>; rel="next"')
            last = (len(rows) + per_page - 1) // per_page
            links.append(f'<{base}&page={last}>; rel="last"')
        return Reply(200, chunk, {"Link": ", ".join(links)} if links else {})


def deliver(url: str, event: str, payload: dict, secret: str | None) -> httpx.Response:
    """POST a webhook delivery the way GitHub does (content type application/json): `X-GitHub-Event`,
    `X-GitHub-Delivery`, and `X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))` when the
    webhook has a secret."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/fake", "X-GitHub-Event": event,
               "X-GitHub-Delivery": str(uuid.uuid4())}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(url, content=body, headers=headers, timeout=15)
