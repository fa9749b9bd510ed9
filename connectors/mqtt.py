"""MQTT: publish messages, and a trigger that starts the flow for each message on a topic.

paho-mqtt 2.x does the protocol. Its network loop runs in its own thread; the subscribe trigger
hands each message to the event loop through a queue. paho reconnects by itself with a growing
delay (1 s up to 60 s) and the trigger subscribes again on every connect, so a broker restart or
a network cut only pauses the flow. Payloads that are JSON arrive parsed; others as text (or
base64 when they are not UTF-8).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, Registry

log = logging.getLogger("flowfuse.connectors.mqtt")
CONNECT_TIMEOUT_S = 15
PUBLISH_TIMEOUT_S = 30


def _need(credential: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not credential or credential.get("type") != "mqtt":
        raise NodeError("this node needs a credential of type mqtt")
    return credential


def _client(credential: Mapping[str, Any], client_id: str, reconnect: bool) -> tuple[Any, str, int]:
    """A paho Client (imported here, when a node runs: servers that never use MQTT do not load it)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    security = credential.get("security") or "none"
    if security not in ("tls", "none"):
        raise NodeError(f"the credential's security {security!r} must be tls or none")
    raw_port = credential.get("port") or ("8883" if security == "tls" else "1883")
    if not str(raw_port).isdigit() or not 0 < int(raw_port) < 65536:
        raise NodeError(f"the credential's port {raw_port!r} is not a port number")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=reconnect)
    if credential.get("user"):
        client.username_pw_set(credential["user"], credential.get("password") or None)
    if security == "tls":
        try:
            client.tls_set_context(ssl.create_default_context(cadata=credential.get("ca_cert") or None))
        except (ssl.SSLError, ValueError) as exc:
            raise NodeError(f"the credential's ca_cert is not a PEM certificate: {exc}") from None
    return client, credential.get("host") or "", int(raw_port)


def _topic(value: Any, wildcards: bool) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise NodeError("param 'topic' must be a non-empty topic name")
    if not wildcards and ("+" in value or "#" in value):
        raise NodeError(f"cannot publish to {value!r}: + and # are for subscribing only")
    return value


def _encode(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, (dict, list, bool, int, float)):
        return json.dumps(payload).encode()
    return str(payload).encode()


def publish(credential: Mapping[str, Any], messages: list[tuple[str, bytes, int, bool]]) -> None:
    """Connect, publish each (topic, payload, qos, retain) and wait until the broker has it (blocking)."""
    client, host, port = _client(credential, f"flowfuse-pub-{uuid.uuid4().hex[:12]}", reconnect=False)
    connected, outcome = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome["reason"] = reason_code
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise NodeError(f"cannot reach the MQTT broker {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S):
            raise NodeError(f"the MQTT broker {host}:{port} did not answer the connect within {CONNECT_TIMEOUT_S} s")
        if outcome["reason"].is_failure:
            raise NodeError(f"the MQTT broker {host}:{port} refused the connection: {outcome['reason']}")
        for topic, payload, qos, retain in messages:
            info = client.publish(topic, payload, qos=qos, retain=retain)
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            if not info.is_published():
                raise NodeError(f"the MQTT broker did not acknowledge the message to {topic!r} "
                                f"within {PUBLISH_TIMEOUT_S} s")
    except (RuntimeError, ValueError) as exc:
        raise NodeError(f"publishing to {host}:{port} failed: {exc}") from None
    finally:
        client.disconnect()
        client.loop_stop()


async def _publish(ctx: NodeContext, items: list[dict]) -> list[dict]:
    credential = _need(ctx.credential)
    messages, out = [], []
    for item in items:
        p = ctx.params(item)
        qos = p["qos"]
        if qos not in (0, 1, 2):
            raise NodeError(f"param 'qos' must be 0, 1 or 2, got {qos!r}")
        topic = _topic(p["topic"], wildcards=False)
        messages.append((topic, _encode(p["payload"]), qos, bool(p["retain"])))
        out.append({"topic": topic, "qos": qos, "retain": bool(p["retain"]), "bytes": len(messages[-1][1])})
    if messages:
        await asyncio.to_thread(publish, credential, messages)
    return out


def decode(payload: bytes, mode: str) -> Any:
    """A received payload as an item value: parsed JSON, text, or base64 (see the `payload` param)."""
    if mode == "base64":
        return base64.b64encode(payload).decode()
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode()
    if mode == "auto":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


async def _listen(ectx: Any) -> None:
    """Subscribe and emit one execution per message until cancelled; paho reconnects on its own."""
    credential = _need(ectx.credential)
    params = ectx.params
    topic = _topic(params.get("topic"), wildcards=True)
    qos = params.get("qos", 0)
    mode = params.get("payload") or "auto"
    logger = getattr(ectx, "log", None) or log
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
    client, host, port = _client(credential, f"flowfuse-sub-{uuid.uuid4().hex[:12]}", reconnect=True)
    client.reconnect_delay_set(min_delay=1, max_delay=60)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.warning("MQTT broker %s:%s refused the connection: %s", host, port, reason_code)
            return
        client.subscribe(topic, qos=qos)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.warning("lost the MQTT broker %s:%s (%s); reconnecting", host, port, reason_code)

    def on_message(client, userdata, message):
        item = {"topic": message.topic, "payload": decode(message.payload, mode), "qos": message.qos,
                "retain": bool(message.retain)}
        loop.call_soon_threadsafe(_offer, queue, item)

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    try:
        while True:
            item = await queue.get()
            await ectx.emit([item])
    finally:
        def stop() -> None:
            client.disconnect()
            client.loop_stop()
        threading.Thread(target=stop, name="mqtt-stop", daemon=True).start()


def _offer(queue: asyncio.Queue, item: dict) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        log.warning("dropped an MQTT message on %s: 10000 messages are waiting to start executions", item["topic"])


CREDENTIAL_TYPES = (
    CredentialType("mqtt", {"host": Field("Host", secret=False),
                            "port": Field("Port (1883, or 8883 with tls)", secret=False, required=False),
                            "security": Field("tls or none (default)", secret=False, required=False),
                            "user": Field("User name", secret=False, required=False),
                            "password": Field("Password", required=False),
                            "ca_cert": Field("CA certificate (PEM), for a broker with a private CA", secret=False,
                                             required=False)},
                   description="An MQTT broker (3.1.1)."),
)


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    registry.add(NodeType(
        type="mqtt.publish", run=_publish, label="MQTT publish", category="MQTT", icon="mqtt.svg",
        credential_types=("mqtt",),
        params={"topic": Param("string", required=True),
                "payload": Param("any", description="objects and lists are sent as JSON, other values as text"),
                "qos": Param("integer", default=1, choices=(0, 1, 2)),
                "retain": Param("boolean", default=False)},
        description="Publishes one message per item and waits until the broker has it."))
    registry.add(NodeType(
        type="mqtt.message", run=None, label="MQTT message", category="MQTT", icon="mqtt.svg",
        credential_types=("mqtt",), trigger=True, trigger_kind="event", listen=_listen,
        params={"topic": Param("string", required=True, expression=False, description="may hold + and # wildcards"),
                "qos": Param("integer", default=1, choices=(0, 1, 2), expression=False),
                "payload": Param("string", default="auto", choices=("auto", "text", "base64"), expression=False,
                                 description="auto: JSON when it parses, else text")},
        description="Starts the flow once for each message published on a topic."))
