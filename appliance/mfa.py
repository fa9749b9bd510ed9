"""Second factor for people: TOTP authenticator apps and single-use recovery codes.

TOTP is RFC 6238 with the parameters every authenticator app understands: SHA-1, 6 digits,
30-second steps. (SHA-1's collision weakness does not affect HMAC, and several apps silently
ignore other algorithms, producing codes that never match.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime

import pyotp
import segno

# Accept the code of the step before and after the current one: phone clocks drift, and a
# person may type a code just as it rolls over.
DRIFT_STEPS = 1
# Lowercase letters and digits without 0/o, 1/l/i, which people misread on paper.
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
RECOVERY_GROUPS = 4
RECOVERY_GROUP_LENGTH = 4

_CODE = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    """A new random TOTP secret: 160 bits (the RFC 4226 recommended length) as 32 base32 chars."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, account_email: str, issuer: str = "FlowFuse") -> str:
    """The otpauth:// URI an authenticator app imports (shown as a QR code on enrolment)."""
    return pyotp.TOTP(secret).provisioning_uri(name=account_email, issuer_name=issuer)


def verify_code(
    secret: str, code: str, last_step: int | None, *, now: float | None = None
) -> int | None:
    """Check a code typed by a person; return the time step it belongs to, or None if refused.

    Spaces are ignored ("123 456"); anything but six digits is refused. Codes of the current
    step and DRIFT_STEPS either side are accepted, except steps at or before `last_step`: the
    caller stores the returned step as the new `last_step`, so a code seen once (over a
    shoulder, or in a log) cannot be used again. `now` is the Unix time to check against;
    it defaults to the clock and is there for tests.
    """
    code = "".join(code.split())
    if not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    current = totp.timecode(at)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def qr_svg(uri: str) -> str:
    """An inline <svg> of `uri` as a QR code, to put straight into the enrolment page.

    Drawn dark on a white background with the standard quiet zone, so it scans on a dark theme
    too; it references nothing outside itself, in keeping with air-gapped installs.
    """
    return segno.make(uri, error="m").svg_inline(
        scale=5, dark="#000", light="#fff", title="QR code for your authenticator app"
    )


def new_recovery_codes(n: int = 10) -> list[str]:
    """`n` distinct single-use recovery codes like "k7dm-q2xp-9hwa-r4ce", about 79 bits each.

    Four groups rather than three: at about 59 bits, a stolen table of thousands of unsalted
    code hashes could be searched for some match in hours of GPU time; at 79 bits it takes
    centuries, which is what lets `hash_recovery_code` use a fast hash.
    """
    codes: list[str] = []
    while len(codes) < n:
        code = "-".join(
            "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_GROUP_LENGTH))
            for _ in range(RECOVERY_GROUPS)
        )
        if code not in codes:
            codes.append(code)
    return codes


def normalise_recovery_code(code: str) -> str:
    """The form a code is hashed in: lowercase, without dashes or whitespace, as people type it."""
    return "".join(code.split()).replace("-", "").lower()


def hash_recovery_code(code: str) -> str:
    """The SHA-256 hex digest of the normalised code: what is stored instead of the code.

    A fast unsalted hash is enough here, unlike for passwords: the codes are random with about
    79 bits each, not chosen by people, so there is no dictionary to try, and searching that space
    is out of reach even against every stored hash at once. A code found anyway would only stand
    in for the second factor; the argon2-hashed password is still needed. Being unsalted, the hash
    lets the identity layer find a code by equality and delete it once used.
    """
    return hashlib.sha256(normalise_recovery_code(code).encode("utf-8")).hexdigest()
