"""HTTPS from `[server] tls_cert`/`tls_key`: a real `flowfuse serve` (or `web`) with a self-signed certificate
made here, real TLS clients pinned to a version, HSTS only under TLS, https resume URLs, and clear errors
for a certificate that cannot be used."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.settings import SettingsError, load
from tests.api_helpers import ADMIN, PASSWORD, new_tenant
from tests.conftest import Server, flowfuse, free_port, poll


def make_cert(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def client_context(ca: Path, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that trusts `ca` and, with max_version, speaks no newer TLS than that."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_version is not None:
        context.maximum_version = max_version
    return context


class TlsServer(Server):
    """A Server whose URL is https, trusting the test's certificate."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def wait_ready(self, expect: int | None = 200, timeout: float = 30) -> None:
        context = client_context(Path(self.env["FLOWFUSE_SERVER_TLS_CERT"]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=1, verify=context)
                if expect is None or r.status_code == expect:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready over https after {timeout} s: {self.log.read_text()}")


def start_tls(tmp_path: Path, command: str, **env: str) -> tuple[TlsServer, Path]:
    cert, key = make_cert(tmp_path)
    data = tmp_path / "data"
    made = flowfuse("init", "--data-dir", str(data), "--admin-email", ADMIN, env={"FLOWFUSE_ADMIN_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    env = {"FLOWFUSE_SERVER_TLS_CERT": str(cert), "FLOWFUSE_SERVER_TLS_KEY": str(key), **env}
    return TlsServer(data, free_port(), env=env).start(command), cert


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version agreed with the server on `port` (raises ssl.SSLError when there is none)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


@pytest.fixture
def tls_serve(tmp_path):
    srv, cert = start_tls(tmp_path, "serve")
    yield srv, cert
    srv.stop()


def test_serve_answers_https_with_hsts_and_hands_out_https_resume_urls(tls_serve):
    srv, cert = tls_serve
    http = httpx.Client(base_url=srv.url + "/api/v1", verify=client_context(cert), timeout=15)
    r = http.post("/session", json={"email": ADMIN, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    http.headers["x-csrf-token"] = r.json()["csrf_token"]
    for path in ("/sign-in", "/static/css/console.css", "/healthz"):
        page = httpx.get(srv.url + path, verify=client_context(cert))
        assert page.status_code == 200 and page.headers["strict-transport-security"] == "max-age=31536000"

    # the worker (which has no port of its own) builds resume URLs with https, and they work
    t = new_tenant(http)
    flow = {"name": "approve", "nodes": [
        {"id": "start", "type": "manual"},
        {"id": "link", "type": "set", "params": {"fields": {"url": "{{ execution.resume_url }}"}}},
        {"id": "wait", "type": "wait", "params": {"resume": "webhook"}},
        {"id": "after", "type": "set", "params": {"fields": {"done": True}}}],
        "edges": [{"from": "start", "to": "link"}, {"from": "link", "to": "wait"}, {"from": "wait", "to": "after"}]}
    assert http.post(f"/tenants/{t}/flows", json=flow).status_code == 201, "flow not saved"
    execution_id = http.post(f"/tenants/{t}/flows/approve/run", json={}).json()["execution_id"]
    def shown() -> dict:
        r = http.get(f"/tenants/{t}/executions/{execution_id}")
        assert r.status_code == 200, r.text
        return r.json()

    poll(lambda: shown()["status"] == "waiting", what=lambda: f"execution waiting (it is {shown()['status']})")
    url = next(s for s in shown()["steps"] if s["node"] == "link")["items"][0]["url"]
    assert url.startswith(f"https://127.0.0.1:{srv.port}/hooks/{t}/_resume/{execution_id}/"), url
    resumed = httpx.post(url, json={"ok": True}, verify=client_context(cert))
    assert resumed.status_code < 300, resumed.text
    assert resumed.headers["strict-transport-security"] == "max-age=31536000"
    poll(lambda: shown()["status"] == "succeeded", what=lambda: f"execution succeeded (it is {shown()['status']})")

    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port is not served
        httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)


def test_tls_12_is_the_default_minimum_and_13_only_refuses_12(tmp_path):
    (tmp_path / "default").mkdir()
    default, cert = start_tls(tmp_path / "default", "web")
    try:
        assert handshake(default.port, client_context(cert, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
        assert handshake(default.port, client_context(cert)) == "TLSv1.3"
    finally:
        default.stop()
    (tmp_path / "strict").mkdir()
    strict, cert = start_tls(tmp_path / "strict", "web", FLOWFUSE_SERVER_TLS_MIN_VERSION="1.3")
    try:
        with pytest.raises(ssl.SSLError):
            handshake(strict.port, client_context(cert, ssl.TLSVersion.TLSv1_2))
        assert handshake(strict.port, client_context(cert)) == "TLSv1.3"
        r = httpx.get(strict.url + "/healthz", verify=client_context(cert))
        assert r.status_code == 200 and "strict-transport-security" in r.headers
    finally:
        strict.stop()


def test_settings_check_the_tls_keys(tmp_path):
    with pytest.raises(SettingsError, match=r'tls_min_version must be "1.2" or "1.3"'):
        load(env={"FLOWFUSE_CONFIG": "", "FLOWFUSE_SERVER_TLS_MIN_VERSION": "1.1"})
    with pytest.raises(SettingsError, match="server.tls_cert is set but server.tls_key is not"):
        load(env={"FLOWFUSE_CONFIG": "", "FLOWFUSE_SERVER_TLS_CERT": "/etc/flowfuse/cert.pem"})
    plain = load(env={"FLOWFUSE_CONFIG": "", "FLOWFUSE_SERVER_PORT": "8443"})
    assert plain.base_url == "http://127.0.0.1:8443"
    tls = load(env={"FLOWFUSE_CONFIG": "", "FLOWFUSE_SERVER_PORT": "8443", "FLOWFUSE_SERVER_TLS_CERT": "c.pem",
                    "FLOWFUSE_SERVER_TLS_KEY": "k.pem"})
    assert tls.base_url == "https://127.0.0.1:8443" and tls.server.tls_min_version == "1.2"


def test_a_certificate_that_cannot_be_used_stops_serve_with_a_clear_error(tmp_path):
    cert, key = make_cert(tmp_path, "one")
    _, other_key = make_cert(tmp_path, "two")
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    port = str(free_port())
    missing = flowfuse("serve", "--data-dir", str(data), "--port", port,
                       env={"FLOWFUSE_SERVER_TLS_CERT": str(tmp_path / "nope.crt"), "FLOWFUSE_SERVER_TLS_KEY": str(key)})
    assert missing.returncode != 0
    assert f"{tmp_path / 'nope.crt'} does not exist" in missing.stderr

    mismatched = flowfuse("serve", "--data-dir", str(data), "--port", port,
                          env={"FLOWFUSE_SERVER_TLS_CERT": str(cert), "FLOWFUSE_SERVER_TLS_KEY": str(other_key)})
    assert mismatched.returncode != 0
    assert "cannot be used" in mismatched.stderr and "matching the certificate" in mismatched.stderr
    secret = other_key.read_text().splitlines()[1]
    assert secret not in mismatched.stderr + mismatched.stdout  # the key itself is never printed
