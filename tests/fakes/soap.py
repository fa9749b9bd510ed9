"""A SOAP 1.1 service (document/literal) with its WSDL at `/calculator?wsdl`: Add and Divide.
Requests are `text/xml` envelopes with a `SOAPAction` header; a fault is HTTP 500 with a
`soap:Fault` (faultcode, faultstring), as SOAP 1.1 section 6.2 prescribes."""

from __future__ import annotations

from lxml import etree

from . import FakeService, Reply, Request

NS = "http://example.com/calculator"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"

WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="{ns}" targetNamespace="{ns}" name="Calculator">
  <types>
    <xsd:schema targetNamespace="{ns}" elementFormDefault="qualified">
      <xsd:element name="Add"><xsd:complexType><xsd:sequence>
        <xsd:element name="a" type="xsd:int"/><xsd:element name="b" type="xsd:int"/>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="AddResponse"><xsd:complexType><xsd:sequence>
        <xsd:element name="AddResult" type="xsd:int"/>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="Divide"><xsd:complexType><xsd:sequence>
        <xsd:element name="a" type="xsd:int"/><xsd:element name="b" type="xsd:int"/>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="DivideResponse"><xsd:complexType><xsd:sequence>
        <xsd:element name="quotient" type="xsd:int"/><xsd:element name="remainder" type="xsd:int"/>
      </xsd:sequence></xsd:complexType></xsd:element>
    </xsd:schema>
  </types>
  <message name="AddIn"><part name="parameters" element="tns:Add"/></message>
  <message name="AddOut"><part name="parameters" element="tns:AddResponse"/></message>
  <message name="DivideIn"><part name="parameters" element="tns:Divide"/></message>
  <message name="DivideOut"><part name="parameters" element="tns:DivideResponse"/></message>
  <portType name="CalculatorPort">
    <operation name="Add"><input message="tns:AddIn"/><output message="tns:AddOut"/></operation>
    <operation name="Divide"><input message="tns:DivideIn"/><output message="tns:DivideOut"/></operation>
  </portType>
  <binding name="CalculatorBinding" type="tns:CalculatorPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="Add"><soap:operation soapAction="{ns}/Add"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="Divide"><soap:operation soapAction="{ns}/Divide"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
  </binding>
  <service name="Calculator">
    <port name="CalculatorPort" binding="tns:CalculatorBinding"><soap:address location="{url}/calculator"/></port>
  </service>
</definitions>
"""


def envelope(body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}"><soap:Body>{body}'
            "</soap:Body></soap:Envelope>").encode()


def fault(code: str, message: str) -> Reply:
    return Reply(500, envelope(f"<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{message}</faultstring>"
                               "</soap:Fault>"), {"Content-Type": "text/xml; charset=utf-8"})


class FakeSoap(FakeService):
    def __init__(self, user: str = "soapuser", password: str = "soappass") -> None:
        self.user, self.password = user, password
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path != "/calculator":
            return Reply(404, "not found")
        if request.method == "GET":
            return Reply(200, WSDL.format(ns=NS, url=self.url), {"Content-Type": "text/xml; charset=utf-8"})
        import base64
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="calculator"'})
        if not request.headers.get("content-type", "").startswith("text/xml"):
            return fault("Client", "SOAP 1.1 requests must be text/xml")
        try:
            body = etree.fromstring(request.body).find(f"{{{SOAP}}}Body")
            call = body[0]
        except (etree.XMLSyntaxError, TypeError, IndexError):
            return fault("Client", "malformed envelope")
        name = etree.QName(call).localname
        action = request.headers.get("soapaction", "").strip('"')
        if action != f"{NS}/{name}":
            return fault("Client", f"SOAPAction {action!r} does not match operation {name}")
        args = {etree.QName(e).localname: int(e.text) for e in call}
        if name == "Add":
            return self.ok(f'<AddResponse xmlns="{NS}"><AddResult>{args["a"] + args["b"]}</AddResult></AddResponse>')
        if name == "Divide":
            if args["b"] == 0:
                return fault("Client", "Division by zero")
            q, r = divmod(args["a"], args["b"])
            return self.ok(f'<DivideResponse xmlns="{NS}"><quotient>{q}</quotient><remainder>{r}</remainder>'
                           "</DivideResponse>")
        return fault("Client", f"unknown operation {name}")

    @staticmethod
    def ok(xml: str) -> Reply:
        return Reply(200, envelope(xml), {"Content-Type": "text/xml; charset=utf-8"})
