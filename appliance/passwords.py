"""Password hashing and the password policy for people who sign in.

Hashes are argon2id with the RFC 9106 "second recommended option" (the low-memory profile:
64 MiB, 3 passes, 4 lanes). The RFC's first option needs 2 GiB per hash, which a small
on-prem appliance cannot spend on every sign-in; 64 MiB still makes each guess costly on GPUs.
The profile is named explicitly rather than taken from the library's defaults (the same values
today) so a library upgrade cannot change the cost of a sign-in unnoticed; raising it later is a
change here, and `needs_rehash` then tells the identity layer to upgrade stored hashes as people
sign in.

The policy follows NIST SP 800-63B: a minimum length and a block-list of known passwords rather
than rules about character classes.
"""

from __future__ import annotations

import functools
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

MIN_LENGTH = 12
# Argon2 pre-hashes the password, so the cost grows with its length; a cap stops anyone from
# making the server hash megabytes per request. No one types more than this.
MAX_LENGTH = 1024
# A shorter email name part ("jo@...") would flag too many unrelated passwords.
MIN_EMAIL_NAME_LENGTH = 3

_hasher = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


def hash_password(pw: str) -> str:
    """Return an argon2id hash string (PHC format, salt and parameters included) to store."""
    return _hasher.hash(pw)


def verify_password(stored_hash: str, pw: str) -> bool:
    """Tell whether `pw` matches `stored_hash`.

    Returns False, never raises, for a wrong password, a malformed or foreign stored hash, or a
    password too long to have passed the policy (refused before hashing, so it costs nothing),
    so a sign-in handler has one answer to act on.
    """
    if len(pw) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored_hash, pw)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Tell whether a hash was made with other parameters than today's and should be replaced.

    Call it after a successful `verify_password`, while the plain password is at hand, and store
    `hash_password(pw)` if it returns True. A malformed hash also answers True.
    """
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lowercased; read from the package once, on first use.

    The list (appliance/data/common-passwords.txt; origin and licence in common-passwords.LICENSE
    beside it) holds only entries of at least MIN_LENGTH characters: shorter ones are refused by
    the length rule before the list matters.
    """
    text = resources.files("appliance").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line)


def password_problems(pw: str, email: str | None = None) -> list[str]:
    """Return what is wrong with `pw` as a new password, as messages to show; empty if it is fine.

    `email` is the account's address: a password made from its name part is among the first
    an attacker who knows the address tries.
    """
    problems = []
    if len(pw) < MIN_LENGTH:
        problems.append(f"use at least {MIN_LENGTH} characters (this password has {len(pw)})")
    if len(pw) > MAX_LENGTH:
        problems.append(f"use at most {MAX_LENGTH} characters (this password has {len(pw)})")
    lowered = pw.strip().lower()
    if lowered in common_passwords():
        problems.append("this password is in a list of commonly used passwords; choose another")
    name = _email_name(email)
    if name and name in lowered:
        problems.append("do not build the password from your email address; choose another")
    return problems


def _email_name(email: str | None) -> str | None:
    """The lowercased name part of an address ("Ann.Lee+ff@x.org" -> "ann.lee"), if long enough."""
    if not email or "@" not in email:
        return None
    name = email.rpartition("@")[0].split("+", 1)[0].strip().lower()
    return name if len(name) >= MIN_EMAIL_NAME_LENGTH else None
