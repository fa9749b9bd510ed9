"""Salesforce REST API (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta): OAuth2
token endpoint `/services/oauth2/token` (client credentials flow; answers `access_token` and
`instance_url`), `GET /services/data/vXX.X/query?q=SOQL` paged through `nextRecordsUrl`, sObject
create (201 `{"id", "success", "errors"}`), update (PATCH, 204) and upsert by external id (PATCH
`/sobjects/{type}/{field}/{value}`: 201 created or 200 updated). Errors are a JSON list of
`{"message", "errorCode"}`."""

from __future__ import annotations

import itertools
import re

from . import FakeService, Reply, Request

PAGE = 2


def sf_error(status: int, code: str, message: str, fields: list[str] | None = None) -> Reply:
    return Reply(status, [{"message": message, "errorCode": code, **({"fields": fields} if fields else {})}])


class FakeSalesforce(FakeService):
    def __init__(self, client_id: str = "sf-client", client_secret: str = "sf-secret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.tokens: set[str] = set()
        self.records: dict[str, dict[str, dict]] = {"Account": {}}
        self.cursors: dict[str, list[dict]] = {}
        self._ids = itertools.count(1)
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path == "/services/oauth2/token":
            return self.token(request)
        if request.bearer not in self.tokens:
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        m = re.fullmatch(r"/services/data/v(\d+\.\d)/(query|sobjects)(?:/(.*))?", request.path)
        if not m:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        _, kind, rest = m.groups()
        if kind == "query":
            return self.query(request, rest)
        parts = (rest or "").split("/")
        sobject = parts[0]
        if sobject not in self.records:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        store = self.records[sobject]
        body = request.json() if request.body else {}
        if len(parts) == 1 and request.method == "POST":
            if not body.get("Name"):
                return sf_error(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]", ["Name"])
            record_id = f"001{next(self._ids):015d}"
            store[record_id] = {"Id": record_id, **body}
            return Reply(201, {"id": record_id, "success": True, "errors": []})
        if len(parts) == 2 and request.method == "PATCH":
            if parts[1] not in store:
                return sf_error(404, "NOT_FOUND", "Provided external ID field does not exist or is not accessible: "
                                + parts[1])
            store[parts[1]].update(body)
            return Reply(204)
        if len(parts) == 3 and request.method == "PATCH":
            field, value = parts[1], parts[2]
            for record in store.values():
                if record.get(field) == value:
                    record.update(body)
                    return Reply(200, {"id": record["Id"], "success": True, "errors": [], "created": False})
            record_id = f"001{next(self._ids):015d}"
            store[record_id] = {"Id": record_id, field: value, **body}
            return Reply(201, {"id": record_id, "success": True, "errors": [], "created": True})
        return sf_error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed.")

    def token(self, request: Request) -> Reply:
        form = request.form()
        import base64
        auth = request.headers.get("authorization", "")
        basic = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
        ok = (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.client_secret) \
            or basic == f"{self.client_id}:{self.client_secret}"
        if form.get("grant_type") != "client_credentials":
            return Reply(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        if not ok:
            return Reply(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        token = f"00Dfake!{next(self._ids)}"
        self.tokens.add(token)
        return Reply(200, {"access_token": token, "instance_url": self.url, "token_type": "Bearer",
                           "issued_at": "1700000000000", "id": f"{self.url}/id/00D/005"})

    def query(self, request: Request, rest: str | None) -> Reply:
        if rest:  # a nextRecordsUrl: /query/01gCURSOR-2
            cursor, _, start = rest.rpartition("-")
            rows = self.cursors.get(cursor)
            if rows is None:
                return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            start = int(start)
        else:
            soql = request.query.get("q", "")
            m = re.fullmatch(r"SELECT\s+([\w\s,]+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(\w+)\s*=\s*'([^']*)')?", soql.strip(),
                             re.IGNORECASE)
            if not m or m.group(2) not in self.records:
                return sf_error(400, "MALFORMED_QUERY", f"unexpected token: {soql.split()[-1] if soql else 'EOF'}")
            fields = [f.strip() for f in m.group(1).split(",")]
            rows = [{"attributes": {"type": m.group(2), "url": f"/services/data/v59.0/sobjects/{m.group(2)}/{r['Id']}"},
                     **{f: r.get(f) for f in fields}}
                    for r in self.records[m.group(2)].values() if not m.group(3) or r.get(m.group(3)) == m.group(4)]
            cursor = f"01g{next(self._ids):012d}"
            self.cursors[cursor] = rows
            start = 0
        version = request.path.split("/")[3]
        chunk = rows[start:start + PAGE]
        done = start + PAGE >= len(rows)
        body = {"totalSize": len(rows), "done": done, "records": chunk}
        if not done:
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{start + PAGE}"
        return Reply(200, body)
