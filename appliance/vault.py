"""The vault: credentials under envelope encryption (AES-256-GCM), and the key that signs resume URLs.

Keys, from the top:

- The master key: 32 bytes from FLOWFUSE_MASTER_KEY (hex) or `flowfuse.key` (hex, mode 0600),
  which only `flowfuse init` creates, and only when neither exists. It encrypts no credential:
  it wraps the keys below, so rotating it re-wraps a few keys instead of every credential.
- A data key per tenant (`tenant_keys`), made on first use, wrapped with associated data that
  names the tenant: a wrapped key copied to another tenant does not unwrap.
- The signing key (`vault_meta`, row `signing_key`), random, wrapped like a data key. Unwrapping
  it is the key check: `check` stops start-up, changing nothing, when the master key is missing
  or is not the one of this data directory. Rotation re-wraps it rather than replacing it, so
  resume URLs handed out before a rotation stay valid.

A credential is encrypted under its tenant's data key with associated data naming the tenant and
the credential's id: a ciphertext copied to another tenant or record does not decrypt, and a
rename needs no re-encryption. Credentials are write-only: only `get` returns values, for the
engine to hand a node its credential; `describe` and `list` say which fields are set, never what.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.nodes import Credential, Registry

from .db import Database, file_lock

log = logging.getLogger("flowfuse.vault")
ENV_KEY = "FLOWFUSE_MASTER_KEY"
SIGNING_AD = b"flowfuse-signing-key"
CHECK_SQL = "SELECT value FROM vault_meta WHERE name='signing_key'"


class CredentialError(ValueError):
    """A credential or key that cannot be used; the message says why and what to do."""


def _parse_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CredentialError(f"{source} must hold 64 hex digits (32 bytes)")
    return key


def _write_key(path: Path, key: bytes) -> None:
    """Write a key file (mode 0600) durably; fails if it exists, so no key is ever overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    """Make a file's creation or rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(key: bytes, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, ad)


def _unseal_meta(key: bytes, value: bytes) -> bytes:
    """The signing key from its `vault_meta` value (nonce + ciphertext); raises InvalidTag if `key` is wrong."""
    return AESGCM(key).decrypt(value[:12], value[12:], SIGNING_AD)


def _opens(key: bytes, check: bytes) -> bool:
    try:
        _unseal_meta(key, check)
    except InvalidTag:
        return False
    return True


def _tenant_ad(tenant_id: str) -> bytes:
    return b"flowfuse-tenant-key\0" + tenant_id.encode()


def _credential_ad(tenant_id: str, credential_id: str) -> bytes:
    return f"flowfuse-credential\0{tenant_id}\0{credential_id}".encode()


def _legacy_ad(tenant_id: str, name: str) -> bytes:
    """What bound a credential of the old format (under the master key itself) to its tenant and name."""
    return f"flowfuse-credential\0{tenant_id}\0{name}".encode()


class Vault:
    def __init__(self, db: Database, key_path: Path, registry: Registry):
        self.db = db
        self.key_path = key_path
        self.new_key_path = key_path.with_name(key_path.name + ".new")
        self.registry = registry
        self._lock_path = key_path.with_name(key_path.name + ".lock")
        self._master: bytes | None = None
        self._signing: bytes | None = None
        self._data_keys: dict[str, AESGCM] = {}

    @property
    def key_from_environment(self) -> bool:
        return bool(os.environ.get(ENV_KEY))

    # -- start-up ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Stop start-up, changing nothing, unless the master key opens this data directory.

        Finishes a rotation that crashed after its commit (flowfuse.key.new opens the directory
        and flowfuse.key does not). On the first start after the upgrade to envelope encryption it
        records the key check value and converts the credentials of the old format.
        """
        if self.db.one("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vault_meta'") is None:
            raise CredentialError(f"{self.db.path} lacks migration 0003_vault_envelope: run "
                                  f"`flowfuse init --data-dir {self.db.path.parent}` to apply it")
        if self._nothing_encrypted() and self._configured_key() is None:
            return  # a data directory that `flowfuse init` is making: there is no key to check yet
        self._signing_key()
        self._convert_legacy()

    def initialise(self) -> None:
        """For `flowfuse init`: create flowfuse.key if no master key is configured and nothing is
        encrypted yet, and record the key check value."""
        if self._nothing_encrypted() and self._configured_key() is None:
            _write_key(self.key_path, secrets.token_bytes(32))
        self._signing_key()

    def _nothing_encrypted(self) -> bool:
        return self.db.one(CHECK_SQL) is None and not self._legacy_rows()

    def _configured_key(self) -> bytes | None:
        env = os.environ.get(ENV_KEY)
        if env:
            return _parse_key(env, ENV_KEY)
        try:
            return _parse_key(self.key_path.read_text(), str(self.key_path))
        except FileNotFoundError:
            return None

    def _master_key(self) -> bytes:
        """The master key, proven against the key check value; read again when another process
        has rotated it since this one read it."""
        row = self.db.one(CHECK_SQL)
        if self._master is None or row is None or not _opens(self._master, row["value"]):
            self._master = self._open_master()
        return self._master

    def _open_master(self) -> bytes:
        key = self._configured_key()
        row = self.db.one(CHECK_SQL)
        if row is None:
            return self._adopt(key)
        if key is not None and _opens(key, row["value"]):
            return key
        if not self.key_from_environment and self.new_key_path.exists():
            finished = self._finish_rotation()
            if finished is not None:
                return finished
        if key is None:
            raise self._missing_key()
        source = ENV_KEY if self.key_from_environment else str(self.key_path)
        raise CredentialError(f"the master key does not match this data directory (from {source}): use the key it "
                              "was created or last rotated with; nothing was changed")

    def _missing_key(self) -> CredentialError:
        return CredentialError(f"{self.key_path.name} is missing: restore it from your backup or set {ENV_KEY}; "
                               "nothing was changed")

    def _adopt(self, key: bytes | None) -> bytes:
        """Record the check value of `key` in a data directory that has none (new, or made before
        envelope encryption, where the key must decrypt the credentials of the old format)."""
        if key is None:
            raise self._missing_key()
        legacy = self._legacy_rows()
        if legacy and not any(self._legacy_plaintext(key, row) is not None for row in legacy):
            raise CredentialError("the master key does not match this data directory: it decrypts none of its "
                                  "credentials; nothing was changed")
        nonce, wrapped = _seal(key, secrets.token_bytes(32), SIGNING_AD)
        self.db.execute("INSERT OR IGNORE INTO vault_meta (name, value) VALUES ('signing_key', ?)", (nonce + wrapped,))
        if not _opens(key, self.db.one(CHECK_SQL)["value"]):  # another process recorded another key first
            raise CredentialError("the master key does not match this data directory; nothing was changed")
        return key

    def _finish_rotation(self) -> bytes | None:
        """Move flowfuse.key.new over flowfuse.key if it is the key the database was rotated to."""
        with file_lock(self._lock_path):
            check = self.db.one(CHECK_SQL)["value"]
            key = self._configured_key()
            if key is not None and _opens(key, check):
                return key  # another process finished it meanwhile
            if not self.new_key_path.exists():
                return None
            new = _parse_key(self.new_key_path.read_text(), str(self.new_key_path))
            if not _opens(new, check):
                return None
            os.replace(self.new_key_path, self.key_path)
            _sync_dir(self.key_path.parent)
        log.warning("finished an interrupted master key rotation: %s now holds the new key", self.key_path)
        return new

    def _signing_key(self) -> bytes:
        if self._signing is None:
            master = self._master_key()
            self._signing = _unseal_meta(master, self.db.one(CHECK_SQL)["value"])
        return self._signing

    # -- data keys --------------------------------------------------------------------------------------------
    def _data_key(self, tenant_id: str) -> AESGCM:
        """The tenant's data key, made on first use in a transaction of its own (a write may run
        twice under group commit, so a key must not be cached before its commit)."""
        aead = self._data_keys.get(tenant_id)
        if aead is None:
            master = self._master_key()
            row = self.db.one("SELECT nonce, wrapped FROM tenant_keys WHERE tenant_id=?", (tenant_id,)) or \
                self.db.write(lambda conn: self._create_data_key(conn, tenant_id, master))
            try:
                aead = AESGCM(AESGCM(master).decrypt(row["nonce"], row["wrapped"], _tenant_ad(tenant_id)))
            except InvalidTag:
                raise CredentialError(f"the data key of tenant {tenant_id} does not unwrap with the master key: "
                                      "it was altered or copied from another tenant") from None
            self._data_keys[tenant_id] = aead
        return aead

    @staticmethod
    def _create_data_key(conn: sqlite3.Connection, tenant_id: str, master: bytes) -> sqlite3.Row:
        if not _opens(master, conn.execute(CHECK_SQL).fetchone()["value"]):
            raise CredentialError("the master key was rotated while this process made a data key; try again")
        nonce, wrapped = _seal(master, secrets.token_bytes(32), _tenant_ad(tenant_id))
        conn.execute("INSERT OR IGNORE INTO tenant_keys (tenant_id, nonce, wrapped, created_at) VALUES (?,?,?,?)",
                     (tenant_id, nonce, wrapped, time.time()))
        return conn.execute("SELECT nonce, wrapped FROM tenant_keys WHERE tenant_id=?", (tenant_id,)).fetchone()

    # -- credentials -------------------------------------------------------------------------------------------
    def _validate(self, type_: str, data: Any) -> None:
        spec = self.registry.credential_type(type_)
        if spec is None:
            raise CredentialError(f"unknown credential type {type_!r}; types: "
                                  f"{', '.join(self.registry.credential_type_names())}")
        if not isinstance(data, dict):
            raise CredentialError("credential data must be an object of fields")
        problems = spec.problems(data)
        if problems:
            raise CredentialError("; ".join(problems))

    @staticmethod
    def _encrypt(aead: AESGCM, tenant_id: str, credential_id: str, type_: str,
                 fields: dict[str, Any]) -> tuple[bytes, bytes]:
        plaintext = json.dumps({"type": type_, "fields": fields}).encode()
        nonce = secrets.token_bytes(12)
        return nonce, aead.encrypt(nonce, plaintext, _credential_ad(tenant_id, credential_id))

    def _decrypt(self, tenant_id: str, row: sqlite3.Row) -> dict[str, Any]:
        """{"type", "fields"} of a stored credential (the type inside the ciphertext is the one that counts)."""
        try:
            plaintext = self._data_key(tenant_id).decrypt(row["nonce"], row["ciphertext"],
                                                          _credential_ad(tenant_id, row["id"]))
        except InvalidTag:
            raise CredentialError(f"credential {row['name']!r} does not decrypt: its ciphertext was altered or "
                                  "copied from another record; set it again") from None
        return json.loads(plaintext)

    def put(self, tenant_id: str, name: str, type_: str, data: dict[str, Any]) -> str:
        """Create the credential `name`, or replace its type and fields; returns its id."""
        self._validate(type_, data)
        if not isinstance(name, str) or not name.strip():
            raise CredentialError("a credential needs a name")
        aead = self._data_key(tenant_id)

        def write(conn: sqlite3.Connection) -> str:
            found = conn.execute("SELECT id FROM credentials WHERE tenant_id=? AND name=?",
                                 (tenant_id, name)).fetchone()
            credential_id = found["id"] if found else "c_" + secrets.token_hex(8)
            nonce, ciphertext = self._encrypt(aead, tenant_id, credential_id, type_, data)
            now = time.time()
            conn.execute("INSERT INTO credentials (id, tenant_id, name, type, nonce, ciphertext, created_at, "
                         "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (tenant_id, name) DO UPDATE SET "
                         "type=excluded.type, nonce=excluded.nonce, ciphertext=excluded.ciphertext, "
                         "updated_at=excluded.updated_at",
                         (credential_id, tenant_id, name, type_, nonce, ciphertext, now, now))
            return credential_id
        return self.db.write(write)

    def update(self, tenant_id: str, credential_id: str, *, name: str | None = None,
               data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rename a credential and/or change some of its fields, keeping the others (a field given
        as None is removed), so that a secret can stay as it is without being shown. Returns its metadata."""
        row = self._row(tenant_id, credential_id)
        stored = self._decrypt(tenant_id, row)
        fields = {k: v for k, v in {**stored["fields"], **(data or {})}.items() if v is not None}
        self._validate(stored["type"], fields)
        new_name = row["name"] if name is None else name
        if not isinstance(new_name, str) or not new_name.strip():
            raise CredentialError("a credential needs a name")
        nonce, ciphertext = self._encrypt(self._data_key(tenant_id), tenant_id, credential_id, stored["type"], fields)

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("UPDATE credentials SET name=?, nonce=?, ciphertext=?, updated_at=? "
                             "WHERE tenant_id=? AND id=?", (new_name, nonce, ciphertext, time.time(), tenant_id,
                                                            credential_id))
            except sqlite3.IntegrityError:
                raise CredentialError(f"a credential named {new_name!r} already exists") from None
        self.db.write(write)
        return self.describe(tenant_id, credential_id)

    def get(self, tenant_id: str, name: str) -> Credential:
        """The decrypted credential, for the engine to hand a node; LookupError (the engine's
        Services port) naming it when it does not exist or cannot be used."""
        row = self.db.one("SELECT id, name, nonce, ciphertext FROM credentials WHERE tenant_id=? AND name=?",
                          (tenant_id, name))
        if row is None:
            raise LookupError(f"credential {name!r} does not exist; add it with `flowfuse credentials set {name}`")
        try:
            stored = self._decrypt(tenant_id, row)
        except CredentialError as exc:
            raise LookupError(str(exc)) from None
        spec = self.registry.credential_type(stored["type"])
        if spec is None:
            raise LookupError(f"credential {name!r} is of type {stored['type']!r}, which no installed connector "
                              "provides")
        return Credential(spec, stored["fields"])

    def _row(self, tenant_id: str, credential_id: str) -> sqlite3.Row:
        row = self.db.one("SELECT * FROM credentials WHERE tenant_id=? AND id=?", (tenant_id, credential_id))
        if row is None:
            raise LookupError(f"no credential with id {credential_id!r} in this tenant")
        return row

    def _metadata(self, tenant_id: str, row: sqlite3.Row) -> dict[str, Any]:
        """What may be shown of a credential: never a value, only the names of the fields that are set."""
        found: dict[str, Any] = {"id": row["id"], "name": row["name"], "type": row["type"], "fields": None,
                                 "error": None, "created_at": row["created_at"], "updated_at": row["updated_at"]}
        try:
            found["fields"] = sorted(k for k, v in self._decrypt(tenant_id, row)["fields"].items() if v)
        except CredentialError as exc:
            found["error"] = str(exc)
        return found

    def describe(self, tenant_id: str, credential_id: str) -> dict[str, Any]:
        return self._metadata(tenant_id, self._row(tenant_id, credential_id))

    def list(self, tenant_id: str) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM credentials WHERE tenant_id=? ORDER BY name", (tenant_id,))
        return [self._metadata(tenant_id, row) for row in rows]

    def delete(self, tenant_id: str, credential_id: str) -> bool:
        return self.db.execute("DELETE FROM credentials WHERE tenant_id=? AND id=?", (tenant_id, credential_id)) > 0

    # -- the old format ----------------------------------------------------------------------------------------
    def _legacy_rows(self) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM credentials_legacy ORDER BY tenant_id, name")

    @staticmethod
    def _legacy_plaintext(master: bytes, row: sqlite3.Row) -> dict[str, Any] | None:
        try:
            return json.loads(AESGCM(master).decrypt(row["nonce"], row["ciphertext"],
                                                     _legacy_ad(row["tenant_id"], row["name"])))
        except InvalidTag:
            return None

    def _convert_legacy(self) -> None:
        """Re-encrypt the credentials of the old format under their tenant's data key, one
        transaction each (insert the new row, delete the old), so a crash loses none."""
        rows = self._legacy_rows()
        if not rows:
            return
        master = self._master_key()
        for row in rows:
            stored = self._legacy_plaintext(master, row)
            if stored is None:
                log.warning("credential %r of tenant %s (old format) does not decrypt with the master key; it stays "
                            "in credentials_legacy", row["name"], row["tenant_id"])
                continue
            type_ = stored.pop("type", row["type"])
            credential_id = "c_" + secrets.token_hex(8)
            nonce, ciphertext = self._encrypt(self._data_key(row["tenant_id"]), row["tenant_id"], credential_id, type_,
                                              stored)

            def move(conn: sqlite3.Connection, row=row, credential_id=credential_id, type_=type_, nonce=nonce,
                     ciphertext=ciphertext) -> None:
                conn.execute("INSERT INTO credentials (id, tenant_id, name, type, nonce, ciphertext, created_at, "
                             "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (tenant_id, name) DO NOTHING",
                             (credential_id, row["tenant_id"], row["name"], type_, nonce, ciphertext,
                              row["created_at"], row["updated_at"]))
                conn.execute("DELETE FROM credentials_legacy WHERE tenant_id=? AND name=?",
                             (row["tenant_id"], row["name"]))
            self.db.write(move)
            log.info("credential %r of tenant %s moved to envelope encryption", row["name"], row["tenant_id"])

    # -- signing and rotation ----------------------------------------------------------------------------------
    def sign(self, purpose: str, value: str) -> str:
        """An unguessable token for `value` (e.g. an execution's resume URL), made with the signing
        key, which is not the master key and outlives its rotation."""
        digest = hmac.new(self._signing_key(), f"flowfuse-{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def seal(self, purpose: str, owner: str, plaintext: bytes) -> bytes:
        """Encrypt a small instance-level secret (a person's TOTP seed), bound to its purpose and
        owner. The key derives from the signing key, so sealed values outlive master key rotation."""
        nonce = secrets.token_bytes(12)
        return nonce + self._seal_key(purpose).encrypt(nonce, plaintext, f"{purpose}\0{owner}".encode())

    def unseal(self, purpose: str, owner: str, blob: bytes) -> bytes:
        try:
            return self._seal_key(purpose).decrypt(blob[:12], blob[12:], f"{purpose}\0{owner}".encode())
        except InvalidTag:
            raise CredentialError(f"the stored {purpose} secret does not decrypt (altered or copied)") from None

    def _seal_key(self, purpose: str) -> AESGCM:
        return AESGCM(hmac.new(self._signing_key(), f"flowfuse-seal\0{purpose}".encode(), hashlib.sha256).digest())

    def rotate_master_key(self, new_key: bytes | None = None) -> int:
        """Re-wrap every tenant data key and the signing key under a new master key; returns the
        number of tenant data keys re-wrapped.

        Safe against a crash at any point: the new key goes to flowfuse.key.new (0600, fsync),
        one transaction re-wraps every key and replaces the key check value, then flowfuse.key.new
        is renamed over flowfuse.key. A crash before the commit leaves the old key in force (the
        next rotation replaces the stale .new file); a crash after it leaves .new, which `check`
        moves into place at the next start. With FLOWFUSE_MASTER_KEY no file is written: the
        caller passes `new_key` after showing it to the operator, because nothing else keeps it.
        """
        from_env = self.key_from_environment
        if from_env and new_key is None:
            raise CredentialError(f"the master key comes from {ENV_KEY}: pass the new key, shown to the operator "
                                  "first, since no file will keep it")
        new = new_key or secrets.token_bytes(32)
        self._master_key()  # a missing or wrong key stops here with the message start-up gives
        with file_lock(self._lock_path):  # one rotation at a time, and no start-up finishing one meanwhile
            old = self._configured_key()
            if old is None or not _opens(old, self.db.one(CHECK_SQL)["value"]):
                raise CredentialError("the master key changed while rotating it; run `flowfuse keys rotate` again")
            if not from_env:
                self.new_key_path.unlink(missing_ok=True)  # left by a rotation that stopped before its commit
                _write_key(self.new_key_path, new)
            count = self.db.write(lambda conn: self._rewrap(conn, old, new))
            if not from_env:
                os.replace(self.new_key_path, self.key_path)
                _sync_dir(self.key_path.parent)
            self._master = new
        log.info("master key rotated: %d tenant data keys re-wrapped", count)
        return count

    @staticmethod
    def _rewrap(conn: sqlite3.Connection, old: bytes, new: bytes) -> int:
        rows = conn.execute("SELECT tenant_id, nonce, wrapped FROM tenant_keys").fetchall()
        now = time.time()
        for row in rows:
            ad = _tenant_ad(row["tenant_id"])
            try:
                key = AESGCM(old).decrypt(row["nonce"], row["wrapped"], ad)
            except InvalidTag:
                raise CredentialError(f"the data key of tenant {row['tenant_id']} does not unwrap with the master key "
                                      "(altered or copied from another tenant); nothing was changed") from None
            nonce, wrapped = _seal(new, key, ad)
            conn.execute("UPDATE tenant_keys SET nonce=?, wrapped=?, rotated_at=? WHERE tenant_id=?",
                         (nonce, wrapped, now, row["tenant_id"]))
        nonce, wrapped = _seal(new, _unseal_meta(old, conn.execute(CHECK_SQL).fetchone()["value"]), SIGNING_AD)
        conn.execute("UPDATE vault_meta SET value=? WHERE name='signing_key'", (nonce + wrapped,))
        return len(rows)
