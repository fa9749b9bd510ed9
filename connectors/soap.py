"""SOAP: call an operation of a WSDL-described service, through zeep.

zeep reads the WSDL, builds the envelope from the operation's params (`args`) and turns the
answer back into data. It never opens a connection itself: the WSDL and every schema it imports
are fetched first with `connectors.sdk.http.call` (so the node's credential, the network policy
and the retry rules apply as to every other connector), then handed to zeep through a transport
that serves only those documents. The envelope goes out the same way. A SOAP fault fails the node
with its faultcode and faultstring.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .sdk import NodeContext, NodeError, NodeType, Param, Registry
from .sdk.http import call, error_message

ICON = "soap.svg"
CATEGORY = "SOAP"
#: Most documents (the WSDL and its imports) one WSDL may pull in.
MAX_DOCUMENTS = 50


class _Need(Exception):
    """zeep asked for a document that has not been fetched yet."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


@functools.cache
def _prefetched() -> type:
    """A zeep transport without a network, serving the documents fetched beforehand (built on first
    use: zeep takes a third of a second to import, which every `flowfuse` command would pay)."""
    from zeep.transports import Transport

    class Prefetched(Transport):
        def __init__(self, documents: dict[str, bytes]):
            super().__init__()
            self.documents = documents

        def load(self, url: str) -> bytes:
            if url not in self.documents:
                raise _Need(url)
            return self.documents[url]

    return Prefetched


async def _client(ctx: NodeContext, wsdl: str) -> Any:
    """A zeep client for `wsdl`, fetching each document it needs through the SDK."""
    from lxml import etree
    from zeep import Client, Settings
    from zeep.exceptions import Error as ZeepError

    documents: dict[str, bytes] = {}
    settings = Settings(strict=True, forbid_entities=True, xml_huge_tree=False)
    for _ in range(MAX_DOCUMENTS):
        try:
            return Client(wsdl, transport=_prefetched()(documents), settings=settings)
        except _Need as need:
            documents[need.url] = (await call(ctx, "GET", need.url)).content
        except (ZeepError, etree.XMLSyntaxError, ValueError) as exc:
            raise NodeError(f"cannot read the WSDL at {wsdl}: {exc}") from None
    raise NodeError(f"the WSDL at {wsdl} imports more than {MAX_DOCUMENTS} documents")


def _jsonable(value: Any) -> Any:
    from zeep.helpers import serialize_object

    return json.loads(json.dumps(serialize_object(value, dict), default=str))


async def _soap(ctx: NodeContext, items: list[dict]) -> list[dict]:
    from lxml import etree
    from zeep.exceptions import Error as ZeepError
    from zeep.exceptions import Fault

    wsdl = ctx.param("wsdl")
    client = await _client(ctx, wsdl)
    service_name, port_name = ctx.param("service"), ctx.param("port")
    try:
        service = client.bind(service_name, port_name) if service_name or port_name else client.service
        binding = service._binding
    except (ZeepError, ValueError, KeyError) as exc:
        raise NodeError(f"the WSDL has no such service/port: {exc}") from None
    out = []
    for item in items:
        name = ctx.param("operation", item)
        try:
            operation = binding.get(name)
        except (ValueError, ZeepError):
            known = ", ".join(sorted(binding._operations)) or "none"
            raise NodeError(f"the WSDL has no operation {name!r} (operations: {known})") from None
        address = ctx.param("address", item) or service._binding_options["address"]
        args = ctx.param("args", item) or {}
        if not isinstance(args, dict):
            raise NodeError("args must be an object of the operation's parameters")
        try:
            envelope, headers = binding._create(name, args=(), kwargs=args, client=client,
                                                options={"address": address})
        except (ZeepError, TypeError, ValueError) as exc:
            raise NodeError(f"cannot build the {name} request from args: {exc}") from None
        response = await call(ctx, "POST", address, content=etree.tostring(envelope, encoding="utf-8",
                                                                           xml_declaration=True),
                              headers=dict(headers), raise_for_status=False, timeout_s=ctx.param("timeout_s", item))
        is_xml = "xml" in response.headers.get("content-type", "")
        if response.status_code >= 400 and not is_xml:
            raise NodeError(f"POST {address} answered HTTP {response.status_code}: {error_message(response)}")
        try:
            result = binding.process_reply(client, operation, response)
        except Fault as fault:
            raise NodeError(f"SOAP fault from {name}: {fault.message} (faultcode {fault.code})") from None
        except (ZeepError, etree.XMLSyntaxError) as exc:
            raise NodeError(f"cannot read the answer to {name}: {exc}") from None
        out.append({"result": _jsonable(result)})
    return out


def register(registry: Registry) -> None:
    registry.add(NodeType("soap.call", _soap, label="SOAP call", category=CATEGORY, icon=ICON,
                          credential_types=("basic", "bearer", "api_key", "header"), params={
        "wsdl": Param("string", required=True, description="URL of the service's WSDL, e.g. https://host/svc?wsdl"),
        "operation": Param("string", required=True, description="the operation to call, as the WSDL names it"),
        "args": Param("object", description="the operation's parameters by name; values may be expressions"),
        "service": Param("string", description="service name, when the WSDL has several"),
        "port": Param("string", description="port name, when the service has several"),
        "address": Param("string", description="endpoint URL instead of the WSDL's soap:address"),
        "timeout_s": Param("number", default=30),
    }, description="Calls a SOAP operation described by a WSDL (zeep); outputs result. Faults fail the node."))
