"""`flowfuse doctor` on real data directories: one line per check, a fix for each problem, exit 1 on FAIL."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import flowfuse


def _init(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    os.chmod(data, 0o700)  # as packaging/install.sh makes it (`flowfuse init` leaves it to the umask)
    return data


def _doctor(data, *extra: str, env=None):
    return flowfuse("doctor", "--data-dir", str(data), *extra, env=env)


def _lines(out: str) -> dict[str, str]:
    """check name -> its level, from doctor's output."""
    found = {}
    for line in out.splitlines():
        if line[:4].strip() in ("OK", "WARN", "FAIL"):
            level, _, rest = line.partition("  ")
            found[rest.strip().split(":", 1)[0]] = level.strip()
    return found


def test_a_fresh_data_directory_passes_and_a_missing_worker_is_a_warning(tmp_path):
    data = _init(tmp_path)
    done = _doctor(data)
    assert done.returncode == 0, done.stdout + done.stderr
    levels = _lines(done.stdout)
    assert levels["permissions"] == levels["key file"] == levels["master key"] == "OK"
    assert levels["integrity flowfuse.db"] == levels["integrity runs.db"] == levels["integrity audit.db"] == "OK"
    assert levels["audit chain"] == levels["clock"] == levels["free disk"] == "OK"
    assert levels["worker"] == "WARN" and "fix: start it: `flowfuse serve`" in done.stdout
    assert "tls certificate" not in levels  # no [server] tls_cert: not checked


def test_problems_fail_with_a_fix_each(tmp_path):
    data = _init(tmp_path)
    os.chmod(data, 0o755)
    os.chmod(data / "flowfuse.key", 0o644)
    with sqlite3.connect(data / "runs.db") as conn:  # an execution from the future: the clock went back
        conn.execute("INSERT INTO executions (id, tenant_id, flow_name, status, trigger, input, created_at, "
                     "updated_at) VALUES ('x', 't', 'f', 'succeeded', 'manual', '[]', ?, ?)",
                     (time.time() + 3600, time.time() + 3600))
    done = _doctor(data, "--min-free-mb", str(10**9))
    assert done.returncode == 1
    levels = _lines(done.stdout)
    assert levels["permissions"] == levels["key file"] == levels["clock"] == "FAIL"
    assert levels["free disk"] == "WARN"
    assert f"fix: chmod 700 {data}" in done.stdout and f"fix: chmod 600 {data / 'flowfuse.key'}" in done.stdout
    assert "NTP" in done.stdout

    (data / "flowfuse.key").write_text("00" * 32)  # not the key this directory was made with
    wrong = _doctor(data)
    assert _lines(wrong.stdout)["master key"] == "FAIL" and "restore flowfuse.key" in wrong.stdout
    assert wrong.returncode == 1


def test_damaged_audit_log_and_database_fail(tmp_path):
    data = _init(tmp_path)
    made = flowfuse("keys", "rotate", "--data-dir", str(data))  # writes an audit entry
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(data / "audit.db") as conn:
        conn.execute("UPDATE entries SET action='tampered' WHERE seq=(SELECT min(seq) FROM entries)")
    done = _doctor(data)
    assert done.returncode == 1 and _lines(done.stdout)["audit chain"] == "FAIL"

    with open(data / "runs.db", "r+b") as f:  # overwrite pages in the middle of the file
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096 * 3)
    broken = _doctor(data)
    assert broken.returncode == 1 and _lines(broken.stdout)["integrity runs.db"] == "FAIL"
    assert "restore runs.db from the latest backup" in broken.stdout


def _certificate(path, days: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowfuse.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


def test_tls_certificate_expiry(tmp_path):
    data = _init(tmp_path)
    for days, level in ((365, "OK"), (5, "WARN"), (-1, "FAIL")):
        cert = tmp_path / f"cert{days}.pem"
        _certificate(cert, days)
        env = {"FLOWFUSE_SERVER_TLS_CERT": str(cert), "FLOWFUSE_SERVER_TLS_KEY": str(cert.with_suffix(".key"))}
        done = _doctor(data, env=env)
        assert _lines(done.stdout)["tls certificate"] == level, done.stdout + done.stderr
        assert done.returncode == (1 if level == "FAIL" else 0)
