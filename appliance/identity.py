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

import functools
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import mfa
from .catalog import Conflict, NotFound
from .db import Database
from .vault import Vault

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
    "usage.read": "viewer",  # executions, steps and bytes per day (GET .../usage)
    "flows.run": "operator",
    "executions.cancel": "operator",
    "executions.retry": "operator",
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
    #: For a person: whether they sign in with a second factor (tenants may require it).
    mfa: bool = False


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

    def __init__(self, db: Database, vault: Vault, session_ttl_s: float = 14 * 86400, key_touch_s: float = 60.0):
        self.db = db
        self.vault = vault
        self.throttle = SignInThrottle()
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

    def update_settings(self, tenant_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change tenant settings (only the known ones: see TENANT_SETTINGS)."""
        for name, value in changes.items():
            if name not in TENANT_SETTINGS:
                raise Invalid(name, f"unknown setting; settings: {', '.join(TENANT_SETTINGS)}")
            if not isinstance(value, TENANT_SETTINGS[name]):
                raise Invalid(name, f"must be {TENANT_SETTINGS[name].__name__}")

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT settings FROM tenants WHERE id=?", (tenant_id,)).fetchone()
            merged = {**json.loads(row["settings"] or "{}"), **changes}
            conn.execute("UPDATE tenants SET settings=? WHERE id=?", (json.dumps(merged), tenant_id))
        self.db.write(write)
        return tenant_settings(self.tenant(tenant_id))

    # -- first run, invitations and password resets ------------------------------------------------------
    def set_up(self, email: str, password: str) -> dict[str, Any]:
        """The first person: an instance admin who owns 'default'. Refused once anyone exists."""
        self._check_new_password(email, password)
        uid, now = "u_" + secrets.token_hex(8), time.time()

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM users LIMIT 1").fetchone():
                raise Conflict("FlowFuse is already set up; sign in instead")
            conn.execute("INSERT INTO users (id, email, password_hash, is_admin, created_at, updated_at) "
                         "VALUES (?,?,?,1,?,?)", (uid, email.strip(), _hash(password), now, now))
            tenant = conn.execute("SELECT id FROM tenants WHERE slug='default'").fetchone()
            if tenant:
                conn.execute("INSERT INTO memberships VALUES (?,?,'owner',?)", (tenant["id"], uid, now))
        self.db.write(write)
        return self.user(uid)

    def invite(self, access: Access, inviter: Principal, email: str, role: str,
               ttl_s: float = 7 * 86400) -> tuple[dict[str, Any], str]:
        """An invitation to join the tenant: (its metadata, the token for the link, shown once)."""
        if not _EMAIL.match((email or "").strip()):
            raise Invalid("email", "is not an email address")
        if role not in ROLES:
            raise Invalid("role", f"must be one of {', '.join(ROLES)}")
        if role == "owner" and access.role != "owner":
            raise Forbidden("only an owner can invite an owner")
        token, iid, now = secrets.token_urlsafe(32), "i_" + secrets.token_hex(8), time.time()
        self.db.execute("INSERT INTO invitations (id, tenant_id, email, role, token_hash, created_by, created_at, "
                        "expires_at) VALUES (?,?,?,?,?,?,?,?)",
                        (iid, access.tenant_id, email.strip(), role, sha256(token), inviter.id, now, now + ttl_s))
        return self.invitation(access.tenant_id, iid), token

    def invitation(self, tenant_id: str, invitation_id: str) -> dict[str, Any]:
        row = self.db.one("SELECT id, email, role, created_by, created_at, expires_at, accepted_at FROM invitations "
                          "WHERE tenant_id=? AND id=?", (tenant_id, invitation_id))
        if row is None:
            raise NotFound(f"no invitation {invitation_id!r}")
        return dict(row)

    def invitations(self, tenant_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT id, email, role, created_by, created_at, expires_at, accepted_at FROM invitations "
            "WHERE tenant_id=? ORDER BY id DESC", (tenant_id,))]

    def revoke_invitation(self, tenant_id: str, invitation_id: str) -> None:
        if self.db.execute("DELETE FROM invitations WHERE tenant_id=? AND id=? AND accepted_at IS NULL",
                           (tenant_id, invitation_id)) == 0:
            raise NotFound(f"no open invitation {invitation_id!r}")

    def accept_invitation(self, token: str, password: str | None, name: str = "",
                          signed_in: Principal | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Join with an invitation link (once, before it expires): a new person sets a password; a
        person who already has an account must be signed in as the invited email. Returns (user, invitation)."""
        row = self.db.one("SELECT * FROM invitations WHERE token_hash=?", (sha256(token),))
        if row is None or row["accepted_at"] is not None:
            raise NotFound("this invitation link is not valid or was already used; ask for a new one")
        if row["expires_at"] <= time.time():
            raise NotFound("this invitation link has expired; ask for a new one")
        existing = self.user_by_email(row["email"])
        if existing is not None and (signed_in is None or signed_in.id != existing["id"]):
            raise Unauthorized(f"{row['email']} already has an account: sign in as them, then open the link again")
        if existing is None:
            if not password:
                raise Invalid("password", "choose a password for your new account")
            self._check_new_password(row["email"], password)
        uid, now = (existing or {}).get("id") or "u_" + secrets.token_hex(8), time.time()

        def write(conn: sqlite3.Connection) -> None:
            taken = conn.execute("UPDATE invitations SET accepted_at=? WHERE id=? AND accepted_at IS NULL",
                                 (now, row["id"])).rowcount
            if not taken:
                raise NotFound("this invitation link was already used")
            if existing is None:
                conn.execute("INSERT INTO users (id, email, name, password_hash, created_at, updated_at) "
                             "VALUES (?,?,?,?,?,?)", (uid, row["email"], name, _hash(password), now, now))
            conn.execute("INSERT INTO memberships VALUES (?,?,?,?) ON CONFLICT (tenant_id, user_id) DO UPDATE "
                         "SET role=excluded.role", (row["tenant_id"], uid, row["role"], now))
        self.db.write(write)
        return self.user(uid), dict(row)

    def start_password_reset(self, user_id: str, ttl_s: float = 3600) -> str:
        """A one-use password reset token for the link (valid an hour)."""
        self.user(user_id)
        token, now = secrets.token_urlsafe(32), time.time()
        self.db.execute("INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) VALUES (?,?,?,?)",
                        (sha256(token), user_id, now, now + ttl_s))
        return token

    def reset_password(self, token: str, password: str) -> dict[str, Any]:
        """Set a new password from a reset link (once); every session of the person ends."""
        row = self.db.one("SELECT r.user_id, r.expires_at, r.used_at, u.email FROM password_resets r "
                          "JOIN users u ON u.id=r.user_id WHERE r.token_hash=?", (sha256(token),))
        if row is None or row["used_at"] is not None or row["expires_at"] <= time.time():
            raise NotFound("this password reset link is not valid, was used or has expired; ask for a new one")
        self._check_new_password(row["email"], password)

        def write(conn: sqlite3.Connection) -> None:
            if not conn.execute("UPDATE password_resets SET used_at=? WHERE token_hash=? AND used_at IS NULL",
                                (time.time(), sha256(token))).rowcount:
                raise NotFound("this password reset link was already used")
            conn.execute("UPDATE users SET password_hash=?, updated_at=? WHERE id=?",
                         (_hash(password), time.time(), row["user_id"]))
            conn.execute("DELETE FROM sessions WHERE user_id=?", (row["user_id"],))
        self.db.write(write)
        return self.user(row["user_id"])

    @staticmethod
    def _check_new_password(email: str, password: str) -> None:
        from .passwords import password_problems

        if not _EMAIL.match((email or "").strip()):
            raise Invalid("email", "is not an email address")
        problems = password_problems(password or "", email)
        if problems:
            raise Invalid("password", "; ".join(problems))

    # -- users ---------------------------------------------------------------------------------------------
    def create_user(self, email: str, password: str, *, name: str = "", is_admin: bool = False) -> dict:

        email = (email or "").strip()
        self._check_new_password(email, password)
        uid = "u_" + secrets.token_hex(8)
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE email=?", (email,)).fetchone():
                raise Conflict(f"a user with the email {email!r} exists")
            conn.execute("INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at) "
                         "VALUES (?,?,?,?,?,?,?)",
                         (uid, email, name, _hash(password), int(is_admin), now, now))
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
            verify_password(_dummy_hash(), password or "")  # same time as a real check: no user enumeration
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
            row = conn.execute("SELECT role FROM memberships WHERE tenant_id=? AND user_id=?",
                               (tid, user_id)).fetchone()
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
            row = conn.execute("SELECT role FROM memberships WHERE tenant_id=? AND user_id=?",
                               (tid, user_id)).fetchone()
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
        if principal.kind == "user" and not principal.mfa and tenant_settings(tenant).get("require_mfa"):
            raise Forbidden(f"the tenant {tenant['slug']!r} requires two-factor sign-in: turn it on under "
                            "/api/v1/me/mfa, then sign in again")
        if not role_at_least(role, PERMISSIONS[permission]):
            raise Forbidden(f"the {role} role may not do {permission}; it needs {PERMISSIONS[permission]} or higher")
        return Access(tenant, role)

    @staticmethod
    def require_admin(principal: Principal, action: str) -> None:
        if not principal.is_admin:
            raise Forbidden(f"{action} is for instance admins")

    # -- sessions ------------------------------------------------------------------------------------------
    def start_session(self, user_id: str, ip: str | None, user_agent: str | None,
                      mfa_pending: bool = False) -> tuple[str, str]:
        """A new session: (cookie value, CSRF token). Only the cookie's hash is stored. A session
        with `mfa_pending` can do nothing but complete the second factor (`complete_mfa`)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = time.time()
        ttl = 300 if mfa_pending else self.session_ttl_s
        self.db.execute("INSERT INTO sessions (id_hash, user_id, csrf, mfa_pending, ip, user_agent, created_at, "
                        "last_seen_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (sha256(token), user_id, csrf, int(mfa_pending), ip, (user_agent or "")[:300], now, now,
                         now + ttl))
        return token, csrf

    def session_principal(self, token: str, allow_mfa_pending: bool = False) -> Principal:
        row = self.db.one("SELECT s.user_id, s.csrf, s.expires_at, s.mfa_pending, u.email, u.is_admin, u.status, "
                          "u.mfa_enabled FROM sessions s JOIN users u ON u.id=s.user_id WHERE s.id_hash=?",
                          (sha256(token),))
        if row is None or row["expires_at"] < time.time() or row["status"] != "active":
            raise Unauthorized("the session has ended; sign in again")
        if row["mfa_pending"] and not allow_mfa_pending:
            raise Unauthorized("finish signing in: send the code from your authenticator app to /api/v1/session/mfa")
        return Principal("user", row["user_id"], row["email"], bool(row["is_admin"]), csrf=row["csrf"],
                         mfa=bool(row["mfa_enabled"]))

    def complete_mfa(self, token: str, code: str) -> Principal:
        """Second step of signing in: a TOTP code or a recovery code turns a pending session into a full one."""
        principal = self.session_principal(token, allow_mfa_pending=True)
        if not self.check_second_factor(principal.id, code):
            raise Unauthorized("wrong or already used code")
        self.db.execute("UPDATE sessions SET mfa_pending=0, expires_at=? WHERE id_hash=?",
                        (time.time() + self.session_ttl_s, sha256(token)))
        return principal

    # -- MFA (TOTP) ------------------------------------------------------------------------------------------
    def start_mfa_enrolment(self, user_id: str) -> dict[str, Any]:
        """A new TOTP secret, stored sealed and not yet in force until `confirm_mfa` sees a code from it."""
        user = self.user(user_id)
        if user["mfa_enabled"]:
            raise Conflict("two-factor sign-in is already on; turn it off first to enrol a new device")
        secret = mfa.new_secret()
        self.db.execute("UPDATE users SET totp_secret=?, totp_last_step=NULL, updated_at=? WHERE id=?",
                        (self.vault.seal("totp", user_id, secret.encode()), time.time(), user_id))
        uri = mfa.provisioning_uri(secret, user["email"])
        return {"secret": secret, "uri": uri, "qr_svg": mfa.qr_svg(uri)}

    def confirm_mfa(self, user_id: str, code: str) -> list[str]:
        """Turn MFA on after a first good code; returns ten recovery codes (shown once, stored hashed)."""
        row = self.db.one("SELECT totp_secret, mfa_enabled FROM users WHERE id=?", (user_id,))
        if row is None or row["totp_secret"] is None:
            raise Invalid("code", "start enrolment first (POST /api/v1/me/mfa)")
        if row["mfa_enabled"]:
            raise Conflict("two-factor sign-in is already on")
        if not self._check_totp(user_id, code):
            raise Invalid("code", "wrong code; check the time on your device and try the next one")
        codes = mfa.new_recovery_codes()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE users SET mfa_enabled=1, updated_at=? WHERE id=?", (time.time(), user_id))
            conn.execute("DELETE FROM recovery_codes WHERE user_id=?", (user_id,))
            conn.executemany("INSERT INTO recovery_codes (user_id, code_hash) VALUES (?,?)",
                             [(user_id, mfa.hash_recovery_code(c)) for c in codes])
        self.db.write(write)
        return codes

    def disable_mfa(self, user_id: str, code: str) -> None:
        if not self.check_second_factor(user_id, code):
            raise Invalid("code", "wrong or already used code")

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE users SET mfa_enabled=0, totp_secret=NULL, totp_last_step=NULL, updated_at=? "
                         "WHERE id=?", (time.time(), user_id))
            conn.execute("DELETE FROM recovery_codes WHERE user_id=?", (user_id,))
        self.db.write(write)

    def check_second_factor(self, user_id: str, code: str) -> bool:
        """A TOTP code (each time step once) or an unused recovery code (used up by this call)."""
        code = (code or "").strip()
        if self._check_totp(user_id, code):
            return True
        used = self.db.execute("UPDATE recovery_codes SET used_at=? WHERE user_id=? AND code_hash=? "
                               "AND used_at IS NULL", (time.time(), user_id, mfa.hash_recovery_code(code)))
        return used == 1

    def _check_totp(self, user_id: str, code: str) -> bool:
        row = self.db.one("SELECT totp_secret, totp_last_step FROM users WHERE id=?", (user_id,))
        if row is None or row["totp_secret"] is None:
            return False
        secret = self.vault.unseal("totp", user_id, row["totp_secret"]).decode()
        step = mfa.verify_code(secret, code, row["totp_last_step"])
        if step is None:
            return False
        # the step is claimed atomically: of two requests with the same code, one wins
        return self.db.execute("UPDATE users SET totp_last_step=? WHERE id=? AND (totp_last_step IS NULL OR "
                               "totp_last_step < ?)", (step, user_id, step)) == 1

    def end_session(self, token: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id_hash=?", (sha256(token),))

    def end_all_sessions(self, user_id: str, keep_token: str | None = None) -> int:
        """End every session of a person (but the one whose cookie is `keep_token`, if given)."""
        return self.db.execute("DELETE FROM sessions WHERE user_id=? AND id_hash IS NOT ?",
                               (user_id, sha256(keep_token) if keep_token else None))

    def sessions(self, user_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT ip, user_agent, created_at, expires_at FROM sessions WHERE user_id=? AND mfa_pending=0 "
            "ORDER BY created_at DESC", (user_id,))]

    def change_password(self, user_id: str, current: str, new: str, keep_token: str | None = None) -> None:
        """A new password, given the current one; every other session ends."""
        row = self.db.one("SELECT email, password_hash FROM users WHERE id=?", (user_id,))
        from .passwords import verify_password

        if row is None or not verify_password(row["password_hash"] or "", current or ""):
            raise Invalid("current", "is not your current password")
        self._check_new_password(row["email"], new)
        self.db.execute("UPDATE users SET password_hash=?, updated_at=? WHERE id=?", (_hash(new), time.time(), user_id))
        self.end_all_sessions(user_id, keep_token)

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


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown emails against, made on first use (hashing takes time)."""
    from .passwords import hash_password

    return hash_password(secrets.token_urlsafe(16))


#: Tenant settings an owner may change, and their types.
TENANT_SETTINGS: dict[str, type] = {"require_mfa": bool}


def tenant_settings(tenant: dict[str, Any]) -> dict[str, Any]:
    """The tenant's settings (TENANT_SETTINGS only: quotas live beside them, see quotas.py)."""
    stored = json.loads(tenant.get("settings") or "{}")
    return {"require_mfa": False, **{k: v for k, v in stored.items() if k in TENANT_SETTINGS}}


def _hash(password: str) -> str:
    from .passwords import hash_password

    return hash_password(password)


class SignInThrottle:
    """Failed sign-ins per account and per source address, with a growing delay.

    After FREE failures (FREE_PER_ADDRESS for "ip:" keys, since many people may share an
    address) each further attempt must wait 2, 4, 8 ... seconds (at most MAX_DELAY) after the
    last failure; a success clears the account's count, and a count is forgotten MAX_DELAY after
    its last failure. Kept in memory: the web process is one process, and a restart forgetting
    the counts costs an attacker a restart of the appliance.
    """

    FREE = 5
    FREE_PER_ADDRESS = 20
    MAX_DELAY = 900.0

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """Seconds before another attempt is allowed for these keys (0 if allowed now)."""
        now, wait = time.time(), 0.0
        with self._lock:
            for key in keys:
                count, last = self._count(key, now)
                free = self.FREE_PER_ADDRESS if key.startswith("ip:") else self.FREE
                if count >= free:
                    wait = max(wait, last + min(self.MAX_DELAY, 2.0 ** (count - free + 1)) - now)
        return max(0.0, wait)

    def failed(self, *keys: str) -> None:
        now = time.time()
        with self._lock:
            if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
                self._failures.clear()
            for key in keys:
                self._failures[key] = (self._count(key, now)[0] + 1, now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _count(self, key: str, now: float) -> tuple[int, float]:
        count, last = self._failures.get(key, (0, 0.0))
        return (0, 0.0) if now - last > self.MAX_DELAY else (count, last)
