"""Real servers on loopback for the connector tests: PostgreSQL, MariaDB and Mosquitto from Debian
(`make services` installs them; nothing is started system-wide), an IMAP4rev1 server written here,
and aiosmtpd for SMTP with STARTTLS or TLS on a certificate made for 127.0.0.1.

Each fixture starts its own throwaway instance in a temporary directory on a free port and removes
it afterwards. PostgreSQL and MariaDB refuse to run as root, so when the tests run as root their
data directories belong to the `postgres` and `mysql` users the Debian packages create.
"""

from __future__ import annotations

import datetime as dt
import glob
import ipaddress
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.conftest import free_port

USER, PASSWORD, DATABASE = "flowfuse", "db-pass-7f3a", "flowfuse_test"


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s: {log.read_text(errors='replace')[-2000:]}")


def _run(args: list[str], what: str) -> None:
    """Run a set-up command; fail with its output, which says why (a missing package, a port in use)."""
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")


def _owned_tmpdir(user: str | None, prefix: str) -> Path:
    """A temporary directory (under /tmp, which every user can reach) owned by `user` when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if user:
        shutil.chown(path, user, user)
    return path


def _as(user: str | None, args: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if user else args


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- PostgreSQL --------------------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run `make services` (Debian package postgresql)")
    return path


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server with password auth on 127.0.0.1: yields the fields of a `postgres` credential."""
    user = "postgres" if os.geteuid() == 0 else None
    root = _owned_tmpdir(user, "ff-pg-")
    (root / "pw").write_text(PASSWORD)
    if user:
        shutil.chown(root / "pw", user, user)
    port = free_port()
    try:
        _run(_as(user, [_pg_bin("initdb"), "-D", str(root / "data"), "-U", USER, "--pwfile", str(root / "pw"),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]), "initdb")
        log = root / "server.log"
        proc = subprocess.Popen(_as(user, [_pg_bin("postgres"), "-D", str(root / "data"), "-p", str(port),
                                           "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                           "-c", "full_page_writes=off"]),
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            _wait_port(port, proc, "postgres", log)
            _run(_as(user, [_pg_bin("createdb"), "-h", str(root), "-p", str(port), "-U", USER, DATABASE]), "createdb")
            yield {"host": "127.0.0.1", "port": str(port), "database": DATABASE, "user": USER, "password": PASSWORD}
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pg_connect(fields: dict):
    import psycopg

    return psycopg.connect(host=fields["host"], port=int(fields["port"]), dbname=fields["database"],
                           user=fields["user"], password=fields["password"], autocommit=True)


# -- MariaDB -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb():
    """A MariaDB server on 127.0.0.1 with a password user: yields the fields of a `mysql` credential."""
    for tool in ("mariadb-install-db", "mariadbd", "mariadb"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            raise RuntimeError(f"MariaDB's {tool} is not installed: run `make services` (Debian package mariadb-server)")
    user = "mysql" if os.geteuid() == 0 else None
    root = _owned_tmpdir(user, "ff-maria-")
    port, sock = free_port(), root / "mysqld.sock"
    server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    try:
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={root / 'data'}", "--skip-test-db",
              "--auth-root-authentication-method=normal", *([f"--user={user}"] if user else [])], "mariadb-install-db")
        log = root / "server.log"
        proc = subprocess.Popen([server, "--no-defaults", f"--datadir={root / 'data'}", f"--socket={sock}",
                                 f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={root / 'pid'}",
                                 "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
                                 "--skip-name-resolve", f"--log-error={log}", *([f"--user={user}"] if user else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            log.touch()
            _wait_port(port, proc, "mariadbd", log)
            setup = (f"CREATE DATABASE {DATABASE}; CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; "
                     f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';")
            _run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", setup], "creating the MariaDB user")
            yield {"host": "127.0.0.1", "port": str(port), "database": DATABASE, "user": USER, "password": PASSWORD,
                   "ssl": "disabled"}
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mysql_connect(fields: dict):
    import pymysql

    return pymysql.connect(host=fields["host"], port=int(fields["port"]), database=fields["database"],
                           user=fields["user"], password=fields["password"], autocommit=True, ssl_disabled=True)


# -- Mosquitto ---------------------------------------------------------------------------------------------------


class Broker:
    """A mosquitto process with a password file; `restart()` keeps the port."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None

    def start(self) -> Broker:
        log = self.root / "mosquitto.log"
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.root / "mosquitto.conf")],
                                     stdout=log.open("a"), stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "mosquitto", log)
        return self

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc)


@pytest.fixture(scope="session")
def mosquitto():
    """A Mosquitto broker on 127.0.0.1 that requires a user name and password: yields (fields of an
    `mqtt` credential, the Broker)."""
    if not shutil.which("mosquitto"):
        raise RuntimeError("mosquitto is not installed: run `make services` (Debian package mosquitto)")
    root = Path(tempfile.mkdtemp(prefix="ff-mqtt-", dir="/tmp"))
    os.chmod(root, 0o755)
    port = free_port()
    try:
        _run(["mosquitto_passwd", "-b", "-c", str(root / "passwd"), USER, PASSWORD], "mosquitto_passwd")
        os.chmod(root / "passwd", 0o644)
        run_as = "user mosquitto\n" if os.geteuid() == 0 else ""
        (root / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                             f"password_file {root / 'passwd'}\npersistence false\n{run_as}")
        broker = Broker(root, port).start()
        try:
            yield {"host": "127.0.0.1", "port": str(port), "user": USER, "password": PASSWORD}, broker
        finally:
            broker.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- a certificate for 127.0.0.1 ---------------------------------------------------------------------------------


def self_signed() -> tuple[str, str]:
    """(certificate PEM, key PEM) of a self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FlowFuse test server")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    folder = Path(tempfile.mkdtemp(prefix="ff-cert-"))
    try:
        (folder / "cert.pem").write_text(cert_pem)
        (folder / "key.pem").write_text(key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        return context
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def certificate():
    """(certificate PEM, key PEM) shared by the TLS servers of a session."""
    return self_signed()


# -- SMTP (aiosmtpd) ---------------------------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that keeps what it received, with the login and whether TLS was on."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler name
        self.received.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "message": message_from_bytes(envelope.content, policy=policy.default),
                              "tls": server.transport.get_extra_info("ssl_object") is not None,
                              "login": session.authenticated and session.auth_data.login.decode()})
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult

    ok = auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture(scope="session")
def smtp_servers(certificate):
    """Two aiosmtpd servers that require a login: one with STARTTLS (required), one with TLS from
    the first byte. Yields {"starttls": (port, Mailbox), "tls": (port, Mailbox)}."""
    from aiosmtpd.controller import Controller

    context = server_context(*certificate)
    boxes = {"starttls": Mailbox(), "tls": Mailbox()}
    starttls = Controller(boxes["starttls"], hostname="127.0.0.1", port=free_port(), tls_context=context,
                          require_starttls=True, authenticator=_authenticator, auth_required=True)
    implicit = Controller(boxes["tls"], hostname="127.0.0.1", port=free_port(), ssl_context=context,
                          authenticator=_authenticator, auth_required=True, auth_require_tls=False)
    starttls.start()
    implicit.start()
    try:
        yield {"starttls": (starttls.port, boxes["starttls"]), "tls": (implicit.port, boxes["tls"])}
    finally:
        starttls.stop()
        implicit.stop()


# -- IMAP --------------------------------------------------------------------------------------------------------


class ImapServer:
    """A small IMAP4rev1 server: CAPABILITY, LOGIN, SELECT/EXAMINE, UID SEARCH, UID FETCH (RFC822),
    NOOP and LOGOUT over one mailbox, INBOX. Enough for a client that watches a mailbox."""

    def __init__(self, user: str = USER, password: str = PASSWORD):
        self.user, self.password = user, password
        self.messages: list[tuple[int, bytes]] = []
        self.uidvalidity, self.next_uid = 1700000001, 1
        self.logins: list[tuple[str, bool]] = []
        self.lock = threading.Lock()
        imap = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                imap._session(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.allow_reuse_address = True
        self.server.server_bind()
        self.server.server_activate()
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def deliver(self, raw: bytes) -> int:
        with self.lock:
            uid = self.next_uid
            self.next_uid += 1
            self.messages.append((uid, raw))
            return uid

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the protocol ------------------------------------------------------------------------------------------

    def _session(self, rfile, wfile) -> None:
        def send(line: str | bytes) -> None:
            wfile.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")

        send("* OK IMAP4rev1 test server ready")
        authenticated = selected = False
        while True:
            raw = rfile.readline()
            if not raw:
                return
            words = _words(raw.decode(errors="replace").rstrip("\r\n"))
            if len(words) < 2:
                send("* BAD missing tag or command")
                continue
            tag, command, args = words[0], words[1].upper(), words[2:]
            if command == "CAPABILITY":
                send("* CAPABILITY IMAP4rev1 AUTH=PLAIN")
                send(f"{tag} OK CAPABILITY completed")
            elif command == "NOOP":
                send(f"{tag} OK NOOP completed")
            elif command == "LOGOUT":
                send("* BYE logging out")
                send(f"{tag} OK LOGOUT completed")
                return
            elif command == "LOGIN" and len(args) == 2:
                authenticated = args[0] == self.user and args[1] == self.password
                self.logins.append((args[0], authenticated))
                send(f"{tag} OK LOGIN completed" if authenticated else f"{tag} NO [AUTHENTICATIONFAILED] wrong login")
            elif not authenticated:
                send(f"{tag} BAD sign in first")
            elif command in ("SELECT", "EXAMINE") and args:
                if args[0].upper() != "INBOX":
                    send(f"{tag} NO no such mailbox")
                    continue
                selected = True
                with self.lock:
                    count, uidnext = len(self.messages), self.next_uid
                send(f"* {count} EXISTS")
                send("* 0 RECENT")
                send("* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
                send(f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid")
                send(f"* OK [UIDNEXT {uidnext}] predicted next UID")
                mode = "READ-ONLY" if command == "EXAMINE" else "READ-WRITE"
                send(f"{tag} OK [{mode}] {command} completed")
            elif not selected:
                send(f"{tag} BAD select a mailbox first")
            elif command == "UID" and len(args) >= 2 and args[0].upper() == "SEARCH":
                criteria = [a.upper() for a in args[1:]]
                with self.lock:
                    uids = [uid for uid, _ in self.messages]
                if criteria[:1] == ["UID"] and len(criteria) == 2:
                    wanted = _uid_set(criteria[1], max(uids, default=0))
                    uids = [u for u in uids if u in wanted]
                elif criteria != ["ALL"]:
                    send(f"{tag} BAD only ALL and UID <set> are supported")
                    continue
                send("* SEARCH" + "".join(f" {u}" for u in uids))
                send(f"{tag} OK SEARCH completed")
            elif command == "UID" and len(args) >= 3 and args[0].upper() == "FETCH":
                with self.lock:
                    messages = list(self.messages)
                wanted = _uid_set(args[1], max((u for u, _ in messages), default=0))
                for seq, (uid, body) in enumerate(messages, start=1):
                    if uid in wanted:
                        send(f"* {seq} FETCH (UID {uid} RFC822 {{{len(body)}}}".encode() + b"\r\n" + body + b")\r\n")
                send(f"{tag} OK FETCH completed")
            else:
                send(f"{tag} BAD command not supported here")


def _words(line: str) -> list[str]:
    return [quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted is not None and atom == "" else atom
            for quoted, atom in re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', line)]


def _uid_set(text: str, highest: int) -> set[int]:
    found: set[int] = set()
    for part in text.split(","):
        ends = [highest if p == "*" else int(p) for p in part.split(":")]
        low, high = min(ends), max(ends)
        found.update(range(low, high + 1))
    return found


@pytest.fixture
def imap_server():
    server = ImapServer()
    yield server
    server.close()
