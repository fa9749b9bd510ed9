"""Credentials, encrypted with AES-256-GCM under the master key in `flowfuse.key` (mode 0600).

The associated data binds each ciphertext to its tenant and name, so a row copied to another
tenant or renamed does not decrypt. Credentials are write-only: nothing here returns them except
`get`, which the engine calls to hand a node its credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .db import Database

CREDENTIAL_TYPES = {"basic": ("username", "password"), "bearer": ("token",), "header": ("name", "value"),
                    "generic": ()}


class CredentialError(ValueError):
    pass


def load_or_create_key(path: Path) -> bytes:
    env = os.environ.get("FLOWFUSE_MASTER_KEY")
    if env:
        key = bytes.fromhex(env)
        if len(key) != 32:
            raise CredentialError("FLOWFUSE_MASTER_KEY must be 64 hex digits (32 bytes)")
        return key
    if path.exists():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) != 32:
            raise CredentialError(f"{path} must hold 64 hex digits (32 bytes)")
        return key
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return key


class Vault:
    def __init__(self, db: Database, key_path: Path):
        self.db = db
        self.key_path = key_path
        self._aead: AESGCM | None = None
        self._key: bytes | None = None

    @property
    def aead(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self.aead_key)
        return self._aead

    def sign(self, purpose: str, value: str) -> str:
        """An unguessable token for `value` (e.g. an execution's resume URL), derived from the master key."""
        digest = hmac.new(self.aead_key, f"flowfuse-{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    @property
    def aead_key(self) -> bytes:
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        return self._key

    def put(self, tenant_id: str, name: str, type_: str, data: dict[str, Any]) -> None:
        if type_ not in CREDENTIAL_TYPES:
            raise CredentialError(f"unknown credential type {type_!r}; types: {', '.join(CREDENTIAL_TYPES)}")
        missing = [f for f in CREDENTIAL_TYPES[type_] if not isinstance(data.get(f), str) or not data.get(f)]
        if missing:
            raise CredentialError(f"a {type_} credential needs the fields {', '.join(missing)}")
        nonce = secrets.token_bytes(12)
        blob = self.aead.encrypt(nonce, json.dumps({**data, "type": type_}).encode(), _aad(tenant_id, name))

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("INSERT INTO credentials VALUES (?,?,?,?,?,?,?) ON CONFLICT (tenant_id, name) DO UPDATE "
                         "SET type=excluded.type, nonce=excluded.nonce, ciphertext=excluded.ciphertext, "
                         "updated_at=excluded.updated_at", (tenant_id, name, type_, nonce, blob, now, now))
        self.db.write(write)

    def get(self, tenant_id: str, name: str) -> dict[str, Any]:
        row = self.db.one("SELECT nonce, ciphertext FROM credentials WHERE tenant_id=? AND name=?", (tenant_id, name))
        if row is None:
            raise LookupError(f"credential {name!r} does not exist; add it with `flowfuse credentials set {name}`")
        return json.loads(self.aead.decrypt(row["nonce"], row["ciphertext"], _aad(tenant_id, name)))

    def names(self, tenant_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT name, type, created_at, updated_at FROM credentials WHERE tenant_id=? ORDER BY name", (tenant_id,))]

    def delete(self, tenant_id: str, name: str) -> bool:
        return self.db.execute("DELETE FROM credentials WHERE tenant_id=? AND name=?", (tenant_id, name)) > 0


def _aad(tenant_id: str, name: str) -> bytes:
    return f"flowfuse-credential\0{tenant_id}\0{name}".encode()
