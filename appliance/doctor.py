"""`flowfuse doctor`: checks of a data directory, one line each (OK, WARN or FAIL) with a fix for each problem.

Read-only: it opens the databases to read them and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<4}  {self.name}: {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def check_permissions(data: Path) -> list[Check]:
    found: list[Check] = []
    mode = stat.S_IMODE(data.stat().st_mode)
    if mode & 0o007:
        found.append(Check("permissions", FAIL, f"{data} is open to every user (mode {mode:04o})",
                           f"chmod 700 {data}"))
    else:
        found.append(Check("permissions", OK, f"{data} mode {mode:04o}"))
    key = data / "flowfuse.key"
    if key.exists():
        kmode = stat.S_IMODE(key.stat().st_mode)
        if kmode & 0o077:
            found.append(Check("key file", FAIL, f"{key} is readable by others (mode {kmode:04o})",
                               f"chmod 600 {key}"))
        else:
            found.append(Check("key file", OK, f"{key.name} mode {kmode:04o}"))
    return found


def check_master_key(settings: Settings) -> Check:
    from .runtime import Runtime

    try:
        rt = Runtime(settings)
    except Exception as exc:  # noqa: BLE001 - whatever stops start-up is the finding
        return Check("master key", FAIL, str(exc),
                     "restore flowfuse.key from your backup (or set FLOWFUSE_MASTER_KEY to the key this data "
                     "directory was created or last rotated with)")
    try:
        rt.vault._master_key()
        source = "FLOWFUSE_MASTER_KEY" if rt.vault.key_from_environment else "flowfuse.key"
        return Check("master key", OK, f"the key from {source} opens the vault")
    except Exception as exc:  # noqa: BLE001
        return Check("master key", FAIL, str(exc), "restore flowfuse.key from your backup or set FLOWFUSE_MASTER_KEY")
    finally:
        rt.close()


def check_integrity(data: Path) -> list[Check]:
    found = []
    for db in sorted(data.glob("*.db")):
        try:
            conn = _ro(db)
            try:
                rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            rows = [str(exc)]
        if rows == ["ok"]:
            found.append(Check(f"integrity {db.name}", OK, "PRAGMA integrity_check: ok"))
        else:
            found.append(Check(f"integrity {db.name}", FAIL, "; ".join(rows[:3]),
                               f"stop flowfuse and restore {db.name} from the latest backup (`flowfuse restore` "
                               "into an empty directory), or salvage it with `sqlite3 " + db.name + " .recover`"))
    return found


def check_audit(settings: Settings) -> Check:
    from .commands import verify_audit

    try:
        result = verify_audit(settings)
    except Exception as exc:  # noqa: BLE001
        return Check("audit chain", FAIL, str(exc), "run `flowfuse audit verify` for details")
    if result.ok:
        return Check("audit chain", OK, f"{result.entries} entries intact")
    return Check("audit chain", FAIL, result.problem or "broken",
                 "the audit log was altered: keep this copy as evidence, compare with a backup, and investigate")


def check_disk(data: Path, min_free_mb: int) -> Check:
    usage = shutil.disk_usage(data)
    free_mb = usage.free // (1 << 20)
    detail = f"{free_mb} MiB free of {usage.total // (1 << 20)} MiB"
    if free_mb < min_free_mb:
        return Check("free disk", WARN, f"{detail} (below {min_free_mb} MiB)",
                     "free space on that file system, lower quotas.retention_days, or move the data directory "
                     "to a larger disk; with no space left new executions fail")
    return Check("free disk", OK, detail)


def check_clock(data: Path) -> Check:
    runs = data / "runs.db"
    if not runs.exists():
        return Check("clock", WARN, "runs.db is missing", "run `flowfuse init`")
    conn = _ro(runs)
    try:
        newest = conn.execute("SELECT max(created_at) FROM executions").fetchone()[0]
    finally:
        conn.close()
    if newest is None:
        return Check("clock", OK, "no executions yet to compare with")
    ahead = newest - time.time()
    if ahead > 60:
        return Check("clock", FAIL, f"the newest execution was created {ahead:.0f} s in the future of this clock",
                     "the system clock went back: set it right (enable NTP, e.g. `timedatectl set-ntp true`); "
                     "schedules and retention use it")
    return Check("clock", OK, "not behind the newest execution")


def check_tls(settings: Settings, warn_days: int = 14) -> Check | None:
    path = getattr(settings.server, "tls_cert", "")
    if not path:
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return Check("tls certificate", FAIL, f"{path}: {exc}", "set [server] tls_cert to a readable PEM certificate")
    expires = cert.not_valid_after_utc
    left = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    when = expires.strftime("%Y-%m-%d")
    if left < 0:
        return Check("tls certificate", FAIL, f"{path} expired on {when}", "renew the certificate and restart")
    if left < warn_days:
        return Check("tls certificate", WARN, f"{path} expires on {when} ({left:.0f} days)",
                     "renew the certificate and restart")
    return Check("tls certificate", OK, f"valid until {when}")


def check_worker(data: Path, stale_after_s: float) -> Check:
    conn = _ro(data / "runs.db")
    try:
        beat = conn.execute("SELECT max(heartbeat_at) FROM processes WHERE kind='worker'").fetchone()[0]
    finally:
        conn.close()
    if beat is None:
        return Check("worker", WARN, "no worker is running",
                     "start it: `flowfuse serve` (or `flowfuse worker`, or `systemctl start flowfuse`)")
    age = time.time() - beat
    if age > stale_after_s:
        return Check("worker", WARN, f"last heartbeat {age:.0f} s ago",
                     "the worker is stopped or stuck: check its log and restart the service")
    return Check("worker", OK, f"heartbeat {age:.1f} s ago")


def run_checks(settings: Settings, min_free_mb: int = 1024) -> list[Check]:
    data = settings.data_dir
    if not (data / "flowfuse.db").exists():
        return [Check("data directory", FAIL, f"{data} has no flowfuse.db",
                      f"run `flowfuse init --data-dir {data}` or `flowfuse restore` a backup into it")]
    checks = check_permissions(data)
    integrity = check_integrity(data)
    checks += integrity
    if all(c.level == OK for c in integrity):  # opening damaged databases further tells nothing more
        checks.append(check_master_key(settings))
        checks.append(check_audit(settings))
        checks.append(check_clock(data))
        checks.append(check_worker(data, settings.worker.stale_after_s))
    checks.append(check_disk(data, min_free_mb))
    tls = check_tls(settings)
    if tls is not None:
        checks.append(tls)
    return checks

