"""Utilities: date and time, hashing and HMAC, CSV/XML/JSON parse and build, text templates.

All of them are pure: they compute items from items and touch nothing outside the run.

- Dates take ISO 8601 text, epoch seconds or a strptime pattern; a time without an offset is read in
  the node's `timezone`, and results are given in it. Adding days, weeks, months or years keeps the
  wall-clock time across daylight-saving changes; adding hours, minutes or seconds adds elapsed time.
- XML is parsed with defusedxml with DTDs refused, so entity bombs and external entities never
  expand; the result is a dict (`@name` attributes, `#text` text, repeated elements as lists), and
  building takes the same shape back.
- Templates are Jinja2 in the engine's immutable sandbox with the engine's size caps, statements
  allowed, every loop counted against one budget per render and the output capped.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import zoneinfo
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree

import defusedxml.ElementTree as SafeXML
from defusedxml import DefusedXmlException
from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError

from engine.expressions import ENV, MAX_SIZE

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry

HASHES = ("md5", "sha1", "sha256", "sha512")
ENCODINGS = ("hex", "base64")
MAX_TEXT = 16 * 1024 * 1024
#: Loop iterations one template render may make in all, and the characters it may output.
MAX_LOOP_ITERATIONS = 100_000
MAX_TEMPLATE_OUTPUT = MAX_SIZE


def _text(value: Any, what: str = "value") -> str:
    if not isinstance(value, str):
        raise NodeError(f"param {what!r} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise NodeError(f"param {what!r} is longer than {MAX_TEXT} characters")
    return value


# -- date and time -----------------------------------------------------------------------------------------------

_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}


def zone(name: Any) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(str(name or "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise NodeError(f"{name!r} is not a known time zone (e.g. 'Europe/Berlin', 'UTC')") from None


def parse_time(value: Any, tz: zoneinfo.ZoneInfo, input_format: str | None = None) -> dt.datetime:
    """A point in time: ISO 8601 text, epoch seconds (or ms with input_format 'epoch_ms'), or text in
    a strptime pattern; a time without an offset is taken to be in `tz`."""
    if isinstance(value, bool):
        raise NodeError(f"{value!r} is not a date or time")
    if isinstance(value, (int, float)) or input_format in ("epoch", "epoch_ms"):
        try:
            seconds = float(value) / (1000 if input_format == "epoch_ms" else 1)
            return dt.datetime.fromtimestamp(seconds, dt.UTC).astimezone(tz)
        except (TypeError, ValueError, OverflowError, OSError):
            raise NodeError(f"{value!r} is not a number of seconds since 1970") from None
    if not isinstance(value, str):
        raise NodeError(f"{value!r} is not a date or time")
    try:
        if value.strip().lower() == "now":
            return dt.datetime.now(tz)
        parsed = dt.datetime.strptime(value, input_format) if input_format else dt.datetime.fromisoformat(value.strip())
    except ValueError:
        expected = f"the pattern {input_format!r}" if input_format else "ISO 8601 (e.g. 2024-05-01T09:30:00+02:00)"
        raise NodeError(f"{value!r} is not a date or time in {expected}") from None
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed.astimezone(tz)


def format_time(moment: dt.datetime, fmt: str) -> Any:
    if fmt == "iso":
        return moment.isoformat()
    if fmt == "date":
        return moment.date().isoformat()
    if fmt in ("epoch", "epoch_ms"):
        seconds = moment.timestamp() * (1000 if fmt == "epoch_ms" else 1)
        return int(seconds) if seconds == int(seconds) else seconds
    try:
        return moment.strftime(fmt)
    except ValueError as exc:
        raise NodeError(f"format {fmt!r}: {exc}") from None


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        raise NodeError("the date would be out of range")
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def add_time(moment: dt.datetime, amount: Mapping[str, Any]) -> dt.datetime:
    """Calendar units in wall-clock time of the moment's zone, clock units as elapsed time."""
    known = {"years", "months", "weeks", "days", "hours", "minutes", "seconds"}
    unknown = set(amount) - known
    if unknown:
        raise NodeError(f"param 'amount' has unknown units {sorted(unknown)}; use {sorted(known)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in amount.values()):
        raise NodeError("param 'amount' must map units to numbers, e.g. {\"days\": 1, \"hours\": -2}")
    tz = moment.tzinfo
    try:
        months = amount.get("years", 0) * 12 + amount.get("months", 0)
        if months != int(months):
            raise NodeError("years and months must be whole numbers")
        wall = _add_months(moment.replace(tzinfo=None), int(months))
        wall += dt.timedelta(weeks=amount.get("weeks", 0), days=amount.get("days", 0))
        local = wall.replace(tzinfo=tz)
        elapsed = dt.timedelta(hours=amount.get("hours", 0), minutes=amount.get("minutes", 0),
                               seconds=amount.get("seconds", 0))
        return (local.astimezone(dt.UTC) + elapsed).astimezone(tz)
    except OverflowError:
        raise NodeError("the date would be out of range") from None


def _datetime(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        tz = zone(p["timezone"])
        moment = parse_time(p["value"], tz, p["input_format"])
        operation = p["operation"]
        if operation == "diff":
            if p["other"] is None:
                raise NodeError("operation diff needs param 'other': the time to subtract")
            unit = p["unit"]
            if unit not in _UNITS:
                raise NodeError(f"param 'unit' must be one of {', '.join(_UNITS)}")
            seconds = (moment - parse_time(p["other"], tz, p["input_format"])).total_seconds()
            result: Any = seconds / _UNITS[unit]
            result = int(result) if result == int(result) else result
        else:
            if operation == "add":
                if not isinstance(p["amount"], dict):
                    raise NodeError("operation add needs param 'amount', e.g. {\"days\": 1}")
                moment = add_time(moment, p["amount"])
            result = format_time(moment, p["format"] if operation != "parse" else "iso")
        out.append({**item, p["field"]: result})
    return out


# -- hashing and HMAC --------------------------------------------------------------------------------------------


def _bytes(value: Any, encoding: str = "text") -> bytes:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        if encoding == "base64":
            return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise NodeError(f"the key is not {encoding}") from None
    return text.encode()


def _digest(digest: bytes, encoding: str) -> str:
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


def _hash(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        out.append({**item, p["field"]: _digest(hashlib.new(p["algorithm"], _bytes(p["value"])).digest(),
                                                p["encoding"])})
    return out


def _hmac(ctx: NodeContext, items: list[dict]) -> list[dict]:
    credential = ctx.credential
    if not credential or credential.get("type") != "hmac":
        raise NodeError("the hmac node needs a credential of type hmac (its secret key)")
    key_encoding = credential.get("key_encoding") or "text"
    if key_encoding not in ("text", "hex", "base64"):
        raise NodeError(f"the credential's key_encoding {key_encoding!r} must be text, hex or base64")
    key = _bytes(credential.get("key") or "", key_encoding)
    out = []
    for item in items:
        p = ctx.params(item)
        signature = _digest(hmac.new(key, _bytes(p["value"]), p["algorithm"]).digest(), p["encoding"])
        result = {**item, p["field"]: signature}
        if p["expected"] is not None:  # verifying a signature someone sent: compare in constant time
            expected = str(p["expected"]).strip()
            expected = expected.split("=", 1)[1] if "=" in expected and p["encoding"] == "hex" else expected
            result["valid"] = hmac.compare_digest(expected.lower() if p["encoding"] == "hex" else expected, signature)
        out.append(result)
    return out


# -- CSV ---------------------------------------------------------------------------------------------------------


def _delimiter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n\"":
        raise NodeError("param 'delimiter' must be one character (not a quote or line break), e.g. ',' or ';'")
    return value


def _csv_parse(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        reader = csv.reader(io.StringIO(_text(p["value"]), newline=""), delimiter=_delimiter(p["delimiter"]))
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise NodeError(f"the CSV is malformed at line {reader.line_num}: {exc}") from None
        if not p["header"]:
            out += [{"row": row} for row in rows]
            continue
        if not rows:
            continue
        header = rows[0]
        for number, row in enumerate(rows[1:], start=2):
            if len(row) > len(header):
                raise NodeError(f"CSV line {number} has {len(row)} fields but the header has {len(header)}")
            out.append({name: row[i] if i < len(row) else "" for i, name in enumerate(header)})
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value)
    return str(value)


def _csv_build(ctx: NodeContext, items: list[dict]) -> list[dict]:
    p = ctx.params(items[0] if items else None)
    columns = p["columns"] or list(dict.fromkeys(k for item in items for k in item))
    if not all(isinstance(c, str) for c in columns):
        raise NodeError("param 'columns' must be a list of field names")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=_delimiter(p["delimiter"]), lineterminator="\r\n")
    if p["header"]:
        writer.writerow(columns)
    for item in items:
        writer.writerow([_cell(item.get(c)) for c in columns])
    return [{p["field"]: buffer.getvalue(), "rows": len(items)}]


# -- XML ---------------------------------------------------------------------------------------------------------

_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*(:[A-Za-z_][A-Za-z0-9_.\-]*)?$")


def xml_to_dict(element: ElementTree.Element) -> Any:
    value: dict[str, Any] = {f"@{k}": v for k, v in element.attrib.items()}
    for child in element:
        converted = xml_to_dict(child)
        if child.tag in value:
            if not isinstance(value[child.tag], list) or not getattr(value[child.tag], "_repeated", False):
                value[child.tag] = _Repeated([value[child.tag]])
            value[child.tag].append(converted)
        else:
            value[child.tag] = converted
    text = (element.text or "").strip()
    if not value:
        return text if text else None
    if text:
        value["#text"] = text
    return {k: list(v) if isinstance(v, _Repeated) else v for k, v in value.items()}


class _Repeated(list):
    _repeated = True


def parse_xml(text: str) -> dict[str, Any]:
    """XML text as {root tag: value}; DTDs (and with them entity bombs and external entities) refused."""
    try:
        root = SafeXML.fromstring(text.encode(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise NodeError(f"XML refused: it declares a DTD or entities ({type(exc).__name__}), which this node does "
                        "not expand") from None
    except ElementTree.ParseError as exc:
        raise NodeError(f"the XML is malformed: {exc}") from None
    return {root.tag: xml_to_dict(root)}


def _name(name: Any) -> str:
    if not isinstance(name, str) or not _XML_NAME.match(name) or name.lower().startswith("xml"):
        raise NodeError(f"{name!r} cannot be an XML element or attribute name")
    return name


def _fill(element: ElementTree.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "#text":
                element.text = _cell(child)
            elif key.startswith("@"):
                element.set(_name(key[1:]), _cell(child))
            else:
                for one in child if isinstance(child, list) else [child]:
                    _fill(ElementTree.SubElement(element, _name(key)), one)
    elif value is not None:
        element.text = _cell(value)


def build_xml(value: Any, root: str | None, declaration: bool) -> str:
    if root is None:
        if not (isinstance(value, dict) and len(value) == 1):
            raise NodeError("set param 'root', or give a value with exactly one key: the root element")
        (root, value), = value.items()
    element = ElementTree.Element(_name(root))
    _fill(element, value)
    text = ElementTree.tostring(element, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text) if declaration else text


def _xml_parse(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        out.append({**item, p["field"]: parse_xml(_text(p["value"]))})
    return out


def _xml_build(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        out.append({**item, p["field"]: build_xml(p["value"], p["root"], p["declaration"])})
    return out


# -- JSON --------------------------------------------------------------------------------------------------------


def _json_parse(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        try:
            parsed = json.loads(_text(p["value"]))
        except ValueError as exc:
            raise NodeError(f"the text is not JSON: {exc}") from None
        out.append({**item, p["field"]: parsed})
    return out


def _json_build(ctx: NodeContext, items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        p = ctx.params(item)
        indent = p["indent"] or None
        out.append({**item, p["field"]: json.dumps(p["value"], indent=indent, sort_keys=p["sort_keys"],
                                                   ensure_ascii=False, separators=None if indent else (",", ":"))})
    return out


# -- text templates ----------------------------------------------------------------------------------------------

#: The engine's sandboxed environment (its caps, filters and `now`), with `{% %}` statements allowed.
_TEMPLATE_ENVS = {escape: ENV.overlay(block_start_string="{%", block_end_string="%}", comment_start_string="{#",
                                      comment_end_string="#}", autoescape=escape == "html")
                  for escape in ("none", "html")}
_BUDGET = "loop_budget_"


def compile_template(source: str, escape: str) -> Any:
    """Compile once; every `for` loop's iterable is wrapped so that its steps count against the budget."""
    env = _TEMPLATE_ENVS[escape]
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise NodeError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.Name(_BUDGET, "load"), [loop.iter], [], None, None)
    return env.from_string(tree)


def render(template: Any, scope: Mapping[str, Any]) -> str:
    spent = [0]

    def budget(iterable: Any):
        for value in iterable:
            spent[0] += 1
            if spent[0] > MAX_LOOP_ITERATIONS:
                raise SecurityError(f"the template's loops run more than {MAX_LOOP_ITERATIONS} steps in all")
            yield value

    parts, size = [], 0
    try:
        for chunk in template.generate(**scope, **{_BUDGET: budget}):
            size += len(chunk)
            if size > MAX_TEMPLATE_OUTPUT:
                raise NodeError(f"the template's output is longer than {MAX_TEMPLATE_OUTPUT} characters")
            parts.append(chunk)
    except NodeError:
        raise
    except SecurityError as exc:
        raise NodeError(f"template not allowed: {exc}") from None
    except RecursionError:
        raise NodeError("the template nests or recurses too deeply") from None
    except Exception as exc:  # noqa: BLE001 - undefined names, type errors in the user's template: say which
        raise NodeError(f"the template failed: {type(exc).__name__}: {exc}") from None
    return "".join(parts)


_compiled: dict[tuple[str, str], Any] = {}


def _template(ctx: NodeContext, items: list[dict]) -> list[dict]:
    # the raw text: the engine must not evaluate it as one expression (it holds statements and loops)
    source, escape = ctx.node.params["template"].source, ctx.param("escape")
    template = _compiled.get((source, escape))
    if template is None:
        template = compile_template(source, escape)
        if len(_compiled) > 512:
            _compiled.clear()
        _compiled[(source, escape)] = template
    field = ctx.param("field")
    return [{**item, field: render(template, ctx.scope(item))} for item in items]


# -- registration ------------------------------------------------------------------------------------------------


def _validate_template(params: Mapping[str, Any]) -> list[str]:
    source = params.get("template")
    if not isinstance(source, str):
        return []
    try:
        compile_template(source, params.get("escape") or "none")
    except NodeError as exc:
        return [f"param 'template': {exc}"]
    return []


def _validate_timezone(params: Mapping[str, Any]) -> list[str]:
    tz = params.get("timezone")
    if isinstance(tz, str) and "{{" not in tz:
        try:
            zone(tz)
        except NodeError as exc:
            return [f"param 'timezone': {exc}"]
    return []


def _field_param(default: str) -> Param:
    return Param("string", default=default, expression=False, description="the item field the result goes to")


CREDENTIAL_TYPES = (
    CredentialType("hmac", {"key": Field("Secret key"),
                            "key_encoding": Field("How the key is written: text (default), hex or base64",
                                                  secret=False, required=False)},
                   description="A shared secret for HMAC signatures."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    common = {"category": "Utilities", "pure": True}
    registry.add(NodeType(
        type="datetime", run=_datetime, label="Date & time", icon="datetime.svg", validate=_validate_timezone,
        params={"operation": Param("string", default="format", choices=("parse", "format", "add", "diff"),
                                   expression=False),
                "value": Param("any", required=True, description="ISO 8601 text, epoch seconds, or 'now'"),
                "input_format": Param("string", description="strptime pattern, 'epoch' or 'epoch_ms' (default: ISO)"),
                "timezone": Param("string", default="UTC", description="for times without offset, and the result"),
                "format": Param("string", default="iso", description="iso, date, epoch, epoch_ms or a strftime "
                                                                     "pattern"),
                "amount": Param("object", description="add: {years, months, weeks, days, hours, minutes, seconds}"),
                "other": Param("any", description="diff: the time to subtract from value"),
                "unit": Param("string", default="seconds", description="diff: seconds, minutes, hours, days, weeks"),
                "field": _field_param("date")},
        description="Parses, formats, shifts or compares dates and times in a time zone.", **common))
    registry.add(NodeType(
        type="hash", run=_hash, label="Hash", icon="hash.svg",
        params={"algorithm": Param("string", default="sha256", choices=HASHES), "value": Param("any", required=True),
                "encoding": Param("string", default="hex", choices=ENCODINGS), "field": _field_param("hash")},
        description="Hashes text (objects as compact, key-sorted JSON) with MD5, SHA-1, SHA-256 or SHA-512.",
        **common))
    registry.add(NodeType(
        type="hmac", run=_hmac, label="HMAC", icon="hash.svg", credential_types=("hmac",),
        params={"algorithm": Param("string", default="sha256", choices=HASHES), "value": Param("any", required=True),
                "encoding": Param("string", default="hex", choices=ENCODINGS),
                "expected": Param("string", description="a signature to verify: adds valid: true/false"),
                "field": _field_param("hmac")},
        description="Signs text with the credential's key, or checks a signature in constant time.", **common))
    registry.add(NodeType(
        type="csv.parse", run=_csv_parse, label="Parse CSV", icon="csv.svg",
        params={"value": Param("string", required=True), "delimiter": Param("string", default=","),
                "header": Param("boolean", default=True, description="the first line names the fields")},
        description="Turns CSV text into one item per row.", **common))
    registry.add(NodeType(
        type="csv.build", run=_csv_build, label="Build CSV", icon="csv.svg",
        params={"columns": Param("list", description="field names in order (default: every field seen)"),
                "delimiter": Param("string", default=","), "header": Param("boolean", default=True),
                "field": _field_param("csv")},
        description="Turns all items into one CSV text (RFC 4180 quoting).", **common))
    registry.add(NodeType(
        type="xml.parse", run=_xml_parse, label="Parse XML", icon="data-format.svg",
        params={"value": Param("string", required=True), "field": _field_param("data")},
        description="Parses XML into an object (@attributes, #text); refuses DTDs and entities.", **common))
    registry.add(NodeType(
        type="xml.build", run=_xml_build, label="Build XML", icon="data-format.svg",
        params={"value": Param("any", required=True), "root": Param("string"),
                "declaration": Param("boolean", default=False), "field": _field_param("xml")},
        description="Builds XML text from an object of the shape Parse XML gives.", **common))
    registry.add(NodeType(
        type="json.parse", run=_json_parse, label="Parse JSON", icon="data-format.svg",
        params={"value": Param("string", required=True), "field": _field_param("data")},
        description="Parses JSON text.", **common))
    registry.add(NodeType(
        type="json.build", run=_json_build, label="Build JSON", icon="data-format.svg",
        params={"value": Param("any", required=True), "indent": Param("integer", default=0),
                "sort_keys": Param("boolean", default=False), "field": _field_param("json")},
        description="Writes a value as JSON text.", **common))
    registry.add(NodeType(
        type="template", run=_template, label="Text template", icon="template.svg", validate=_validate_template,
        # expression=True only because the text holds {{ }}: the node renders the raw text itself
        params={"template": Param("string", required=True,
                                  description="Jinja2: {{ json.field }}, {% for %}, {% if %}, filters"),
                "escape": Param("string", default="none", choices=("none", "html"), expression=False),
                "field": _field_param("text")},
        description="Renders a text template per item (sandboxed, like expressions, with loops and conditions).",
        **common))
