"""OpenAPI 3.0/3.1 documents as connectors: every operation of the document becomes an action.

`parse(text, name, source)` reads a document (JSON or YAML) into a `Connector`, or raises
`SpecError` whose message names the place in the document that is wrong (`paths./pet.get...`),
so a person can fix it. `Connector.node_types()` builds the node types; the appliance stores the
document per tenant and builds them again in each process (see appliance.catalog).

What an operation becomes:

- type `{connector}.{operationId}` (or `{connector}.{method}_{path}` when it has none), label from
  `summary`, category the connector's name, description from `description`;
- a param for each path, query and header parameter (cookie parameters are not supported), and one
  for each top-level property of a JSON or form request body (a body that is not an object with
  properties is one `body` param); kinds from the JSON schema: string, integer, number, boolean,
  object, list (an `enum` gives the choices). A name used twice gets its location as a prefix
  (`query_id`, `body_id`);
- `base_url`: the document's server URL (server variables at their defaults; a relative URL is
  resolved against the URL the document came from); required when the document has no absolute one;
- a credential when the operation (or the document) declares `security`: apiKey in header or query
  -> `api_key` (the scheme's name and place win over the credential's), http bearer -> `bearer`,
  http basic -> `basic`, oauth2 client credentials -> `oauth2_client_credentials` (the scheme's
  token URL and scopes fill the credential's when it leaves them empty), any oauth2 or OpenID
  Connect scheme also takes a `bearer` token. A document that declares no security scheme at all
  takes any of `bearer`, `basic`, `api_key` or `header`, optionally.

Running an action sends one request per input item through `connectors.sdk.http.call`. Output:
a JSON array answer gives one item per element (an element that is not an object becomes
`{"value": element}`), a JSON object is one item, an empty answer is `{"status": code}`, and a
text answer is `{"status": code, "body": text}`.

Pagination, where declared, adds `paginate` (boolean, default false) and `max_pages` (default 10);
with `paginate: true` the action follows the pages and outputs the items of every page. Declared:

1. by the extension `x-pagination` on the operation (or at the document's top level, for every GET
   operation)::

       x-pagination:
         style: cursor          # cursor | page | offset | next_link
         param: cursor          # the query parameter that carries the cursor, page number or offset
         cursor: meta.next      # cursor: where the next cursor is in the answer (dotted path)
         next: links.next       # next_link: where the next page's URL is ("header" = the Link header)
         items: data            # where the page's items are (default: the answer if it is a list,
                                #   else its only array property)
         start: 1               # page: the first page's number (1); offset: the first offset (0)
         limit_param: limit     # offset: the page-size parameter (the step; else the items received)

2. else, recognised from the operation: a cursor query parameter (`cursor`, `page_token`,
   `pageToken`, `next_token`, `nextToken`, `continuation_token`, `after`) with a next-cursor
   property in the answer (`next_cursor`, `nextCursor`, `next_page_token`, `nextPageToken`,
   `next_token`, `nextToken`, `next`, `cursor`, `after`, at the top or one level down); an answer
   with a string property `next` / `next_url` / `nextUrl` (or `links.next`) as the next page's
   URL; or an integer query parameter `page`. Every style stops at an empty page, a missing next
   cursor or link, or `max_pages`. A `Link: <...>; rel="next"` header is followed in the
   next-link style.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from engine.nodes import Credential, NodeType, Param

from .sdk import NodeContext, NodeError

#: The largest document accepted (as text, and as the JSON stored of it).
MAX_SPEC_BYTES = 8 * 1024 * 1024
#: Nodes of the document walked at most (a YAML alias bomb expands far past this).
MAX_NODES = 2_000_000
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
RESERVED = ("base_url", "paginate", "max_pages")
ANY_CREDENTIAL = ("bearer", "basic", "api_key", "header")
CURSOR_PARAMS = ("cursor", "page_token", "pageToken", "next_token", "nextToken", "continuation_token", "after")
CURSOR_FIELDS = ("next_cursor", "nextCursor", "next_page_token", "nextPageToken", "next_token", "nextToken",
                 "continuation_token", "next", "cursor", "after")
NEXT_LINK_FIELDS = ("next", "next_url", "nextUrl", "links.next")
PAGE_PARAMS = ("page", "page_number", "pageNumber")
STYLES = ("cursor", "page", "offset", "next_link")


class SpecError(ValueError):
    """The document cannot be imported; `where` is the dotted path in the document."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}" if where else message)
        self.where, self.message = where, message


# -- reading the document --------------------------------------------------------------------------------------
#: A document fetched from a URL: at most this many seconds for the whole answer.
FETCH_TIMEOUT_S = 20.0


async def fetch(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """The document at `url`, through the same client (and network policy) as the http_request
    node; at most MAX_SPEC_BYTES and `timeout_s` seconds in all. SpecError says what went wrong."""
    import asyncio

    import httpx

    from .http import client

    if urlsplit(url).scheme not in ("http", "https"):
        raise SpecError("url", f"{url!r} must start with http:// or https://")

    async def get() -> bytes:
        async with client().stream("GET", url, headers={"Accept": "application/json, application/yaml, */*"},
                                   follow_redirects=True, timeout=timeout_s) as response:
            if response.status_code >= 400:
                raise SpecError("url", f"GET {url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_SPEC_BYTES:
                raise _too_large(int(declared))
            content = b""
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_SPEC_BYTES:
                    raise SpecError("url", f"the document at {url} is larger than {MAX_SPEC_BYTES:,} bytes")
            return content

    try:
        return await asyncio.wait_for(get(), timeout_s)
    except (TimeoutError, httpx.TimeoutException):
        raise SpecError("url", f"GET {url} took longer than {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise SpecError("url", f"GET {url} failed: {exc or type(exc).__name__}") from None


def load(text: str | bytes) -> dict[str, Any]:
    """The document as a dict, from JSON or YAML text; SpecError if it is neither or too large."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise _too_large(len(text))
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SpecError("", "the document is not UTF-8 text") from None
    size = len(text.encode())
    if size > MAX_SPEC_BYTES:
        raise _too_large(size)
    if not text.strip():
        raise SpecError("", "the document is empty")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = _yaml(text)
    if not isinstance(doc, dict):
        raise SpecError("", "this is not an OpenAPI document: expected an object with \"openapi\", \"info\" and "
                            "\"paths\" at the top")
    return doc


def _too_large(size: int) -> SpecError:
    return SpecError("", f"the document is {size:,} bytes; at most {MAX_SPEC_BYTES:,} are accepted")


def _yaml(text: str) -> Any:
    import yaml  # only when the text is not JSON

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("", f"the document is neither JSON nor YAML{where}: {problem}") from None


def _check_refs(doc: dict[str, Any]) -> None:
    """Every `$ref` must point into this document, at something that is there. Walks the whole
    document once (iteratively, with a budget, so neither depth nor YAML aliases can blow it up)."""
    stack: list[tuple[str, Any]] = [("", doc)]
    seen = 0
    while stack:
        where, node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SpecError("", f"the document has more than {MAX_NODES:,} values (YAML aliases expanded); "
                                "it is too large to import")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                _pointer(doc, ref, _join(where, "$ref"))
            stack.extend((_join(where, str(k)), v) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node) if isinstance(v, (dict, list)))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _pointer(doc: dict[str, Any], ref: str, where: str) -> Any:
    if not ref.startswith("#"):
        raise SpecError(where, f"$ref {ref!r} points outside this document; only references within it "
                               "(\"#/components/...\") are supported: bundle the document first")
    node: Any = doc
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SpecError(where, f"$ref {ref!r} points to nothing in this document")
    return node


def _resolve(doc: dict[str, Any], node: Any, where: str) -> Any:
    """`node`, or what its `$ref` (chain) points to."""
    hops = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        hops += 1
        if hops > 50:
            raise SpecError(where, "$ref chain loops")
        node = _pointer(doc, node["$ref"], where)
    return node


# -- the model ---------------------------------------------------------------------------------------------------
@dataclass
class Input:
    """Where one param of the action goes in the request."""

    param: str
    location: str  # path | query | header | body
    api_name: str
    required: bool = False
    style: str = ""
    explode: bool = True


@dataclass
class Scheme:
    name: str
    kind: str  # api_key | bearer | basic | oauth2
    key_name: str = ""
    key_in: str = ""
    token_url: str = ""
    scopes: tuple[str, ...] = ()

    @property
    def credential_types(self) -> tuple[str, ...]:
        if self.kind == "oauth2":
            return ("oauth2_client_credentials", "bearer") if self.token_url else ("bearer",)
        return (self.kind,)


@dataclass
class Pagination:
    style: str
    param: str = ""
    cursor: str = ""
    next: str = ""
    items: str = ""
    start: int = 0
    limit_param: str = ""


@dataclass
class Operation:
    slug: str
    method: str
    path: str
    summary: str
    description: str
    inputs: list[Input]
    params: dict[str, Param]
    server: str
    body_kind: str = ""  # json | form | ""
    body_whole: bool = False  # one `body` param holds the whole body
    body_required: tuple[str, ...] = ()
    schemes: list[Scheme] = field(default_factory=list)
    any_credential: bool = False
    pagination: Pagination | None = None


@dataclass
class Connector:
    name: str
    title: str
    source: str
    operations: list[Operation]
    #: The document as JSON text (what the appliance stores).
    document: str = ""

    def node_types(self) -> list[NodeType]:
        return [_node_type(self.name, op) for op in self.operations]

    def type_names(self) -> list[str]:
        return [f"{self.name}.{op.slug}" for op in self.operations]


# -- parsing ------------------------------------------------------------------------------------------------------
def parse(text: str | bytes | dict[str, Any], name: str, source: str = "") -> Connector:
    """A connector named `name` from an OpenAPI 3.0 or 3.1 document (text or already loaded).
    `source` is where it came from: a URL resolves a relative server URL."""
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError("name", f"connector name {name!r} must be 1 to 40 lower-case letters, digits, _ or -, "
                                "starting with a letter (it prefixes every action: name.operation)")
    doc = text if isinstance(text, dict) else load(text)
    version = doc.get("openapi")
    if "swagger" in doc and version is None:
        raise SpecError("swagger", f"Swagger {doc['swagger']} is not supported; convert the document to OpenAPI 3 "
                                   "first (e.g. with swagger2openapi)")
    if not isinstance(version, str) or not re.match(r"^3\.[01](\.\d+)?", version):
        raise SpecError("openapi", "this is not an OpenAPI 3.0 or 3.1 document: its top level needs "
                                   "\"openapi\": \"3.0.x\" or \"3.1.x\"" +
                        (f" (found {version!r})" if version is not None else ""))
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise SpecError("paths", "the document needs \"paths\": an object of path -> operations")
    _check_refs(doc)
    try:
        document = json.dumps(doc, ensure_ascii=False, default=str)
    except (ValueError, TypeError) as exc:
        raise SpecError("", f"the document cannot be stored as JSON: {exc}") from None
    if len(document.encode()) > MAX_SPEC_BYTES:
        raise _too_large(len(document.encode()))
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    schemes = _schemes(doc)
    top_security = doc.get("security")
    operations: list[Operation] = []
    slugs: set[str] = set()
    for path, item in paths.items():
        where = f"paths.{path}"
        item = _resolve(doc, item, where)
        if not isinstance(item, dict):
            raise SpecError(where, "a path item must be an object of method -> operation")
        common = item.get("parameters") or []
        for method in METHODS:
            if method not in item:
                continue
            op_where = f"{where}.{method}"
            op = item[method]
            if not isinstance(op, dict):
                raise SpecError(op_where, "an operation must be an object")
            server = _server(op.get("servers") or item.get("servers") or doc.get("servers"), source)
            operations.append(_operation(doc, op, op_where, method, path, common, server, schemes, top_security,
                                         slugs))
    if not operations:
        raise SpecError("paths", "the document has no operations (no get, post, put, patch or delete under paths)")
    return Connector(name, str(info.get("title") or name), source, operations, document)


def _schemes(doc: dict[str, Any]) -> dict[str, Scheme | None]:
    """The document's security schemes by name; None for the kinds no credential type fits."""
    found: dict[str, Scheme | None] = {}
    raw = (doc.get("components") or {}).get("securitySchemes") or {}
    if not isinstance(raw, dict):
        raise SpecError("components.securitySchemes", "must be an object of name -> security scheme")
    for name, scheme in raw.items():
        where = f"components.securitySchemes.{name}"
        scheme = _resolve(doc, scheme, where)
        if not isinstance(scheme, dict):
            raise SpecError(where, "a security scheme must be an object")
        kind = scheme.get("type")
        found[name] = None
        if kind == "apiKey" and scheme.get("in") in ("header", "query"):
            if not isinstance(scheme.get("name"), str) or not scheme["name"]:
                raise SpecError(where, "an apiKey scheme needs \"name\": the header or query parameter")
            found[name] = Scheme(name, "api_key", key_name=scheme["name"], key_in=scheme["in"])
        elif kind == "http" and str(scheme.get("scheme", "")).lower() in ("bearer", "basic"):
            found[name] = Scheme(name, str(scheme["scheme"]).lower())
        elif kind == "oauth2":
            flows = scheme.get("flows") if isinstance(scheme.get("flows"), dict) else {}
            cc = flows.get("clientCredentials") if isinstance(flows.get("clientCredentials"), dict) else {}
            found[name] = Scheme(name, "oauth2", token_url=str(cc.get("tokenUrl") or ""),
                                 scopes=tuple(cc.get("scopes") or ()))
        elif kind == "openIdConnect":
            found[name] = Scheme(name, "oauth2")
    return found


def _server(servers: Any, source: str) -> str:
    """The first server's URL with its variables at their defaults, absolute if it can be made so."""
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        url = "/"
    else:
        url = str(servers[0].get("url") or "/")
        for var, spec in (servers[0].get("variables") or {}).items():
            if isinstance(spec, dict) and "default" in spec:
                url = url.replace("{" + var + "}", str(spec["default"]))
    if not urlsplit(url).scheme and source.startswith(("http://", "https://")):
        url = urljoin(source, url)
    return url if urlsplit(url).scheme in ("http", "https") else ""


def _slug(op: dict[str, Any], method: str, path: str, slugs: set[str]) -> str:
    op_id = op.get("operationId")
    if isinstance(op_id, str) and op_id.strip():
        base = re.sub(r"[^A-Za-z0-9_]+", "_", op_id.strip()).strip("_")
    else:
        base = ""
    if not base:
        base = "_".join([method] + [re.sub(r"[^A-Za-z0-9]+", "_", seg.strip("{}")).strip("_")
                                    for seg in path.split("/") if seg.strip("{}")])
    slug, n = base, 2
    while slug in slugs:
        slug, n = f"{base}_{n}", n + 1
    slugs.add(slug)
    return slug


def _operation(doc: dict[str, Any], op: dict[str, Any], where: str, method: str, path: str, common: list[Any],
               server: str, schemes: dict[str, Scheme | None], top_security: Any, slugs: set[str]) -> Operation:
    slug = _slug(op, method, path, slugs)
    params: dict[str, Param] = {}
    inputs: list[Input] = []
    taken = set(RESERVED)

    def add(api_name: str, location: str, spec: Param, **kw: Any) -> None:
        name = api_name if api_name not in taken else f"{location}_{api_name}"
        n = 2
        while name in taken:
            name, n = f"{location}_{api_name}_{n}", n + 1
        taken.add(name)
        params[name] = spec
        inputs.append(Input(name, location, api_name, spec.required, **kw))

    # parameters: the operation's override the path item's with the same name and place
    merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for source, raw_list in ((f"{where.rsplit('.', 1)[0]}.parameters", common), (f"{where}.parameters",
                                                                               op.get("parameters") or [])):
        if not isinstance(raw_list, list):
            raise SpecError(source, "parameters must be a list")
        for i, raw in enumerate(raw_list):
            p_where = f"{source}[{i}]"
            p = _resolve(doc, raw, p_where)
            if not isinstance(p, dict) or not isinstance(p.get("name"), str) or p.get("in") not in (
                    "path", "query", "header", "cookie"):
                raise SpecError(p_where, "a parameter needs \"name\" and \"in\" (path, query, header or cookie)")
            merged[(p["name"], p["in"])] = (p, p_where)
    for (api_name, location), (p, p_where) in merged.items():
        if location == "cookie":
            continue
        if location == "header" and api_name.lower() in ("accept", "content-type", "authorization"):
            continue  # set by the action itself (OpenAPI says these are ignored as parameters)
        schema = _resolve(doc, p.get("schema") or _media_schema(p.get("content")), f"{p_where}.schema")
        kind, choices = _kind(doc, schema, f"{p_where}.schema")
        required = bool(p.get("required")) or location == "path"
        add(api_name, location, Param(kind, required=required, choices=choices,
                                      description=_describe(p.get("description"), schema, location)),
            style=str(p.get("style") or ""), explode=bool(p.get("explode", (p.get("style") or "form") == "form")))

    body_kind, body_whole, body_required = "", False, ()
    body = op.get("requestBody")
    if body is not None:
        b_where = f"{where}.requestBody"
        body = _resolve(doc, body, b_where)
        if not isinstance(body, dict):
            raise SpecError(b_where, "requestBody must be an object")
        content = body.get("content") if isinstance(body.get("content"), dict) else {}
        media = _pick_media(content)
        if media is not None:
            body_kind = "form" if media in ("application/x-www-form-urlencoded", "multipart/form-data") else "json"
            s_where = f"{b_where}.content.{media}.schema"
            schema = _resolve(doc, (content[media] or {}).get("schema") or {}, s_where)
            props = _properties(doc, schema, s_where)
            if props:
                required_props = set(schema.get("required") or ()) if isinstance(schema, dict) else set()
                body_required = tuple(sorted(required_props & set(props))) if body.get("required") else ()
                for prop, (prop_schema, prop_where) in props.items():
                    if prop_schema.get("readOnly"):
                        continue
                    kind, choices = _kind(doc, prop_schema, prop_where)
                    add(prop, "body", Param(kind, required=prop in body_required, choices=choices,
                                            description=_describe(prop_schema.get("description"), prop_schema,
                                                                  "body")))
            else:
                body_whole = True
                kind, choices = _kind(doc, schema, s_where)
                taken.discard("body")
                add("body", "body", Param(kind, required=bool(body.get("required")), choices=choices,
                                          description=_describe(body.get("description"), schema, "body")))

    security = op.get("security", top_security)
    chosen: list[Scheme] = []
    any_credential = False
    if security is None and not schemes:
        any_credential = True  # the document says nothing about auth: take any credential, as it is
    elif isinstance(security, list):
        for i, requirement in enumerate(security):
            if not isinstance(requirement, dict):
                raise SpecError(f"{where}.security[{i}]", "a security requirement must be an object")
            for scheme_name in requirement:
                if scheme_name not in schemes:
                    raise SpecError(f"{where}.security[{i}]", f"names the security scheme {scheme_name!r}, which "
                                                              "components.securitySchemes does not define")
                if schemes[scheme_name] is not None and schemes[scheme_name] not in chosen:
                    chosen.append(schemes[scheme_name])

    pagination = _pagination(doc, op, where, inputs, method)
    if pagination is not None:
        params["paginate"] = Param("boolean", default=False, description="follow the pages and output the items "
                                                                         "of all of them")
        params["max_pages"] = Param("integer", default=10, description="stop after this many pages")
    params["base_url"] = Param("string", required=not server, default=server or None,
                               description="the API's address; the document's server URL by default" if server
                               else "the API's address (the document gives no absolute server URL)")
    summary = str(op.get("summary") or "").strip()
    description = str(op.get("description") or "").strip()
    return Operation(slug, method.upper(), path, summary, description, inputs, params, server, body_kind, body_whole,
                     body_required, chosen, any_credential, pagination)


def _media_schema(content: Any) -> Any:
    if isinstance(content, dict) and content:
        first = next(iter(content.values()))
        return first.get("schema") if isinstance(first, dict) else None
    return None


def _pick_media(content: dict[str, Any]) -> str | None:
    for media in content:
        if media == "application/json" or media.endswith("+json"):
            return media
    for media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        if media in content:
            return media
    return None


def _properties(doc: dict[str, Any], schema: Any, where: str) -> dict[str, tuple[dict[str, Any], str]]:
    """The top-level properties of an object schema (allOf parts merged), resolved."""
    if not isinstance(schema, dict):
        return {}
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for i, part in enumerate(schema.get("allOf") or ()):
        found.update(_properties(doc, _resolve(doc, part, f"{where}.allOf[{i}]"), f"{where}.allOf[{i}]"))
    props = schema.get("properties")
    if isinstance(props, dict):
        for prop, prop_schema in props.items():
            p_where = f"{where}.properties.{prop}"
            resolved = _resolve(doc, prop_schema, p_where)
            found[prop] = (resolved if isinstance(resolved, dict) else {}, p_where)
    return found


def _kind(doc: dict[str, Any], schema: Any, where: str, depth: int = 0) -> tuple[str, tuple[Any, ...]]:
    """The Param kind (and choices) of a JSON schema."""
    schema = _resolve(doc, schema, where)
    if not isinstance(schema, dict) or depth > 10:
        return "any", ()
    kind_of = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
               "object": "object", "array": "list"}
    types = schema.get("type")
    if isinstance(types, list):  # 3.1: ["string", "null"]
        types = [t for t in types if t != "null"]
        types = types[0] if len(types) == 1 else None
    kind = kind_of.get(types) if isinstance(types, str) else None
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "list"
        else:
            for combo in ("allOf", "oneOf", "anyOf"):
                parts = schema.get(combo)
                if isinstance(parts, list) and parts:
                    kinds = {_kind(doc, p, f"{where}.{combo}", depth + 1)[0] for p in parts}
                    if combo == "allOf":
                        kinds.discard("any")
                    if len(kinds) == 1:
                        kind = kinds.pop()
                    break
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        kinds = {_json_kind(v) for v in schema["enum"] if v is not None}
        kind = kinds.pop() if len(kinds) == 1 else None
    kind = kind or "any"
    enum = schema.get("enum")
    choices: tuple[Any, ...] = ()
    if isinstance(enum, list) and enum and kind in ("string", "integer", "number", "boolean"):
        choices = tuple(v for v in enum if v is not None and _json_kind(v) in (kind, "integer"))
    return kind, choices


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "number", dict: "object", list: "list"}.get(type(value), "any")


def _describe(text: Any, schema: Any, location: str) -> str:
    parts = [str(text).strip()] if text else []
    if isinstance(schema, dict) and "default" in schema:
        parts.append(f"(the API's default: {json.dumps(schema['default'], default=str)})")
    parts.append(f"[{location}]")
    return " ".join(parts)


def _pagination(doc: dict[str, Any], op: dict[str, Any], where: str, inputs: list[Input],
                method: str) -> Pagination | None:
    query = {i.api_name: i for i in inputs if i.location == "query"}
    declared = op.get("x-pagination")
    if declared is None and method == "get":
        declared = doc.get("x-pagination")
    if declared is not None:
        p_where = f"{where}.x-pagination"
        if not isinstance(declared, dict) or declared.get("style") not in STYLES:
            raise SpecError(p_where, f"x-pagination needs \"style\": one of {', '.join(STYLES)}")
        style = declared["style"]
        param = str(declared.get("param") or {"cursor": "cursor", "page": "page", "offset": "offset"}.get(style, ""))
        if style != "next_link" and param not in query:
            raise SpecError(p_where, f"x-pagination names the query parameter {param!r}, which the operation "
                                     "does not have")
        if style == "cursor" and not declared.get("cursor"):
            raise SpecError(p_where, "a cursor style needs \"cursor\": where the next cursor is in the answer")
        start = declared.get("start", 1 if style == "page" else 0)
        if not isinstance(start, int) or isinstance(start, bool):
            raise SpecError(p_where, "\"start\" must be an integer")
        return Pagination(style, query[param].param if param in query else "", str(declared.get("cursor") or ""),
                          str(declared.get("next") or ""), str(declared.get("items") or ""), start,
                          query[declared["limit_param"]].param if declared.get("limit_param") in query else "")
    if method != "get":
        return None
    answer = _answer_schema(doc, op, where)
    fields = _field_paths(doc, answer, where)
    for name in CURSOR_PARAMS:
        if name in query:
            found = next((f for c in CURSOR_FIELDS for f in fields if f.rsplit(".", 1)[-1] == c), None)
            if found:
                return Pagination("cursor", query[name].param, cursor=found, items=_items_path(doc, answer, where))
    link = next((f for f in NEXT_LINK_FIELDS if f in fields and fields[f] == "string"), None)
    if link:
        return Pagination("next_link", next=link, items=_items_path(doc, answer, where))
    for name in PAGE_PARAMS:
        if name in query and query[name] is not None:
            return Pagination("page", query[name].param, items=_items_path(doc, answer, where), start=1)
    return None


def _answer_schema(doc: dict[str, Any], op: dict[str, Any], where: str) -> Any:
    responses = op.get("responses") if isinstance(op.get("responses"), dict) else {}
    for code in ("200", 200, "2XX", "default"):
        if code in responses:
            r_where = f"{where}.responses.{code}"
            answer = _resolve(doc, responses[code], r_where)
            if isinstance(answer, dict) and isinstance(answer.get("content"), dict):
                media = _pick_media(answer["content"])
                if media:
                    return _resolve(doc, (answer["content"][media] or {}).get("schema"), r_where)
            return None
    return None


def _field_paths(doc: dict[str, Any], schema: Any, where: str) -> dict[str, str]:
    """Dotted paths of an answer's properties, two levels deep, to their kinds."""
    found: dict[str, str] = {}
    for prop, (prop_schema, p_where) in _properties(doc, schema, where).items():
        kind = _kind(doc, prop_schema, p_where)[0]
        found[prop] = kind
        if kind == "object":
            for sub, (sub_schema, s_where) in _properties(doc, prop_schema, p_where).items():
                found[f"{prop}.{sub}"] = _kind(doc, sub_schema, s_where)[0]
    return found


def _items_path(doc: dict[str, Any], schema: Any, where: str) -> str:
    """The answer's only array property (where a page's items are), or "" for the answer itself."""
    lists = [p for p, (s, w) in _properties(doc, schema, where).items() if _kind(doc, s, w)[0] == "list"]
    return lists[0] if len(lists) == 1 else ""


# -- the node types ----------------------------------------------------------------------------------------------
def _node_type(connector: str, op: Operation) -> NodeType:
    async def run(ctx: NodeContext, items: list[dict]) -> list[dict]:
        out: list[dict] = []
        for i, item in enumerate(items):
            out.extend(await _call(ctx, op, ctx.params(item), i))
        return out

    accepted: tuple[str, ...] = ()
    if op.any_credential:
        accepted = ANY_CREDENTIAL
    else:
        accepted = tuple(dict.fromkeys(t for s in op.schemes for t in s.credential_types))
    description = op.description or op.summary or f"{op.method} {op.path}"
    return NodeType(f"{connector}.{op.slug}", run, params=dict(op.params), label=op.summary or op.slug,
                    category=connector, description=f"{description}\n\n{op.method} {op.path}",
                    credential_types=accepted)


def _credential(ctx: NodeContext, op: Operation) -> Credential | None:
    """The node's credential, with what the document says about its scheme filled in."""
    credential = ctx.credential
    if not credential:
        return None
    kind = credential.get("type")
    if op.any_credential:
        return credential
    scheme = next((s for s in op.schemes if kind in s.credential_types), None)
    if scheme is None:
        accepted = ", ".join(dict.fromkeys(t for s in op.schemes for t in s.credential_types)) or "none"
        raise NodeError(f"this action takes a credential of type {accepted}; the credential given is of type "
                        f"{kind!r}")
    if scheme.kind == "api_key":  # a copy: the document says which header or query parameter
        fields = {k: v for k, v in credential.items() if k != "type"}
        fields.update({"name": scheme.key_name, "in": scheme.key_in})
        spec = getattr(credential, "spec", None)
        return Credential(spec, fields) if spec is not None else {**fields, "type": kind}  # type: ignore[return-value]
    if kind == "oauth2_client_credentials":
        # the node's own credential (the token fetched is added to it, so the engine redacts it)
        if not credential.get("token_url") and scheme.token_url:
            credential["token_url"] = scheme.token_url
        if not credential.get("scope") and scheme.scopes:
            credential["scope"] = " ".join(scheme.scopes)
    return credential


def _request(op: Operation, p: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str], Any]:
    """URL, query, headers and body of one request from the evaluated params."""
    base = p.get("base_url") or op.server
    if not base:
        raise NodeError("set base_url: the API document gives no absolute server URL")
    path = op.path
    query: dict[str, Any] = {}
    headers: dict[str, str] = {}
    body: Any = None
    fields: dict[str, Any] = {}
    for spec in op.inputs:
        value = p.get(spec.param)
        if value is None:
            if spec.required and spec.location != "body":
                raise NodeError(f"param {spec.param!r} is required")
            continue
        if spec.location == "path":
            path = path.replace("{" + spec.api_name + "}", quote(_text(value), safe=""))
        elif spec.location == "query":
            _add_query(query, spec, value)
        elif spec.location == "header":
            headers[spec.api_name] = _text(value)
        elif op.body_whole:
            body = value
        else:
            fields[spec.api_name] = value
    if fields:
        body = fields
    missing = [name for name in op.body_required if not (isinstance(body, dict) and name in body)]
    if missing:
        raise NodeError(f"the request body needs {', '.join(repr(m) for m in missing)}")
    return base.rstrip("/") + path, query, headers, body


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _add_query(query: dict[str, Any], spec: Input, value: Any) -> None:
    if isinstance(value, list):
        values = [_text(v) for v in value]
        if spec.explode:
            query[spec.api_name] = values
        else:
            query[spec.api_name] = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(spec.style, ",").join(values)
    elif isinstance(value, dict):
        if spec.style == "deepObject":
            query.update({f"{spec.api_name}[{k}]": _text(v) for k, v in value.items()})
        elif spec.explode:
            query.update({str(k): _text(v) for k, v in value.items()})
        else:
            query[spec.api_name] = ",".join(f"{k},{_text(v)}" for k, v in value.items())
    else:
        query[spec.api_name] = _text(value)


async def _call(ctx: NodeContext, op: Operation, p: dict[str, Any], index: int) -> list[dict]:
    """The items of one input item: one request, or one per page."""
    url, query, headers, body = _request(op, p)
    credential = _credential(ctx, op)
    pages = op.pagination if p.get("paginate") else None
    max_pages = p.get("max_pages") or 10
    if pages is not None and (not isinstance(max_pages, int) or max_pages < 1):
        raise NodeError("max_pages must be a whole number of at least 1")
    out: list[dict] = []
    page_no = 0
    if pages is not None and pages.style in ("page", "offset"):
        api = _api_name(op, pages.param)
        query[api] = int(query.get(api) or pages.start)
    while True:
        page_no += 1
        response = await _send(ctx, op, url, query, headers, body, credential, index, page_no)
        answer = _decode(response)
        if pages is None:
            return _items(answer, response.status_code)
        found = _page_items(answer, pages.items)
        out.extend(_items(found, response.status_code) if found else [])
        if page_no >= max_pages or not found:
            return out
        if pages.style == "cursor":
            cursor = _dig(answer, pages.cursor)
            if cursor in (None, "", False):
                return out
            query[_api_name(op, pages.param)] = _text(cursor)
        elif pages.style == "page":
            api = _api_name(op, pages.param)
            query[api] = int(query[api]) + 1
        elif pages.style == "offset":
            api = _api_name(op, pages.param)
            step = query.get(_api_name(op, pages.limit_param)) if pages.limit_param else None
            query[api] = int(query[api]) + (int(step) if step else len(found))
        else:
            link = _next_link(response, answer, pages.next)
            if not link:
                return out
            url, query = urljoin(str(response.url), link), {}


def _api_name(op: Operation, param: str) -> str:
    return next((i.api_name for i in op.inputs if i.param == param), param)


def _decode(response: Any) -> Any:
    content = response.content
    if not content or not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(response.encoding or "utf-8", errors="replace")


def _items(answer: Any, status: int) -> list[dict]:
    if answer is None:
        return [{"status": status}]
    if isinstance(answer, str):
        return [{"status": status, "body": answer}]
    if isinstance(answer, list):
        return [v if isinstance(v, dict) else {"value": v} for v in answer]
    if isinstance(answer, dict):
        return [answer]
    return [{"value": answer}]


def _page_items(answer: Any, path: str) -> list[Any]:
    found = _dig(answer, path) if path else answer
    if isinstance(found, list):
        return found
    if found is None or found == {}:
        return []
    return [found]


def _dig(value: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _next_link(response: Any, answer: Any, where: str) -> str | None:
    if where in ("", "header"):
        link = response.links.get("next", {}).get("url") if hasattr(response, "links") else None
        if link or where == "header":
            return link
    for path in ([where] if where else NEXT_LINK_FIELDS):
        found = _dig(answer, path)
        if isinstance(found, str) and found:
            return found
    return None


async def _send(ctx: NodeContext, op: Operation, url: str, query: dict[str, Any], headers: dict[str, str], body: Any,
                credential: Credential | None, index: int, page: int) -> Any:
    from .sdk import http as sdk_http

    kwargs: dict[str, Any] = {"params": query or None, "headers": headers or None,
                              "credential": credential if credential is not None else False}
    if body is not None and op.method not in ("GET", "HEAD"):
        if op.body_kind == "form" and isinstance(body, dict):
            kwargs["data"] = {str(k): _text(v) for k, v in body.items()}
        else:
            kwargs["json"] = body
    if op.method not in ("GET", "HEAD", "OPTIONS"):  # as the http_request node: a replay is recognisable
        key = ctx.idempotency_key
        kwargs["idempotency"] = key if index == 0 else f"{key}#{index}"
    return await sdk_http.call(ctx, op.method, url, **kwargs)


__all__ = ["MAX_SPEC_BYTES", "NAME", "Connector", "Operation", "SpecError", "fetch", "load", "parse"]
