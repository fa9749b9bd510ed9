"""People and keys: users, tenant memberships and roles, sessions, API keys, and the permission table.

One table (`PERMISSIONS`) says what each tenant role may do, and one guard (`Identity.authorize`)
applies it; the REST API and the console pages both go through that guard. A principal that has
no access to a tenant at all gets NotFound for everything in it (so tenant B's existence and
contents are not revealed to a member of tenant A); one that belongs to the tenant but lacks the
permission gets Forbidden.

Secrets are stored only as SHA-256 hashes: session ids, API keys, invitation and reset tokens.
These are 256-bit random values, so a fast hash is enough; passwords use argon2id (passwords.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from .catalog import Conflict, NotFound
from .db import Database

#: Tenant roles, lowest first: each has every permission of the roles before it.
ROLES = ("viewer", "operator", "editor", "admin", "owner")
_RANK = {role: i for i, role in enumerate(ROLES)}

#: The permission table: permission -> the lowest tenant role that has it. Instance admins have all.
PERMISSIONS: dict[str, str] = {
    "tenant.read": "viewer",
    "flows.read": "viewer",
    "executions.read": "viewer",
    "credentials.read": "viewer",  # names, types and which fields are set; never values
    "variables.read": "viewer",
    "members.read": "viewer",
    "flows.run": "operator",
    "executions.cancel": "operator",
    "flows.write": "editor",
    "credentials.write": "editor",
    "variables.write": "editor",
    "api_keys.manage": "admin",
    "members.manage": "admin",  # admins cannot grant or change `owner`: see set_role
    "audit.read": "admin",
    "tenant.settings": "owner",
}

#: Instance-level actions, allowed to instance admins only.
ADMIN_ONLY = ("tenants.create", "tenants.suspend", "tenants.delete", "users.manage")

SESSION_COOKIE = "ff_session"
KEY_PREFIX = "ffk_"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Unauthorized(Exception):
    """No valid credentials (401)."""


class Forbidden(Exception):
    """Known principal, missing permission (403)."""


class Invalid(ValueError):
    """Bad input, naming the field: Invalid(field, message)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def role_at_least(role: str | None, needed: str) -> bool:
    return role is not None and _RANK[role] >= _RANK[needed]


def roles_with(permission: str) -> list[str]:
    """The roles that have a permission (for the docs and the console)."""
    lowest = PERMISSIONS[permission]
    return [r for r in ROLES if _RANK[r] >= _RANK[lowest]]


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a signed-in user or an API key."""

    kind: str  # "user" | "api_key"
    id: str
    label: str  # email or key name: what the audit log shows
    is_admin: bool = False
    #: For an API key: its one tenant and role.
    tenant_id: str | None = None
    role: str | None = None
    #: For a session: its CSRF token (unsafe requests made with the cookie must echo it).
    csrf: str | None = None


@dataclass(frozen=True)
class Access:
    """What the guard found: the tenant and the principal's role in it."""

    tenant: dict[str, Any]
    role: str

    @property
    def tenant_id(self) -> str:
        return self.tenant["id"]


class Identity:
    """Users, memberships, sessions and API keys in flowfuse.db."""

    def __init__(self, db: Database, session_ttl_s: float = 14 * 86400, key_touch_s: float = 60.0):
        self.db = db
        self.session_ttl_s = session_ttl_s
        self.key_touch_s = key_touch_s
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- tenants ------------------------------------------------------------------------------------------
    def tenant(self, ref: str) -> dict[str, Any]:
        row = self.db.one("SELECT * FROM tenants WHERE slug=? OR id=?", (ref, ref))
        if row is None:
            raise NotFound(f"no tenant {ref!r}")
        return dict(row)

    def tenants_of(self, principal: Principal) -> list[dict[str, Any]]:
        if principal.is_admin:
            return [dict(r) for r in self.db.query("SELECT * FROM tenants ORDER BY slug")]
        if principal.kind == "api_key":
            return [dict(r) for r in self.db.query("SELECT * FROM tenants WHERE id=?", (principal.tenant_id,))]
        return [dict(r) | {"role": r["role"]} for r in self.db.query(
            "SELECT t.*, m.role FROM tenants t JOIN memberships m ON m.tenant_id=t.id WHERE m.user_id=? "
            "ORDER BY t.slug", (principal.id,))]

    def create_tenant(self, slug: str, name: str | None = None) -> dict[str, Any]:
        if not _SLUG.match(slug or ""):
            raise Invalid("slug", "use 3-40 lowercase letters, digits and dashes, starting and ending with a "
                                  "letter or digit")
        tid = "t_" + secrets.token_hex(6)

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM tenants WHERE slug=?", (slug,)).fetchone():
                raise Conflict(f"a tenant with the slug {slug!r} exists")
            conn.execute("INSERT INTO tenants (id, slug, name, created_at) VALUES (?,?,?,?)",
                         (tid, slug, name or slug, time.time()))
        self.db.write(write)
        return self.tenant(tid)

    def update_tenant(self, tenant_id: str, *, name: str | None = None, status: str | None = None) -> dict[str, Any]:
        if status is not None and status not in ("active", "suspended"):
            raise Invalid("status", "must be 'active' or 'suspended'")
        if name is not None and not name.strip():
            raise Invalid("name", "must not be empty")
        self.db.execute("UPDATE tenants SET name=coalesce(?, name), status=coalesce(?, status) WHERE id=?",
                        (name, status, tenant_id))
        return self.tenant(tenant_id)

    # -- users ---------------------------------------------------------------------------------------------
    def create_user(self, email: str, password: str | None, *, name: str = "", is_admin: bool = False) -> dict:
        from .passwords import hash_password, password_problems

        email = (email or "").strip()
        if not _EMAIL.match(email):
            raise Invalid("email", "is not an email address")
        if password is not None:
            problems = password_problems(password, email)
            if problems:
                raise Invalid("password", "; ".join(problems))
        uid = "u_" + secrets.token_hex(8)
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE email=?", (email,)).fetchone():
                raise Conflict(f"a user with the email {email!r} exists")
            conn.execute("INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at) "
                         "VALUES (?,?,?,?,?,?,?)",
                         (uid, email, name, hash_password(password) if password else None, int(is_admin), now, now))
        self.db.write(write)
        return self.user(uid)

    def user(self, user_id: str) -> dict[str, Any]:
        row = self.db.one("SELECT id, email, name, is_admin, status, mfa_enabled, created_at FROM users WHERE id=?",
                          (user_id,))
        if row is None:
            raise NotFound(f"no user {user_id!r}")
        return dict(row)

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT id FROM users WHERE email=?", (email.strip(),))
        return self.user(row["id"]) if row else None

    def any_user(self) -> bool:
        return self.db.one("SELECT 1 FROM users LIMIT 1") is not None

    def check_password(self, email: str, password: str) -> dict[str, Any] | None:
        """The active user with this email and password, or None (same answer for unknown emails)."""
        from .passwords import hash_password, needs_rehash, verify_password

        row = self.db.one("SELECT id, password_hash, status FROM users WHERE email=?", ((email or "").strip(),))
        if row is None or not row["password_hash"]:
            verify_password(_DUMMY_HASH(), password or "")  # same time as a real check: no user enumeration
            return None
        if not verify_password(row["password_hash"], password or "") or row["status"] != "active":
            return None
        if needs_rehash(row["password_hash"]):
            self.db.execute("UPDATE users SET password_hash=? WHERE id=?", (hash_password(password), row["id"]))
        return self.user(row["id"])

    # -- memberships ---------------------------------------------------------------------------------------
    def role_in(self, principal: Principal, tenant_id: str) -> str | None:
        if principal.is_admin:
            return "owner"
        if principal.kind == "api_key":
            return principal.role if principal.tenant_id == tenant_id else None
        row = self.db.one("SELECT role FROM memberships WHERE tenant_id=? AND user_id=?", (tenant_id, principal.id))
        return row["role"] if row else None

    def members(self, tenant_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT u.id, u.email, u.name, m.role, m.created_at FROM memberships m JOIN users u ON u.id=m.user_id "
            "WHERE m.tenant_id=? ORDER BY u.email", (tenant_id,))]

    def set_role(self, access: Access, user_id: str, role: str) -> dict[str, Any]:
        """Add a member or change a member's role. Only owners grant or change `owner`; the last
        owner cannot be demoted."""
        if role not in ROLES:
            raise Invalid("role", f"must be one of {', '.join(ROLES)}")
        self.user(user_id)
        tid = access.tenant_id

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT role FROM memberships WHERE tenant_id=? AND user_id=?", (tid, user_id)).fetchone()
            current = row["role"] if row else None
            if "owner" in (role, current) and access.role != "owner":
                raise Forbidden("only an owner can grant or change the owner role")
            if current == "owner" and role != "owner":
                _keep_an_owner(conn, tid)
            conn.execute("INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES (?,?,?,?) "
                         "ON CONFLICT (tenant_id, user_id) DO UPDATE SET role=excluded.role",
                         (tid, user_id, role, time.time()))
        self.db.write(write)
        return next(m for m in self.members(tid) if m["id"] == user_id)

    def remove_member(self, access: Access, user_id: str) -> None:
        tid = access.tenant_id

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT role FROM memberships WHERE tenant_id=? AND user_id=?", (tid, user_id)).fetchone()
            if row is None:
                raise NotFound(f"user {user_id!r} is not a member of this tenant")
            if row["role"] == "owner":
                if access.role != "owner":
                    raise Forbidden("only an owner can remove an owner")
                _keep_an_owner(conn, tid)
            conn.execute("DELETE FROM memberships WHERE tenant_id=? AND user_id=?", (tid, user_id))
        self.db.write(write)

    # -- the guard -----------------------------------------------------------------------------------------
    def authorize(self, principal: Principal, tenant_ref: str, permission: str) -> Access:
        """The tenant and role if `principal` may do `permission` in it; NotFound if it has no access
        to the tenant at all, Forbidden if it lacks the permission."""
        try:
            tenant = self.tenant(tenant_ref)
        except NotFound:
            raise NotFound(f"no tenant {tenant_ref!r}") from None
        role = self.role_in(principal, tenant["id"])
        if role is None:
            raise NotFound(f"no tenant {tenant_ref!r}")
        if not role_at_least(role, PERMISSIONS[permission]):
            raise Forbidden(f"the {role} role may not do {permission}; it needs {PERMISSIONS[permission]} or higher")
        return Access(tenant, role)

    @staticmethod
    def require_admin(principal: Principal, action: str) -> None:
        if not principal.is_admin:
            raise Forbidden(f"{action} is for instance admins")

    # -- sessions ------------------------------------------------------------------------------------------
    def start_session(self, user_id: str, ip: str | None, user_agent: str | None) -> tuple[str, str]:
        """A new session: (cookie value, CSRF token). Only the cookie's hash is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = time.time()
        self.db.execute("INSERT INTO sessions (id_hash, user_id, csrf, ip, user_agent, created_at, last_seen_at, "
                        "expires_at) VALUES (?,?,?,?,?,?,?,?)",
                        (sha256(token), user_id, csrf, ip, (user_agent or "")[:300], now, now, now + self.session_ttl_s))
        return token, csrf

    def session_principal(self, token: str) -> Principal:
        row = self.db.one("SELECT s.user_id, s.csrf, s.expires_at, u.email, u.is_admin, u.status FROM sessions s "
                          "JOIN users u ON u.id=s.user_id WHERE s.id_hash=?", (sha256(token),))
        if row is None or row["expires_at"] < time.time() or row["status"] != "active":
            raise Unauthorized("the session has ended; sign in again")
        return Principal("user", row["user_id"], row["email"], bool(row["is_admin"]), csrf=row["csrf"])

    def end_session(self, token: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id_hash=?", (sha256(token),))

    def end_all_sessions(self, user_id: str) -> int:
        return self.db.execute("DELETE FROM sessions WHERE user_id=?", (user_id,))

    # -- API keys ------------------------------------------------------------------------------------------
    def create_key(self, access: Access, creator: Principal, name: str, role: str,
                   expires_at: float | None = None) -> tuple[dict[str, Any], str]:
        """A new API key: (its metadata, the key itself, shown once). Its role is at most the creator's."""
        if not (name or "").strip():
            raise Invalid("name", "must not be empty")
        if role not in ROLES:
            raise Invalid("role", f"must be one of {', '.join(ROLES)}")
        if not role_at_least(access.role, role):
            raise Forbidden(f"a key's role cannot be higher than yours ({access.role})")
        if expires_at is not None and expires_at <= time.time():
            raise Invalid("expires_at", "must be in the future")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        kid = "k_" + secrets.token_hex(8)
        self.db.execute("INSERT INTO api_keys (id, tenant_id, prefix, hash, name, role, created_by, created_at, "
                        "expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (kid, access.tenant_id, key[:12], sha256(key), name.strip(), role, creator.id, time.time(),
                         expires_at))
        return self.key(access.tenant_id, kid), key

    def key(self, tenant_id: str, key_id: str) -> dict[str, Any]:
        row = self.db.one("SELECT id, prefix, name, role, created_by, created_at, expires_at, last_used_at, revoked_at "
                          "FROM api_keys WHERE tenant_id=? AND id=?", (tenant_id, key_id))
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return dict(row)

    def keys(self, tenant_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT id, prefix, name, role, created_by, created_at, expires_at, last_used_at, revoked_at "
            "FROM api_keys WHERE tenant_id=? ORDER BY id DESC", (tenant_id,))]

    def revoke_key(self, tenant_id: str, key_id: str) -> dict[str, Any]:
        self.key(tenant_id, key_id)
        self.db.execute("UPDATE api_keys SET revoked_at=coalesce(revoked_at, ?) WHERE id=?", (time.time(), key_id))
        return self.key(tenant_id, key_id)

    def key_principal(self, key: str) -> Principal:
        """The principal of a presented API key; Unauthorized (with the reason) if unknown, revoked
        or expired. Revocation is read from the database on every request, so it acts at once."""
        if not key.startswith(KEY_PREFIX):
            raise Unauthorized("not a FlowFuse API key (they start with ffk_)")
        row = self.db.one("SELECT k.id, k.tenant_id, k.name, k.role, k.expires_at, k.revoked_at, t.status "
                          "FROM api_keys k JOIN tenants t ON t.id=k.tenant_id WHERE k.hash=?", (sha256(key),))
        now = time.time()
        if row is None:
            raise Unauthorized("unknown API key")
        if row["revoked_at"] is not None:
            raise Unauthorized("this API key was revoked")
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise Unauthorized("this API key has expired")
        self._touch(row["id"], now)
        return Principal("api_key", row["id"], row["name"], tenant_id=row["tenant_id"], role=row["role"])

    def _touch(self, key_id: str, now: float) -> None:
        """Record last use at most once a minute per key, so a busy key does not write per request."""
        with self._lock:
            if now - self._touched.get(key_id, 0.0) < self.key_touch_s:
                return
            self._touched[key_id] = now
        self.db.execute("UPDATE api_keys SET last_used_at=? WHERE id=?", (now, key_id))


def _keep_an_owner(conn: sqlite3.Connection, tenant_id: str) -> None:
    owners = conn.execute("SELECT count(*) FROM memberships WHERE tenant_id=? AND role='owner'",
                          (tenant_id,)).fetchone()[0]
    if owners <= 1:
        raise Conflict("the last owner cannot be removed or demoted; make someone else owner first")


_dummy: list[str] = []


def _DUMMY_HASH() -> str:  # noqa: N802 - a constant made on first use (hashing takes time)
    if not _dummy:
        from .passwords import hash_password

        _dummy.append(hash_password(secrets.token_urlsafe(16)))
    return _dummy[0]
