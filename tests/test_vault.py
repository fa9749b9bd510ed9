"""The vault: envelope encryption over real data directories, real SQLite and the real CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import stat

import pytest
import sqlite_utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance import schema
from appliance.commands import opened
from appliance.runtime import Runtime, init_data_dir
from appliance.settings import load
from appliance.vault import CredentialError, Vault, _write_key
from conftest import flowfuse
from connectors import default_registry
from engine.executor import redact, redact_text
from engine.nodes import Credential

WRONG_KEY = "ab" * 32


def sql(settings, statement: str, params=()) -> list[sqlite3.Row]:
    """Change flowfuse.db behind the vault's back, as someone with the file would."""
    conn = sqlite3.connect(settings.data_dir / "flowfuse.db")
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def key_file(settings):
    return settings.data_dir / "flowfuse.key"


def two_tenants(rt) -> tuple[str, str]:
    return rt.tenant_id("default"), rt.catalog.ensure_tenant("other")


# -- storing and reading ----------------------------------------------------------------------------------------
def test_round_trip_and_replace_by_name(settings):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        cid = rt.vault.put(tid, "site", "basic", {"username": "ada", "password": "pw-1234"})
        got = rt.vault.get(tid, "site")
        assert got == {"type": "basic", "username": "ada", "password": "pw-1234"}
        assert isinstance(got, Credential) and got.spec.name == "basic"
        assert rt.vault.put(tid, "site", "bearer", {"token": "tok-5678"}) == cid  # replaced, same id
        assert rt.vault.get(tid, "site") == {"type": "bearer", "token": "tok-5678"}
        assert rt.vault.delete(tid, cid) is True
        assert rt.vault.delete(tid, cid) is False
        with pytest.raises(LookupError, match="credential 'site' does not exist; add it with `flowfuse credentials"):
            rt.vault.get(tid, "site")
    ciphertexts = sql(settings, "SELECT ciphertext FROM credentials")
    assert all(b"tok-5678" not in row["ciphertext"] for row in ciphertexts)


def test_metadata_names_the_fields_that_are_set_and_never_their_values(settings):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        cid = rt.vault.put(tid, "key", "header", {"name": "X-Api-Key", "value": "v-SECRET-1"})
        rt.vault.put(tid, "gen", "generic", {"a": "SECRET-2", "b": "SECRET-3"})
        listed = rt.vault.list(tid)
        described = rt.vault.describe(tid, cid)
    assert [(c["name"], c["type"], c["fields"]) for c in listed] == [("gen", "generic", ["a", "b"]),
                                                                      ("key", "header", ["name", "value"])]
    assert described == listed[1]
    assert set(described) == {"id", "name", "type", "fields", "error", "created_at", "updated_at"}
    assert "SECRET" not in json.dumps(listed) and "X-Api-Key" not in json.dumps(listed)


def test_update_renames_without_re_encrypting_and_keeps_the_fields_not_given(settings):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        cid = rt.vault.put(tid, "site", "basic", {"username": "ada", "password": "pw-1234"})
        rt.vault.put(tid, "taken", "bearer", {"token": "tok-0000"})
        before = sql(settings, "SELECT ciphertext FROM credentials WHERE id=?", (cid,))[0]["ciphertext"]
        assert rt.vault.update(tid, cid, name="site-2")["name"] == "site-2"
        assert rt.vault.get(tid, "site-2")["password"] == "pw-1234"
        assert rt.vault.update(tid, cid, data={"username": "bob"})["fields"] == ["password", "username"]
        assert rt.vault.get(tid, "site-2") == {"type": "basic", "username": "bob", "password": "pw-1234"}
        assert sql(settings, "SELECT ciphertext FROM credentials WHERE id=?", (cid,))[0]["ciphertext"] != before
        with pytest.raises(CredentialError, match="a credential named 'taken' already exists"):
            rt.vault.update(tid, cid, name="taken")
        with pytest.raises(CredentialError, match="field 'password' is required"):
            rt.vault.update(tid, cid, data={"password": None})
        with pytest.raises(LookupError, match="no credential with id 'c_nope'"):
            rt.vault.describe(tid, "c_nope")


def test_data_is_checked_against_the_type_registered_by_connectors(settings):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        cases = [
            ("nope", {"token": "x"}, "unknown credential type 'nope'; types: " + ", ".join(rt.registry.credential_type_names())),
            ("bearer", {}, "field 'token' is required for a bearer credential"),
            ("bearer", {"token": ""}, "field 'token' is required for a bearer credential"),
            ("bearer", {"token": "t", "extra": "x"}, "a bearer credential has no field 'extra' (its fields: token)"),
            ("basic", {"username": "ada", "password": 1234}, "field 'password' must be a string, got an integer"),
            ("generic", {"a": ["x"]}, "field 'a' must be a string, got a list"),
            ("generic", {"type": "x"}, "'type' cannot be a field: it is the credential's type"),
        ]
        for type_, data, message in cases:
            with pytest.raises(CredentialError) as caught:
                rt.vault.put(tid, "c", type_, data)
            assert str(caught.value) == message
        assert rt.vault.list(tid) == []


def test_the_cli_sets_a_credential_and_reports_validation_in_one_line(settings):
    def cli(*args, **kw):
        return flowfuse(*args, "--data-dir", str(settings.data_dir), **kw)

    saved = cli("credentials", "set", "hdr", "--type", "header", "--data", '{"name": "X-Key", "value": "v-1"}')
    assert saved.returncode == 0, saved.stderr
    wrong = cli("credentials", "set", "x", "--type", "header", "--data", '{"name": "X-Key"}')
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "Error: field 'value' is required for a header credential"


# -- binding: tenant, record, data key ------------------------------------------------------------------------
def test_a_ciphertext_copied_to_another_tenant_or_record_does_not_decrypt(settings):
    with opened(settings) as rt:
        a, b = two_tenants(rt)
        rt.vault.put(a, "api", "bearer", {"token": "tok-of-a"})
        rt.vault.put(b, "api", "bearer", {"token": "tok-of-b"})
        rt.vault.put(a, "other", "bearer", {"token": "tok-other"})
    copy = ("UPDATE credentials SET nonce=(SELECT nonce FROM credentials WHERE tenant_id=? AND name='api'), "
            "ciphertext=(SELECT ciphertext FROM credentials WHERE tenant_id=? AND name='api') "
            "WHERE tenant_id=? AND name=?")
    sql(settings, copy, (a, a, b, "api"))  # a's secret into b's row
    sql(settings, copy, (a, a, a, "other"))  # a's 'api' into a's 'other': same tenant, another id
    with opened(settings) as rt:
        for tenant, name in ((b, "api"), (a, "other")):
            with pytest.raises(LookupError, match=f"credential '{name}' does not decrypt: its ciphertext was "
                                                  "altered or copied from another record"):
                rt.vault.get(tenant, name)
        assert rt.vault.get(a, "api")["token"] == "tok-of-a"
        [listed] = [c for c in rt.vault.list(b) if c["name"] == "api"]
        assert listed["fields"] is None and "does not decrypt" in listed["error"]

        # a node that names it fails with that message; the run is not crashed
        flow = {"name": "call", "nodes": [
            {"id": "start", "type": "manual"},
            {"id": "req", "type": "http_request", "credential": "api", "params": {"url": "http://127.0.0.1:9/x"}},
        ], "edges": [{"from": "start", "to": "req"}]}
        row = rt.catalog.save_flow(b, flow)
        _, outcome = asyncio.run(rt.run_inline(row, "manual", [{}]))
    assert outcome.status == "failed"
    assert outcome.error["node"] == "req" and "does not decrypt" in outcome.error["message"]


def test_a_data_key_copied_to_another_tenant_does_not_unwrap(settings):
    with opened(settings) as rt:
        a, b = two_tenants(rt)
        rt.vault.put(a, "api", "bearer", {"token": "tok-of-a"})
        rt.vault.put(b, "api", "bearer", {"token": "tok-of-b"})
    sql(settings, "UPDATE tenant_keys SET nonce=(SELECT nonce FROM tenant_keys WHERE tenant_id=?), "
                  "wrapped=(SELECT wrapped FROM tenant_keys WHERE tenant_id=?) WHERE tenant_id=?", (a, a, b))
    with opened(settings) as rt:
        with pytest.raises(LookupError, match=f"the data key of tenant {b} does not unwrap with the master key"):
            rt.vault.get(b, "api")
        assert rt.vault.get(a, "api")["token"] == "tok-of-a"


# -- the master key ------------------------------------------------------------------------------------------
def test_init_records_a_key_check_value_and_a_0600_key_file(settings):
    assert stat.S_IMODE(key_file(settings).stat().st_mode) == 0o600
    [row] = sql(settings, "SELECT name, length(value) AS n FROM vault_meta")
    assert (row["name"], row["n"]) == ("signing_key", 12 + 32 + 16)


def test_a_wrong_master_key_stops_start_up_and_changes_nothing(settings):
    before = key_file(settings).read_bytes()
    meta = sql(settings, "SELECT value FROM vault_meta")
    result = flowfuse("flow", "list", "--data-dir", str(settings.data_dir), env={"FLOWFUSE_MASTER_KEY": WRONG_KEY})
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: the master key does not match this data directory (from "
                                     "FLOWFUSE_MASTER_KEY): use the key it was created or last rotated with; "
                                     "nothing was changed")
    assert key_file(settings).read_bytes() == before
    assert sql(settings, "SELECT value FROM vault_meta") == meta
    result = flowfuse("init", "--data-dir", str(settings.data_dir), env={"FLOWFUSE_MASTER_KEY": WRONG_KEY})
    assert result.returncode == 1 and "does not match" in result.stderr


def test_a_missing_key_file_stops_start_up_and_none_is_made(settings):
    key_file(settings).unlink()
    for command in (("flow", "list"), ("init",), ("worker",)):
        result = flowfuse(*command, "--data-dir", str(settings.data_dir))
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.strip().endswith("Error: flowfuse.key is missing: restore it from your backup or set "
                                              "FLOWFUSE_MASTER_KEY; nothing was changed"), result.stderr
    assert not key_file(settings).exists()
    assert not (settings.data_dir / "flowfuse.key.new").exists()


def test_the_environment_key_is_checked_too(settings, monkeypatch):
    key = key_file(settings).read_text().strip()
    key_file(settings).unlink()
    monkeypatch.setenv("FLOWFUSE_MASTER_KEY", key)
    with opened(settings) as rt:
        rt.vault.put(rt.tenant_id("default"), "api", "bearer", {"token": "tok-env"})
    monkeypatch.setenv("FLOWFUSE_MASTER_KEY", "12")
    with pytest.raises(CredentialError, match="FLOWFUSE_MASTER_KEY must hold 64 hex digits"):
        Runtime(settings)


# -- rotation -------------------------------------------------------------------------------------------------------
def test_rotation_through_the_cli_re_wraps_the_data_keys(settings):
    with opened(settings) as rt:
        a, b = two_tenants(rt)
        rt.vault.put(a, "api", "bearer", {"token": "tok-of-a"})
        rt.vault.put(b, "site", "basic", {"username": "ada", "password": "pw-of-b"})
        signature = rt.vault.sign("resume", "exec-1")
    old_key = key_file(settings).read_text().strip()
    wrapped = sql(settings, "SELECT tenant_id, wrapped FROM tenant_keys ORDER BY tenant_id")
    ciphertexts = sql(settings, "SELECT id, ciphertext FROM credentials ORDER BY id")

    result = flowfuse("keys", "rotate", "--data-dir", str(settings.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"master key rotated: 2 tenant data keys re-wrapped; {key_file(settings)} "
                                     "holds the new key: back it up")

    assert key_file(settings).read_text().strip() != old_key
    assert stat.S_IMODE(key_file(settings).stat().st_mode) == 0o600
    assert not (settings.data_dir / "flowfuse.key.new").exists()
    rewrapped = sql(settings, "SELECT tenant_id, wrapped, rotated_at FROM tenant_keys ORDER BY tenant_id")
    assert all(new["wrapped"] != old["wrapped"] and new["rotated_at"] for new, old in zip(rewrapped, wrapped))
    assert sql(settings, "SELECT id, ciphertext FROM credentials ORDER BY id") == ciphertexts  # not re-encrypted
    with opened(settings) as rt:
        assert rt.vault.get(a, "api")["token"] == "tok-of-a"
        assert rt.vault.get(b, "site")["password"] == "pw-of-b"
        assert rt.vault.sign("resume", "exec-1") == signature  # resume URLs handed out stay valid

    stale = flowfuse("flow", "list", "--data-dir", str(settings.data_dir), env={"FLOWFUSE_MASTER_KEY": old_key})
    assert stale.returncode == 1 and "the master key does not match this data directory" in stale.stderr


def test_rotation_with_the_key_in_the_environment_prints_the_new_key_and_writes_no_file(settings, monkeypatch):
    old_key = key_file(settings).read_text().strip()
    key_file(settings).unlink()
    env = {"FLOWFUSE_MASTER_KEY": old_key}
    with_env = flowfuse("credentials", "set", "api", "--type", "bearer", "--data", '{"token": "tok-1"}',
                        "--data-dir", str(settings.data_dir), env=env)
    assert with_env.returncode == 0, with_env.stderr

    result = flowfuse("keys", "rotate", "--data-dir", str(settings.data_dir), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("new master key: ")
    new_key = lines[0].removeprefix("new master key: ")
    assert len(bytes.fromhex(new_key)) == 32
    assert lines[-1] == ("master key rotated: 1 tenant data keys re-wrapped; set FLOWFUSE_MASTER_KEY to the new "
                         "key and restart every process")
    assert not key_file(settings).exists() and not (settings.data_dir / "flowfuse.key.new").exists()

    assert flowfuse("flow", "list", "--data-dir", str(settings.data_dir), env=env).returncode == 1
    monkeypatch.setenv("FLOWFUSE_MASTER_KEY", new_key)
    with opened(settings) as rt:
        assert rt.vault.get(rt.tenant_id("default"), "api")["token"] == "tok-1"


def test_start_up_finishes_a_rotation_that_crashed_after_its_commit(settings, caplog):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        rt.vault.put(tid, "api", "bearer", {"token": "tok-1"})
        vault = rt.vault
        old = bytes.fromhex(key_file(settings).read_text())
        new = secrets.token_bytes(32)
        # rotate_master_key's steps, stopped before the rename
        _write_key(vault.new_key_path, new)
        rt.control.write(lambda conn: Vault._rewrap(conn, old, new))

    with caplog.at_level(logging.WARNING, logger="flowfuse.vault"), opened(settings) as rt:
        assert rt.vault.get(tid, "api")["token"] == "tok-1"
    assert "finished an interrupted master key rotation" in caplog.text
    assert key_file(settings).read_text().strip() == new.hex()
    assert stat.S_IMODE(key_file(settings).stat().st_mode) == 0o600
    assert not (settings.data_dir / "flowfuse.key.new").exists()


def test_a_rotation_that_crashed_before_its_commit_leaves_the_old_key_in_force(settings):
    with opened(settings) as rt:
        tid = rt.tenant_id("default")
        rt.vault.put(tid, "api", "bearer", {"token": "tok-1"})
        _write_key(rt.vault.new_key_path, secrets.token_bytes(32))  # .new written, nothing committed
    old = key_file(settings).read_text()
    with opened(settings) as rt:
        assert rt.vault.get(tid, "api")["token"] == "tok-1"
    assert key_file(settings).read_text() == old
    result = flowfuse("keys", "rotate", "--data-dir", str(settings.data_dir))  # replaces the stale .new
    assert result.returncode == 0, result.stderr
    with opened(settings) as rt:
        assert rt.vault.get(tid, "api")["token"] == "tok-1"


def test_a_running_process_follows_a_rotation_made_by_another(settings):
    with opened(settings) as running:
        a = running.tenant_id("default")
        running.vault.put(a, "api", "bearer", {"token": "tok-of-a"})
        signature = running.vault.sign("resume", "exec-1")
        assert flowfuse("keys", "rotate", "--data-dir", str(settings.data_dir)).returncode == 0
        assert running.vault.get(a, "api")["token"] == "tok-of-a"
        assert running.vault.sign("resume", "exec-1") == signature
        b = running.catalog.ensure_tenant("other")
        running.vault.put(b, "api", "bearer", {"token": "tok-of-b"})  # a new data key, wrapped by the new key
    with opened(settings) as rt:
        assert rt.vault.get(b, "api")["token"] == "tok-of-b"


# -- the old format -------------------------------------------------------------------------------------------
def test_credentials_of_the_old_format_are_converted_at_the_first_start(settings):
    data = settings.data_dir.parent / "old"
    data.mkdir()
    db = sqlite_utils.Database(data / "flowfuse.db")
    schema.control.apply(db, stop_before="0003_vault_envelope")
    key = secrets.token_bytes(32)
    (data / "flowfuse.key").write_text(key.hex() + "\n")
    (data / "flowfuse.key").chmod(0o600)
    db.execute("INSERT INTO tenants (id, slug, name, created_at) VALUES ('t_old', 'default', 'Default', 1)")
    for name, fields in (("api", {"type": "bearer", "token": "tok-old"}),
                         ("site", {"type": "basic", "username": "ada", "password": "pw-old"})):
        nonce = secrets.token_bytes(12)
        blob = AESGCM(key).encrypt(nonce, json.dumps(fields).encode(), f"flowfuse-credential\0t_old\0{name}".encode())
        db.execute("INSERT INTO credentials VALUES (?,?,?,?,?,?,?)", ("t_old", name, fields["type"], nonce, blob, 1, 2))
    db.conn.commit()
    db.close()
    old = load(env={"FLOWFUSE_CONFIG": ""}, overrides={"storage.data_dir": str(data)})

    unmigrated = flowfuse("flow", "list", "--data-dir", str(data))
    assert unmigrated.returncode == 1 and "lacks migration 0003_vault_envelope: run `flowfuse init" in unmigrated.stderr
    wrong = flowfuse("init", "--data-dir", str(data), env={"FLOWFUSE_MASTER_KEY": WRONG_KEY})
    assert wrong.returncode == 1
    assert "the master key does not match this data directory: it decrypts none of its credentials" in wrong.stderr
    assert sql(old, "SELECT count(*) AS n FROM credentials_legacy")[0]["n"] == 2
    assert sql(old, "SELECT count(*) AS n FROM vault_meta")[0]["n"] == 0

    init_data_dir(old)  # applies 0003, then the vault converts with the right key
    with opened(old) as rt:
        assert rt.vault.get("t_old", "api") == {"type": "bearer", "token": "tok-old"}
        assert rt.vault.get("t_old", "site") == {"type": "basic", "username": "ada", "password": "pw-old"}
        assert [(c["name"], c["created_at"], c["updated_at"]) for c in rt.vault.list("t_old")] == \
            [("api", 1, 2), ("site", 1, 2)]
    assert sql(old, "SELECT count(*) AS n FROM credentials_legacy")[0]["n"] == 0
    assert sql(old, "SELECT count(*) AS n FROM tenant_keys")[0]["n"] == 1


# -- redaction by the type's secret fields ------------------------------------------------------------------------
def test_the_engine_redacts_the_secret_fields_the_type_declares():
    registry = default_registry()
    header = Credential(registry.credential_type("header"), {"name": "X-Api-Key", "value": "v-0123"})
    assert redact(b'{"h": "X-Api-Key", "v": "v-0123"}', header) == b'{"h": "X-Api-Key", "v": "[redacted]"}'
    basic = Credential(registry.credential_type("basic"), {"username": "alice", "password": "pw-0123"})
    assert redact_text("alice Basic YWxpY2U6cHctMDEyMw== pw-0123", basic) == "alice Basic [redacted] [redacted]"
    generic = Credential(registry.credential_type("generic"), {"user": "bob-1", "key": "k-99"})
    assert redact_text("bob-1 k-99", generic) == "[redacted] [redacted]"
    assert redact_text("bob-1 k-99 bearer", {"type": "bearer", "user": "bob-1", "key": "k-99"}) == \
        "[redacted] [redacted] bearer"  # a mapping of no registered type: every value is secret
