"""`flowfuse backup` and `flowfuse restore`: an online snapshot of the data directory in one archive.

Every database (`*.db` at the top of the data directory) is copied with SQLite's online backup API
from a read transaction: a consistent snapshot of each file as of one commit, taken beside the
running writers (WAL lets them go on). The copies go into a tar archive with `manifest.json`.

Plugin connectors (`plugins/*.py`, code the administrator installed) go in beside them, so that a
restored instance runs the same flows.

The master key (`flowfuse.key`) goes into the archive only when a passphrase encrypts it: the tar
is then cut into 1 MiB chunks, each sealed with AES-256-GCM under a key derived from the passphrase
with scrypt (a random salt per archive). The nonce of a chunk is a random prefix and its number; the
associated data binds each chunk to the header, its number and whether it is the last, so chunks
cannot be reordered, dropped or the archive cut short without the restore noticing.

`restore` unpacks into an empty (or absent) data directory only, and checks every database.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"FLOWFUSE-BACKUP-1\n"
KEY_FILE = "flowfuse.key"
CHUNK = 1 << 20
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
PASSPHRASE_ENV = "FLOWFUSE_BACKUP_PASSPHRASE"


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says what to do."""


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> AESGCM:
    return AESGCM(Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode()))


def databases(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*.db") if p.is_file())


PLUGINS = "plugins"


def plugins(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / PLUGINS).glob("*.py") if p.is_file())


def snapshot(source: Path, target: Path) -> None:
    """A consistent copy of one SQLite file (WAL included) made with the online backup API."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # one step: the copy is the database as of one read transaction
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def create(data_dir: Path, out: Path, passphrase: str | None, version: str = "") -> dict[str, Any]:
    """Write the archive of `data_dir` to `out`; returns its manifest."""
    if not (data_dir / "flowfuse.db").exists():
        raise BackupError(f"{data_dir} is not an initialised data directory (no flowfuse.db)")
    key_path = data_dir / KEY_FILE
    include_key = bool(passphrase) and key_path.exists()
    manifest: dict[str, Any] = {"format": 1, "created_at": time.time(), "version": version,
                                "databases": {}, "plugins": [p.name for p in plugins(data_dir)],
                                "master_key": include_key, "encrypted": bool(passphrase)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=out.parent) as tmp:
        tmp_dir = Path(tmp)
        for db in databases(data_dir):
            copy = tmp_dir / db.name
            snapshot(db, copy)
            conn = sqlite3.connect(copy)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
            if check != "ok":
                raise BackupError(f"the snapshot of {db.name} fails its integrity check ({check}); run "
                                  "`flowfuse doctor` and repair the database before backing it up")
            manifest["databases"][db.name] = copy.stat().st_size
        plain = tmp_dir / "archive.tar"
        with tarfile.open(plain, "w") as tar:
            _tar_add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
            for name in manifest["databases"]:
                tar.add(tmp_dir / name, arcname=name)
            for name in manifest["plugins"]:
                _tar_add_bytes(tar, f"{PLUGINS}/{name}", (data_dir / PLUGINS / name).read_bytes(), 0o644)
            if include_key:
                _tar_add_bytes(tar, KEY_FILE, key_path.read_bytes())
        partial = out.with_name(out.name + ".partial")
        with open(partial, "wb") as sink:
            os.chmod(partial, 0o600)
            if passphrase:
                with open(plain, "rb") as source:
                    _encrypt(source, sink, passphrase)
            else:
                with open(plain, "rb") as source:
                    shutil.copyfileobj(source, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, out)
    if passphrase and not include_key and not os.environ.get("FLOWFUSE_MASTER_KEY"):
        manifest["warning"] = f"{KEY_FILE} was not found: keep the master key safe separately"
    elif not passphrase:
        manifest["warning"] = ("not encrypted, so the master key is not in it: keep flowfuse.key (or "
                               "FLOWFUSE_MASTER_KEY) safe separately, or back up with --passphrase")
    return manifest


def _encrypt(source: IO[bytes], sink: IO[bytes], passphrase: str) -> None:
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(8)
    header = MAGIC + struct.pack(">IBB", SCRYPT_N, SCRYPT_R, SCRYPT_P) + salt + prefix
    aead = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sink.write(header)
    index, chunk = 0, source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        last = not following
        sealed = aead.encrypt(prefix + struct.pack(">I", index), chunk, header + struct.pack(">I?", index, last))
        sink.write(struct.pack(">I", len(sealed)) + sealed)
        if last:
            return
        index, chunk = index + 1, following


def _decrypt(source: IO[bytes], passphrase: str) -> Iterator[bytes]:
    header = MAGIC + source.read(6 + 16 + 8)
    if len(header) != len(MAGIC) + 30:
        raise BackupError("the archive is cut short (its header is incomplete)")
    n, r, p = struct.unpack(">IBB", header[len(MAGIC):len(MAGIC) + 6])
    salt, prefix = header[len(MAGIC) + 6:len(MAGIC) + 22], header[len(MAGIC) + 22:]
    aead = _derive(passphrase, salt, n, r, p)
    index = 0
    while True:
        size = source.read(4)
        if len(size) != 4:
            raise BackupError("the archive is cut short: its last part is missing")
        sealed = source.read(struct.unpack(">I", size)[0])
        for last in (False, True):
            try:
                chunk = aead.decrypt(prefix + struct.pack(">I", index), sealed,
                                     header + struct.pack(">I?", index, last))
                break
            except InvalidTag:
                continue
        else:
            if index == 0:
                raise BackupError("wrong passphrase, or the archive was damaged")
            raise BackupError(f"the archive is damaged (part {index} does not authenticate)")
        yield chunk
        if last:
            return
        index += 1


def is_encrypted(archive: Path) -> bool:
    with open(archive, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _empty(data_dir: Path) -> bool:
    return not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir()))


def restore(archive: Path, data_dir: Path, passphrase: str | None) -> dict[str, Any]:
    """Unpack `archive` into `data_dir`, which must be empty or absent; returns the manifest."""
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    if not _empty(data_dir):
        raise BackupError(f"{data_dir} is not empty: restore only into an empty or new data directory (move "
                          "the current one aside first, and stop every flowfuse process that uses it)")
    encrypted = is_encrypted(archive)
    if encrypted and not passphrase:
        raise BackupError(f"the archive is encrypted: give --passphrase or set {PASSPHRASE_ENV}")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    placed: list[Path] = []
    try:
        plain = staging / "archive.tar"
        if encrypted:
            with open(archive, "rb") as source, open(plain, "wb") as sink:
                source.read(len(MAGIC))
                for chunk in _decrypt(source, passphrase or ""):
                    sink.write(chunk)
        else:
            plain = archive
        try:
            tar = tarfile.open(plain, "r:")
        except tarfile.TarError:
            raise BackupError(f"{archive} is not a flowfuse backup (neither an encrypted archive nor a tar)") from None
        with tar:
            names = tar.getnames()
            if "manifest.json" not in names:
                raise BackupError(f"{archive} is not a flowfuse backup (no manifest.json)")
            manifest = json.loads(tar.extractfile("manifest.json").read())
            files = [*manifest.get("databases", {})] + ([KEY_FILE] if manifest.get("master_key") else [])
            for plugin in manifest.get("plugins", []):
                if "/" in plugin or plugin.startswith(".") or not plugin.endswith(".py"):
                    raise BackupError(f"{archive} is damaged: plugin {plugin!r} is not a plain .py file name")
            if manifest.get("plugins"):
                (staging / PLUGINS).mkdir(mode=0o700)
            wanted = files + [f"{PLUGINS}/{plugin}" for plugin in manifest.get("plugins", [])]
            for name in wanted:
                if (name in files and ("/" in name or name.startswith("."))) or name not in names:
                    raise BackupError(f"{archive} is damaged: {name!r} is listed but missing or unsafe")
                member = tar.getmember(name)
                if not member.isfile():
                    raise BackupError(f"{archive} is damaged: {name!r} is not a file")
                target = staging / name
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    os.chmod(target, 0o600)
                    shutil.copyfileobj(src, dst)
        for name in manifest.get("databases", {}):
            conn = sqlite3.connect(staging / name)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
            if check != "ok":
                raise BackupError(f"{name} in the archive fails its integrity check ({check}); nothing was restored")
        if manifest.get("plugins"):
            (data_dir / PLUGINS).mkdir(mode=0o700, exist_ok=True)
        for name in wanted:
            os.replace(staging / name, data_dir / name)
            placed.append(data_dir / name)
    except BaseException:
        for path in placed:  # the directory was empty: leave it so
            path.unlink(missing_ok=True)
        shutil.rmtree(data_dir / PLUGINS, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
