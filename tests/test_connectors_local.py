"""The connectors for servers on the customer's own network, against real servers on loopback:
SQL on PostgreSQL, MariaDB and SQLite; SMTP (STARTTLS and TLS) and IMAP; MQTT on Mosquitto; and the
utilities (dates, hashes, HMAC, CSV/XML/JSON, templates).

Every action runs inside a real flow in a real `flowfuse serve`: a synchronous webhook starts the
flow and answers with its last node's items. Triggers (SQL new rows, IMAP new mail, MQTT messages)
run in the real worker, which keeps their cursors in runs.db. The database, mail and MQTT servers
are started by the fixtures in tests/services.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import sqlite3
import threading
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance import commands
from appliance.runtime import init_data_dir
from appliance.settings import load
from tests.conftest import FAST_ENV, Server, free_port, poll

#: The fixtures that start PostgreSQL, MariaDB, Mosquitto, SMTP and IMAP servers (a plugin, so that
#: pytest rewrites its asserts before this module imports its helpers).
pytest_plugins = ("tests.services",)
pytest.register_assert_rewrite("tests.services")
from tests.services import PASSWORD, USER, mysql_connect, pg_connect

#: The TLS-from-the-first-byte SMTP server cannot tell aiosmtpd that its AUTH runs under TLS.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

HOSTILE = "'; DROP TABLE people; --"
HOSTILE_2 = 'Robert"); DROP TABLE people;-- \\ %s ? :name'
DIALECTS = ("postgres", "mysql", "sqlite")


# -- the FlowFuse server and how the tests talk to it ------------------------------------------------------------


def settings_for(data_dir: Path):
    return load(env={**FAST_ENV, "FLOWFUSE_CONFIG": ""}, overrides={"storage.data_dir": str(data_dir)})


class FlowFuse:
    """One `flowfuse serve`, with flows and credentials saved by the code the CLI runs."""

    def __init__(self, root: Path):
        self.data = root / "data"
        init_data_dir(settings_for(self.data))
        self.server = Server(self.data, free_port()).start("serve")

    def credential(self, name: str, type_: str, fields: dict[str, str]) -> None:
        commands.set_credential(settings_for(self.data), name, type_, fields, None)

    def install(self, doc: dict[str, Any], activate: bool = True) -> dict[str, Any]:
        path = self.data.parent / f"{doc['name']}.json"
        path.write_text(json.dumps(doc))
        return commands.import_flow(settings_for(self.data), path, None, activate)

    def hook(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.url}/hooks/default/{path}", json=body, timeout=60)

    def ok(self, path: str, body: Any) -> list[Any]:
        """The flow's output items (a webhook answers one item as an object)."""
        r = self.hook(path, body)
        assert r.status_code == 200, r.text
        answer = r.json()
        return answer if isinstance(answer, list) else [answer]

    def failure(self, path: str, body: Any) -> str:
        r = self.hook(path, body)
        assert r.status_code == 500, r.text
        return r.json()["error"]

    def executions_of(self, flow: str) -> list[dict[str, Any]]:
        """Every execution of a flow (oldest first) with its input items."""
        s = settings_for(self.data)
        rows = commands.list_executions(s, None, flow, None, 1000, None)
        return [commands.show_execution(s, row["id"], None) for row in reversed(rows)]

    def cursor(self, flow_name: str) -> Any:
        """The cursor the worker keeps for a flow's polling trigger (None before its first poll)."""
        flows = sqlite3.connect(f"file:{self.data / 'flowfuse.db'}?mode=ro", uri=True, timeout=5)
        runs = sqlite3.connect(f"file:{self.data / 'runs.db'}?mode=ro", uri=True, timeout=5)
        try:
            [flow_id] = flows.execute("SELECT id FROM flows WHERE name=?", (flow_name,)).fetchone()
            row = runs.execute("SELECT cursor FROM trigger_cursors WHERE flow_id=?", (flow_id,)).fetchone()
        finally:
            flows.close()
            runs.close()
        return json.loads(row[0]) if row else None

    def restart(self) -> None:
        self.server.stop()
        self.server.start("serve")


def hooked(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    """A flow: a synchronous webhook at /hooks/default/<name>, then the nodes in a chain."""
    chain = [{"id": "hook", "type": "webhook", "params": {"path": name}}, *nodes]
    return {"name": name, "nodes": chain, "edges": [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(chain)]}


def triggered(name: str, trigger: dict[str, Any]) -> dict[str, Any]:
    """A flow started by a trigger, whose execution records what the trigger emitted."""
    return {"name": name, "nodes": [trigger, {"id": "seen", "type": "noop"}], "edges": [{"from": "trigger",
                                                                                       "to": "seen"}]}


@pytest.fixture(scope="module")
def ff(tmp_path_factory):
    flowfuse = FlowFuse(tmp_path_factory.mktemp("local-connectors"))
    yield flowfuse
    flowfuse.server.stop()


# -- SQL ---------------------------------------------------------------------------------------------------------


class Database:
    """One of the three databases: a credential in FlowFuse and a direct connection for the test's own checks."""

    def __init__(self, dialect: str, fields: dict[str, str], ff: FlowFuse):
        self.dialect, self.fields = dialect, fields
        self.credential = f"db-{dialect}"
        ff.credential(self.credential, dialect, fields)

    def connect(self):
        if self.dialect == "postgres":
            return pg_connect(self.fields)
        if self.dialect == "mysql":
            return mysql_connect(self.fields)
        return sqlite3.connect(self.fields["path"], isolation_level=None)

    def run(self, sql: str, params: tuple = ()) -> list[tuple]:
        sql = sql.replace("%s", "?") if self.dialect == "sqlite" else sql
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
        finally:
            conn.close()

    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            return {r[0] for r in self.run("SELECT name FROM sqlite_master WHERE type='table'")}
        schema = "public" if self.dialect == "postgres" else self.fields["database"]
        return {r[0] for r in self.run("SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                                       (schema,))}

    @property
    def placeholder(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def serial(self) -> str:
        return {"postgres": "SERIAL PRIMARY KEY", "mysql": "INT AUTO_INCREMENT PRIMARY KEY",
                "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT"}[self.dialect]


@pytest.fixture(scope="module")
def databases(request, ff, tmp_path_factory):
    """dialect -> Database, each server started once per session (see tests/services.py)."""
    sqlite_path = tmp_path_factory.mktemp("sqlite") / "shop.db"
    sqlite3.connect(sqlite_path).close()
    return {"postgres": Database("postgres", request.getfixturevalue("postgres"), ff),
            "mysql": Database("mysql", request.getfixturevalue("mariadb"), ff),
            "sqlite": Database("sqlite", {"path": str(sqlite_path)}, ff)}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_insert_upsert_and_query_store_hostile_text_verbatim(ff, databases, dialect):
    db = databases[dialect]
    db.run("CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, note VARCHAR(200))")
    node = {"credential": db.credential}
    ff.install(hooked(f"{dialect}-insert", {"id": "write", "type": "sql.insert", **node, "params": {
        "table": "people", "values": {"id": "{{ json.id }}", "name": "{{ json.name }}", "note": "from {{ json.who }}"}}}))
    ff.install(hooked(f"{dialect}-upsert", {"id": "write", "type": "sql.upsert", **node, "params": {
        "table": "people", "key": ["id"], "values": {"id": "{{ json.id }}", "name": "{{ json.name }}"}}}))
    ff.install(hooked(f"{dialect}-query", {"id": "read", "type": "sql.query", **node, "params": {
        "query": f"SELECT id, name, note FROM people WHERE name = {db.placeholder} OR id = {db.placeholder} "
                 "ORDER BY id",
        "values": ["{{ json.name }}", "{{ json.id }}"]}}))

    written = ff.ok(f"{dialect}-insert", [{"id": 1, "name": HOSTILE, "who": HOSTILE_2},
                                          {"id": 2, "name": HOSTILE_2, "who": "web"}])
    assert written == [{"id": 1, "name": HOSTILE, "note": f"from {HOSTILE_2}"},
                       {"id": 2, "name": HOSTILE_2, "note": "from web"}]
    # an update of row 2 and a new row 3, in one run
    ff.ok(f"{dialect}-upsert", [{"id": 2, "name": "renamed"}, {"id": 3, "name": HOSTILE}])

    found = ff.ok(f"{dialect}-query", {"name": HOSTILE, "id": 2})
    assert found == [{"id": 1, "name": HOSTILE, "note": f"from {HOSTILE_2}"},
                     {"id": 2, "name": "renamed", "note": "from web"},
                     {"id": 3, "name": HOSTILE, "note": None}]
    assert db.run("SELECT id, name, note FROM people ORDER BY id") == [
        (1, HOSTILE, f"from {HOSTILE_2}"), (2, "renamed", "from web"), (3, HOSTILE, None)]
    assert "people" in db.tables()

    # a statement the database refuses fails the node with the database's word, and rolls the run back
    error = ff.failure(f"{dialect}-insert", [{"id": 4, "name": "four", "who": "x"}, {"id": 1, "name": "dup", "who": "x"}])
    assert error.startswith(f"the {dialect} database refused the statement:")
    assert db.run("SELECT count(*) FROM people")[0][0] == 3  # row 4 went with the failed transaction


def test_sql_identifiers_must_be_plain_and_literal(ff, databases):
    """Table and column names come only from the flow, as plain identifiers; the flow is refused otherwise."""
    doc = hooked("bad-identifiers",
                 {"id": "table", "type": "sql.insert", "credential": "db-sqlite",
                  "params": {"table": "people; DROP TABLE people", "values": {"id": 1}}},
                 {"id": "column", "type": "sql.upsert", "credential": "db-sqlite",
                  "params": {"table": "people", "key": ["id"], "values": {"id": 1, "name) VALUES (1); --": "x"}}},
                 {"id": "dynamic", "type": "sql.insert", "credential": "db-sqlite",
                  "params": {"table": "people", "values": "{{ json }}"}},
                 {"id": "expression", "type": "sql.insert", "credential": "db-sqlite",
                  "params": {"table": "{{ json.table }}", "values": {"id": 1}}},
                 {"id": "query", "type": "sql.query", "credential": "db-sqlite",
                  "params": {"query": "SELECT * FROM {{ json.table }}"}})
    path = ff.data.parent / "bad-identifiers.json"
    path.write_text(json.dumps(doc))
    result = ff.server.cli("flow", "import", str(path))
    assert result.returncode != 0
    message = result.stderr
    assert "'people; DROP TABLE people' is not a plain SQL identifier" in message
    assert "column 'name) VALUES (1); --' is not a plain SQL identifier" in message
    assert "param 'values' must be an object written in the flow" in message
    assert "param 'table' must be a literal value, not an expression" in message
    assert "param 'query' must be a literal value, not an expression" in message
    assert "bad-identifiers" not in [f["name"] for f in commands.list_flows(settings_for(ff.data), None)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_new_rows_trigger_takes_each_row_added_after_activation_once_across_a_restart(ff, databases, dialect):
    db = databases[dialect]
    db.run(f"CREATE TABLE events (id {db.serial()}, what VARCHAR(100))")
    db.run("INSERT INTO events (what) VALUES (%s)", ("before activation",))
    name = f"{dialect}-new-rows"
    ff.install(triggered(name, {"id": "trigger", "type": "sql.new_rows", "credential": db.credential,
                                "params": {"table": "events", "column": "id", "interval_s": 1}}))
    assert poll(lambda: ff.cursor(name), timeout=30, what="the first poll") == {"last": 1}

    db.run("INSERT INTO events (what) VALUES (%s)", ("second",))
    db.run("INSERT INTO events (what) VALUES (%s)", (HOSTILE,))
    seen = poll(lambda: [i for e in ff.executions_of(name) for i in e["input"]] if
                len([i for e in ff.executions_of(name) for i in e["input"]]) >= 2 else None, timeout=30,
                what="executions of rows 2 and 3")
    assert seen == [{"id": 2, "what": "second"}, {"id": 3, "what": HOSTILE}]

    ff.restart()
    db.run("INSERT INTO events (what) VALUES (%s)", ("after restart",))
    after = poll(lambda: [e for e in ff.executions_of(name) if {"id": 4, "what": "after restart"} in e["input"]],
                 timeout=40, what="the execution of row 4")
    assert after[0]["input"] == [{"id": 4, "what": "after restart"}]  # the cursor survived: 2 and 3 not again
    inputs = [i["id"] for e in ff.executions_of(name) for i in e["input"]]
    assert inputs == [2, 3, 4]
    assert all(e["status"] == "succeeded" and e["trigger"] == "polling" for e in ff.executions_of(name))


# -- email -------------------------------------------------------------------------------------------------------


def test_send_with_starttls_login_and_an_attachment(ff, smtp_servers, certificate):
    port, box = smtp_servers["starttls"]
    ff.credential("mail-starttls", "smtp", {"host": "127.0.0.1", "port": str(port), "security": "starttls",
                                            "user": USER, "password": PASSWORD, "ca_cert": certificate[0]})
    ff.install(hooked("mail-starttls", {"id": "send", "type": "email.send", "credential": "mail-starttls", "params": {
        "from": "FlowFuse <flows@example.com>", "to": "{{ json.to }}", "cc": ["audit@example.com"],
        "subject": "Report {{ json.day }}", "text": "Hello {{ json.name }}, the report is attached.",
        "html": "<p>Hello <b>{{ json.name }}</b></p>",
        "attachments": [{"filename": "report-{{ json.day }}.csv", "content": "{{ json.csv }}",
                         "content_type": "text/csv"}]}}))
    csv_bytes = "sku,qty\r\nA-1,3\r\nB-\u00e9,4\r\n".encode()
    [sent] = ff.ok("mail-starttls", {"to": "Ann <ann@example.com>", "name": "Ann", "day": "2024-05-01",
                                     "csv": base64.b64encode(csv_bytes).decode()})
    assert sent["accepted"] == ["ann@example.com", "audit@example.com"] and sent["refused"] == {}

    [got] = [m for m in box.received if m["message"]["Message-ID"] == sent["message_id"]]
    assert got["tls"] is True and got["login"] == USER
    assert got["to"] == ["ann@example.com", "audit@example.com"] and got["from"] == "flows@example.com"
    message = got["message"]
    assert message["Subject"] == "Report 2024-05-01" and message["To"] == "Ann <ann@example.com>"
    assert message.get_body(("plain",)).get_content().strip() == "Hello Ann, the report is attached."
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello <b>Ann</b></p>"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report-2024-05-01.csv" and attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == csv_bytes

    # the password never shows in what the run recorded
    shown = commands.show_execution(settings_for(ff.data), ff.hook("mail-starttls", {
        "to": "bo@example.com", "name": "Bo", "day": "d", "csv": ""}).headers["x-flowfuse-execution"], None)
    assert PASSWORD not in json.dumps(shown)


def test_send_over_tls_verifies_the_server_certificate(ff, smtp_servers, certificate):
    port, box = smtp_servers["tls"]
    fields = {"host": "127.0.0.1", "port": str(port), "security": "tls", "user": USER, "password": PASSWORD}
    ff.credential("mail-tls", "smtp", {**fields, "ca_cert": certificate[0]})
    ff.credential("mail-tls-untrusted", "smtp", fields)  # the system's CAs do not know the test certificate
    params = {"from": "flows@example.com", "to": "{{ json.to }}", "subject": "TLS", "text": "over TLS"}
    ff.install(hooked("mail-tls", {"id": "send", "type": "email.send", "credential": "mail-tls", "params": params}))
    ff.install(hooked("mail-untrusted", {"id": "send", "type": "email.send", "credential": "mail-tls-untrusted",
                                         "params": params}))

    [sent] = ff.ok("mail-tls", {"to": "tls@example.com"})
    [got] = [m for m in box.received if m["message"]["Message-ID"] == sent["message_id"]]
    assert got["tls"] is True and got["to"] == ["tls@example.com"]

    before = len(box.received)
    error = ff.failure("mail-untrusted", {"to": "tls@example.com"})
    assert "CERTIFICATE_VERIFY_FAILED" in error and PASSWORD not in error
    assert len(box.received) == before


def _mail(subject: str, body: str, attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Sender <sender@example.com>"
    message["To"] = "inbox@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    message["Date"] = "Wed, 01 May 2024 09:30:00 +0200"
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice.pdf")
    return bytes(message)


def test_imap_trigger_starts_one_execution_per_new_mail(ff, imap_server):
    imap_server.deliver(_mail("old news", "delivered before the flow was activated"))
    ff.credential("mailbox", "imap", {"host": "127.0.0.1", "port": str(imap_server.port), "security": "none",
                                      "user": USER, "password": PASSWORD})
    ff.install(triggered("new-mail", {"id": "trigger", "type": "email.new_mail", "credential": "mailbox",
                                      "params": {"interval_s": 1}}))
    assert poll(lambda: ff.cursor("new-mail"), timeout=30, what="the first poll") == {
        "uidvalidity": imap_server.uidvalidity, "uid": 1}

    imap_server.deliver(_mail("Invoice 17", "Please find the invoice attached.", b"%PDF-1.4 test"))
    [first] = poll(lambda: ff.executions_of("new-mail"), timeout=30, what="the execution of the new mail")
    [mail] = first["input"]
    assert mail["subject"] == "Invoice 17" and mail["from"] == ["sender@example.com"]
    assert mail["to"] == ["inbox@example.com"] and mail["date"] == "2024-05-01T09:30:00+02:00"
    assert mail["text"].strip() == "Please find the invoice attached."
    assert mail["attachments"] == [{"filename": "invoice.pdf", "content_type": "application/pdf", "size": 13}]

    imap_server.deliver(_mail("Invoice 18", "Another one."))
    runs = poll(lambda: (found := ff.executions_of("new-mail")) and len(found) >= 2 and found, timeout=30,
                what="the execution of the second mail")
    assert [[m["subject"] for m in e["input"]] for e in runs] == [["Invoice 17"], ["Invoice 18"]]
    assert all(login == (USER, True) for login in imap_server.logins)


# -- MQTT --------------------------------------------------------------------------------------------------------


class Subscriber:
    """A real MQTT client that collects what arrives on a topic."""

    def __init__(self, fields: dict[str, str], topic: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(fields["user"], fields["password"])
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.connect(fields["host"], int(fields["port"]))
        self.client.loop_start()
        assert self.ready.wait(10), "the test subscriber was not subscribed"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(fields: dict[str, str], topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(fields["user"], fields["password"])
    client.connect(fields["host"], int(fields["port"]))
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mqtt_publish_reaches_a_subscriber(ff, mosquitto):
    fields, _ = mosquitto
    ff.credential("broker", "mqtt", fields)
    ff.credential("broker-wrong", "mqtt", {**fields, "password": "not-the-password"})
    node = {"topic": "plant/{{ json.line }}/temperature", "payload": "{{ json }}", "qos": 1}
    ff.install(hooked("mqtt-publish", {"id": "pub", "type": "mqtt.publish", "credential": "broker", "params": node}))
    ff.install(hooked("mqtt-refused", {"id": "pub", "type": "mqtt.publish", "credential": "broker-wrong",
                                       "params": node}))
    subscriber = Subscriber(fields, "plant/#")
    try:
        out = ff.ok("mqtt-publish", [{"line": 3, "celsius": 71.5}, {"line": 4, "celsius": HOSTILE}])
        assert [o["topic"] for o in out] == ["plant/3/temperature", "plant/4/temperature"]
        got = poll(lambda: len(subscriber.messages) >= 2 and subscriber.messages, timeout=10, what="two messages")
        assert [(t, json.loads(p)) for t, p, _ in got] == [("plant/3/temperature", {"line": 3, "celsius": 71.5}),
                                                          ("plant/4/temperature", {"line": 4, "celsius": HOSTILE})]
        error = ff.failure("mqtt-refused", {"line": 5})
        assert "refused the connection" in error and "not-the-password" not in error
        assert len(subscriber.messages) == 2
    finally:
        subscriber.close()


def test_mqtt_trigger_starts_an_execution_per_message_and_survives_a_broker_restart(ff, mosquitto):
    fields, broker = mosquitto
    ff.credential("broker-sub", "mqtt", fields)
    ff.install(triggered("mqtt-trigger", {"id": "trigger", "type": "mqtt.message", "credential": "broker-sub",
                                          "params": {"topic": "sensors/+/temp", "qos": 1}}))

    def listening(marker: str) -> bool:
        """Publish probes until one starts an execution: then the trigger is subscribed."""
        publish(fields, "sensors/probe/temp", json.dumps({"probe": marker}).encode())
        return any(i.get("payload") == {"probe": marker} for e in ff.executions_of("mqtt-trigger") for i in e["input"])

    poll(lambda: listening("first"), timeout=40, interval=0.5, what="the trigger's subscription")
    for n in range(3):
        publish(fields, f"sensors/s{n}/temp", json.dumps({"n": n, "celsius": 20 + n}).encode())
    publish(fields, "sensors/s9/temp", b"not json \xff")
    publish(fields, "other/topic", b"{}")  # not subscribed

    def readings() -> list[dict]:
        return [i for e in ff.executions_of("mqtt-trigger") for i in e["input"] if "probe" not in str(i["payload"])]
    found = poll(lambda: len(readings()) >= 4 and readings(), timeout=30, what="four executions")
    assert sorted(found, key=lambda i: i["topic"]) == [
        {"topic": "sensors/s0/temp", "payload": {"n": 0, "celsius": 20}, "qos": 1, "retain": False},
        {"topic": "sensors/s1/temp", "payload": {"n": 1, "celsius": 21}, "qos": 1, "retain": False},
        {"topic": "sensors/s2/temp", "payload": {"n": 2, "celsius": 22}, "qos": 1, "retain": False},
        {"topic": "sensors/s9/temp", "payload": base64.b64encode(b"not json \xff").decode(), "qos": 1,
         "retain": False}]
    assert all(len(e["input"]) == 1 for e in ff.executions_of("mqtt-trigger"))

    broker.stop()
    broker.start()
    poll(lambda: listening("after restart"), timeout=60, interval=0.5, what="the trigger back after a broker restart")


# -- utilities ---------------------------------------------------------------------------------------------------


def test_dates_in_time_zones(ff):
    ff.install(hooked(
        "dates",
        {"id": "parse", "type": "datetime", "params": {"operation": "parse", "value": "{{ json.t }}",
                                                       "timezone": "Europe/Berlin", "field": "local"}},
        {"id": "day", "type": "datetime", "params": {"operation": "add", "value": "{{ json.local }}",
                                                     "timezone": "Europe/Berlin", "amount": {"days": 1},
                                                     "field": "next_day"}},
        {"id": "hours", "type": "datetime", "params": {"operation": "add", "value": "{{ json.local }}",
                                                       "timezone": "Europe/Berlin", "amount": {"hours": 24},
                                                       "field": "in_24h"}},
        {"id": "ny", "type": "datetime", "params": {"operation": "format", "value": "{{ json.in_24h }}",
                                                    "timezone": "America/New_York", "format": "%Y-%m-%d %H:%M %Z",
                                                    "field": "new_york"}},
        {"id": "month", "type": "datetime", "params": {"operation": "add", "value": "2024-01-31T10:00:00Z",
                                                       "amount": {"months": 1}, "format": "date", "field": "feb"}},
        {"id": "diff", "type": "datetime", "params": {"operation": "diff", "value": "{{ json.next_day }}",
                                                      "other": "{{ json.local }}", "unit": "hours",
                                                      "field": "hours_in_that_day"}},
        {"id": "epoch", "type": "datetime", "params": {"operation": "format", "value": 1714555800,
                                                       "timezone": "Asia/Kolkata", "field": "kolkata"}}))
    # the night Berlin moves its clocks forward: that day has 23 hours
    [out] = ff.ok("dates", {"t": "2024-03-30T12:00:00"})
    assert out["local"] == "2024-03-30T12:00:00+01:00"
    assert out["next_day"] == "2024-03-31T12:00:00+02:00"
    assert out["in_24h"] == "2024-03-31T13:00:00+02:00"
    assert out["new_york"] == "2024-03-31 07:00 EDT"
    assert out["feb"] == "2024-02-29"
    assert out["hours_in_that_day"] == 23
    assert out["kolkata"] == "2024-05-01T15:00:00+05:30"

    ff.install(hooked("bad-date", {"id": "parse", "type": "datetime", "params": {
        "operation": "parse", "value": "{{ json.t }}", "timezone": "{{ json.tz }}"}}))
    assert ff.failure("bad-date", {"t": "31/02/2024", "tz": "UTC"}).startswith("'31/02/2024' is not a date or time")
    assert "'Mars/Olympus' is not a known time zone" in ff.failure("bad-date", {"t": "2024-01-01", "tz": "Mars/Olympus"})


#: RFC 4231 section 4: test cases 1, 2 and 6 (key, data, HMAC-SHA-256, HMAC-SHA-512).
RFC_4231 = [
    ("0b" * 20, "hex", "Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    ("Jefe", "text", "what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    ("aa" * 131, "hex", "Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
     "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"),
]


@pytest.mark.parametrize("key, encoding, data, sha256, sha512", RFC_4231)
def test_hmac_matches_rfc_4231(ff, key, encoding, data, sha256, sha512):
    name = f"hmac-{sha256[:8]}"
    ff.credential(name, "hmac", {"key": key, "key_encoding": encoding})
    ff.install(hooked(name,
                      {"id": "s256", "type": "hmac", "credential": name,
                       "params": {"value": "{{ json.data }}", "field": "sha256", "expected": "{{ json.claimed }}"}},
                      {"id": "s512", "type": "hmac", "credential": name,
                       "params": {"algorithm": "sha512", "value": "{{ json.data }}", "field": "sha512"}},
                      {"id": "b64", "type": "hmac", "credential": name,
                       "params": {"value": "{{ json.data }}", "encoding": "base64", "field": "sha256_b64"}}))
    [out] = ff.ok(name, {"data": data, "claimed": f"sha256={sha256}"})
    assert out["sha256"] == sha256 and out["sha512"] == sha512 and out["valid"] is True
    assert base64.b64decode(out["sha256_b64"]).hex() == sha256
    [forged] = ff.ok(name, {"data": data + ".", "claimed": f"sha256={sha256}"})
    assert forged["valid"] is False
    shown = commands.show_execution(settings_for(ff.data), ff.hook(name, {"data": data, "claimed": ""}).headers[
        "x-flowfuse-execution"], None)
    assert key not in json.dumps(shown)  # the key never shows in what the run recorded


def test_hashes(ff):
    ff.install(hooked("hashes", *[
        {"id": algorithm, "type": "hash", "params": {"algorithm": algorithm, "value": "{{ json.v }}",
                                                     "field": algorithm}}
        for algorithm in ("md5", "sha1", "sha256", "sha512")],
        {"id": "b64", "type": "hash", "params": {"value": "{{ json.v }}", "encoding": "base64", "field": "b64"}}))
    [out] = ff.ok("hashes", {"v": "abc"})  # FIPS 180 and RFC 1321 test vectors
    assert out["md5"] == "900150983cd24fb0d6963f7d28e17f72"
    assert out["sha1"] == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert out["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert out["sha512"].startswith("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a")
    assert out["b64"] == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


def test_csv_json_and_xml_round_trips(ff):
    rows = [{"sku": "A-1", "name": 'Bolt, "hex"', "note": "line one\nline two"},
            {"sku": "B-\u00e9", "name": HOSTILE, "note": ""}]
    ff.install(hooked("csv", {"id": "build", "type": "csv.build", "params": {"columns": ["sku", "name", "note"]}},
                      {"id": "parse", "type": "csv.parse", "params": {"value": "{{ json.csv }}"}}))
    assert ff.ok("csv", rows) == rows
    ff.install(hooked("csv-text", {"id": "build", "type": "csv.build", "params": {"delimiter": ";"}}))
    [built] = ff.ok("csv-text", [{"a": "1", "b": "x;y"}])
    assert built == {"csv": 'a;b\r\n1;"x;y"\r\n', "rows": 1}

    doc = {"order": {"@id": "7", "@currency": "EUR", "customer": "Ann & <Bo>",
                     "line": [{"@sku": "A-1", "#text": "2"}, {"@sku": "B-2", "#text": "1"}],
                     "note": None, "address": {"street": '1 "Main" St', "city": "Z\u00fcrich"}}}
    ff.install(hooked("xml", {"id": "build", "type": "xml.build", "params": {"value": "{{ json.doc }}"}},
                      {"id": "parse", "type": "xml.parse", "params": {"value": "{{ json.xml }}"}}))
    [out] = ff.ok("xml", {"doc": doc})
    assert out["data"] == doc
    assert "Ann &amp; &lt;Bo&gt;" in out["xml"]

    value = {"n": 1.5, "list": [1, "two", None, True], "nested": {"\u00e9": HOSTILE}}
    ff.install(hooked("json", {"id": "build", "type": "json.build", "params": {"value": "{{ json.v }}",
                                                                             "sort_keys": True}},
                      {"id": "parse", "type": "json.parse", "params": {"value": "{{ json.json }}", "field": "back"}}))
    [out] = ff.ok("json", {"v": value})
    assert out["back"] == value and out["json"].startswith('{"list":')
    ff.install(hooked("json-bad", {"id": "parse", "type": "json.parse", "params": {"value": "{{ json.text }}"}}))
    assert ff.failure("json-bad", {"text": "{'single': quotes}"}).startswith("the text is not JSON")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<lolz>&lol9;</lolz>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""


def test_xml_bombs_and_external_entities_are_refused(ff):
    ff.install(hooked("xml-in", {"id": "parse", "type": "xml.parse", "params": {"value": "{{ json.xml }}"}}))
    for hostile in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        error = ff.failure("xml-in", {"xml": hostile})
        assert error.startswith("XML refused: it declares a DTD or entities")
        assert "root:" not in error
    assert ff.failure("xml-in", {"xml": "<a><b></a>"}).startswith("the XML is malformed")


def test_text_templates_render_in_the_sandbox(ff):
    ff.install(hooked("template", {"id": "text", "type": "template", "params": {
        "template": "Order {{ json.id }}:\n{% for line in json.lines %}- {{ line.sku }} x{{ line.qty }}\n{% endfor %}"
                    "{% if json.lines|length > 1 %}Total: {{ json.lines|sum(attribute='qty') }}{% endif %}"}}))
    [out] = ff.ok("template", {"id": 7, "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 3}]})
    assert out["text"] == "Order 7:\n- A-1 x2\n- B-2 x3\nTotal: 5"

    ff.install(hooked("template-html", {"id": "text", "type": "template", "params": {
        "template": "<p>{{ json.name }}</p>", "escape": "html", "field": "html"}}))
    assert ff.ok("template-html", {"name": "<script>x</script>"})[0]["html"] == "<p>&lt;script&gt;x&lt;/script&gt;</p>"

    ff.install(hooked("template-hostile", {"id": "text", "type": "template", "params": {
        "template": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"}}))
    assert "loops run more than 100000 steps" in ff.failure("template-hostile", {})
    ff.install(hooked("template-escape", {"id": "text", "type": "template", "params": {
        "template": "{{ json.__class__.__mro__ }}"}}))
    assert ff.failure("template-escape", {}).startswith("template not allowed: access to attribute '__class__'")

    path = ff.data.parent / "template-broken.json"
    path.write_text(json.dumps(hooked("template-broken", {"id": "text", "type": "template", "params": {
        "template": "{% for x in json.items %}no end"}})))
    result = ff.server.cli("flow", "import", str(path))
    assert result.returncode != 0 and "template syntax error on line 1" in result.stderr
