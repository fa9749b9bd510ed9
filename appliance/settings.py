"""Typed settings: defaults here, overridden by `flowfuse.toml`, overridden by environment variables.

The file is found through `--config` or `FLOWFUSE_CONFIG`; without either, `./flowfuse.toml` is
read when it exists and the defaults apply otherwise. Every key may be set in the environment as
`FLOWFUSE_<SECTION>_<KEY>` (e.g. `FLOWFUSE_SERVER_PORT=9000`). An unknown key or a value of the
wrong type stops start-up with a message naming the key and where it came from.

Each field's docstring (the string under it) is the comment printed beside it in the shipped
`flowfuse.toml`; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


class SettingsError(Exception):
    """A setting that cannot be used; the message names the key and the file or variable."""


@dataclass
class Server:
    host: str = "127.0.0.1"
    "Address the web server listens on."
    port: int = 8080
    "TCP port of the web server."
    base_url: str = ""
    "Public URL of this instance, used in resume URLs; empty means http(s)://{host}:{port}."
    max_body_bytes: int = 1048576
    "Largest webhook request body accepted; larger ones get 413."
    sync_timeout_s: float = 30.0
    "How long a when_done webhook may run before it answers 202 and finishes in the background."
    tls_cert: str = ""
    "PEM certificate (chain) to serve HTTPS with; empty: plain HTTP (e.g. behind a TLS-terminating proxy)."
    tls_key: str = ""
    "PEM private key of tls_cert (unencrypted, readable only by the flowfuse user)."
    tls_min_version: str = "1.2"
    "Oldest TLS version accepted: 1.2 or 1.3."


@dataclass
class Storage:
    data_dir: str = "./data"
    "Directory of flowfuse.db, runs.db, queue.db and flowfuse.key."
    synchronous: str = "NORMAL"
    "SQLite synchronous mode: NORMAL (safe in WAL, fast) or FULL (fsync on every commit)."
    busy_timeout_ms: int = 5000
    "How long a connection waits for another process's write lock."
    group_commit_max: int = 512
    "Most writes combined into one transaction by the writer thread."


@dataclass
class Engine:
    inline_wait_max_s: float = 5.0
    "Waits and retry back-offs up to this long sleep in the event loop; longer ones are parked in the queue."
    max_step_output_bytes: int = 4194304
    "Largest step output stored whole; larger outputs are stored truncated and re-run on resume."
    checkpoint: str = "effects"
    "When steps are committed: effects (before any node that acts outside the run, and at the end) or every_step."


@dataclass
class Worker:
    threads: int = 4
    "Huey consumer threads: they take messages off the queue and hand them to the engine."
    concurrency: int = 64
    "Executions the worker runs at the same time (in one event loop); more wait in the queue."
    poll_interval_s: float = 0.01
    "How often an idle consumer first polls the queue."
    max_poll_interval_s: float = 0.25
    "Longest poll interval the consumer backs off to when idle."
    heartbeat_s: float = 2.0
    "How often each process records that it is alive."
    stale_after_s: float = 15.0
    "A process silent this long is dead: its running executions are resumed elsewhere."
    retention_interval_s: float = 60.0
    "How often the worker deletes finished executions older than their tenant's quotas.retention_days."


@dataclass
class Schedule:
    tick_s: float = 1.0
    "How often the worker checks for due cron triggers."
    catch_up: int = 1
    "Due times missed while stopped that fire on start (newest first); 0 skips them."


@dataclass
class Quotas:
    """Instance defaults of the per-tenant quotas; an instance admin overrides them per tenant
    (PATCH /api/v1/tenants/{tenant}/quotas). 0 means unlimited (for retention_days: keep forever)."""

    active_flows: int = 0
    "Flows a tenant may have active (listening to a webhook or schedule) at once; 0: unlimited."
    executions_per_month: int = 0
    "Executions a tenant may start per calendar month (UTC); beyond it new ones are refused; 0: unlimited."
    concurrent_executions: int = 0
    "Executions of a tenant running at once; more wait in order (sync webhooks up to server.sync_timeout_s); 0: unlimited."
    webhook_requests_per_minute: int = 0
    "Webhook requests a tenant may receive per minute (bursts up to the same number); beyond it 429; 0: unlimited."
    retention_days: int = 30
    "Days finished executions (with their steps) are kept before the worker deletes them; 0: forever."


@dataclass
class Smtp:
    """Mail for invitations and password resets. Without a host nothing is mailed: an admin copies
    the link from the API or console instead."""

    host: str = ""
    "SMTP server; empty: mail is off."
    port: int = 587
    "SMTP port (587 with STARTTLS, 465 with TLS, 25 plain)."
    security: str = "starttls"
    "starttls, tls or none."
    username: str = ""
    "Sign-in name at the SMTP server; empty: no sign-in."
    password: str = ""
    "Its password; better given as FLOWFUSE_SMTP_PASSWORD than written here."
    sender: str = "FlowFuse <flowfuse@localhost>"
    "The From address of mail FlowFuse sends."
    timeout_s: float = 10.0
    "How long to wait for the SMTP server."


@dataclass
class Logging:
    level: str = "INFO"
    "Log level: DEBUG, INFO, WARNING or ERROR."
    format: str = "auto"
    "auto (JSON lines unless stderr is a terminal), json or text."


@dataclass
class Telemetry:
    """Metrics, traces and error reports. Nothing leaves the machine unless an endpoint or DSN is set."""

    otlp_endpoint: str = ""
    "OpenTelemetry collector base URL (OTLP/HTTP, e.g. http://otel:4318); empty: no traces are made or sent."
    service_name: str = "flowfuse"
    "service.name of the traces (the worker's is this name + -worker)."
    sentry_dsn: str = ""
    "Sentry-compatible DSN (Sentry, GlitchTip) that unhandled errors are reported to; empty: off."
    metrics_token: str = ""
    "Bearer token a Prometheus scraper may send to read /metrics (instance admins can always); empty: admins only."


@dataclass
class Settings:
    server: Server = field(default_factory=Server)
    storage: Storage = field(default_factory=Storage)
    engine: Engine = field(default_factory=Engine)
    worker: Worker = field(default_factory=Worker)
    schedule: Schedule = field(default_factory=Schedule)
    quotas: Quotas = field(default_factory=Quotas)
    smtp: Smtp = field(default_factory=Smtp)
    logging: Logging = field(default_factory=Logging)
    telemetry: Telemetry = field(default_factory=Telemetry)
    #: Where the file settings came from (None: defaults only).
    source: str | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.server.tls_cert else "http"
        return (self.server.base_url or f"{scheme}://{self.server.host}:{self.server.port}").rstrip("/")


SECTIONS = [f.name for f in dataclasses.fields(Settings) if f.name != "source"]


def _coerce(value: Any, kind: type, where: str, text: bool = True) -> Any:
    """`value` as `kind`; with `text`, a string may stand for a number (environment variables), not in TOML."""
    if not text and isinstance(value, str) and kind is not str:
        raise SettingsError(f"{where} must be {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise SettingsError(f"{where} must be {kind.__name__}, got {value!r}")


def _apply(settings: Settings, section: str, key: str, value: Any, where: str,
           origins: dict[str, str] | None = None, text: bool = True) -> None:
    if section not in SECTIONS:
        raise SettingsError(f"{where}: unknown section [{section}] (sections: {', '.join(SECTIONS)})")
    target = getattr(settings, section)
    hints = get_type_hints(type(target))
    if key not in hints:
        raise SettingsError(f"{where}: unknown key {section}.{key} (keys of [{section}]: {', '.join(hints)})")
    setattr(target, key, _coerce(value, hints[key], f"{where}: {section}.{key}", text))
    if origins is not None:
        origins[f"{section}.{key}"] = where


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, the TOML file, the environment and then explicit overrides.

    `overrides` maps "section.key" to a value (what CLI flags such as --data-dir set).
    """
    env = dict(os.environ if env is None else env)
    settings = Settings()
    origins: dict[str, str] = {}  # "section.key" -> the file, variable or option that set it last
    explicit = path or env.get("FLOWFUSE_CONFIG")
    file = Path(explicit) if explicit else Path("flowfuse.toml")
    if explicit and not file.is_file():
        raise SettingsError(f"config file {file} does not exist")
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: not valid TOML: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise SettingsError(f"{file}: {section} must be a [section] table")
            for key, value in values.items():
                _apply(settings, section, key, value, str(file), origins, text=False)
        settings.source = str(file)
    for name, value in env.items():
        if not name.startswith("FLOWFUSE_") or name == "FLOWFUSE_CONFIG":
            continue
        rest = name[len("FLOWFUSE_"):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # other FLOWFUSE_ variables (e.g. FLOWFUSE_ADMIN_PASSWORD) are not settings
        _apply(settings, section, rest[len(section) + 1:], value, f"environment variable {name}", origins)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            _apply(settings, section, key, value, f"option --{key.replace('_', '-')}", origins)
    _check(settings, origins)
    return settings


def _check(settings: Settings, origins: dict[str, str]) -> None:
    """Checks of values (not types); the message names where the offending value was set."""
    def where(key: str) -> str:
        return origins.get(key, "the defaults")
    if settings.storage.synchronous.upper() not in ("NORMAL", "FULL"):
        raise SettingsError(f"{where('storage.synchronous')}: storage.synchronous must be NORMAL or FULL")
    if not 0 < settings.server.port < 65536:
        raise SettingsError(f"{where('server.port')}: server.port must be between 1 and 65535")
    if settings.engine.checkpoint not in ("effects", "every_step"):
        raise SettingsError(f"{where('engine.checkpoint')}: engine.checkpoint must be effects or every_step")
    if settings.server.tls_min_version not in ("1.2", "1.3"):
        raise SettingsError(f"{where('server.tls_min_version')}: server.tls_min_version must be \"1.2\" or \"1.3\"")
    if bool(settings.server.tls_cert) != bool(settings.server.tls_key):
        given, missing = ("tls_cert", "tls_key") if settings.server.tls_cert else ("tls_key", "tls_cert")
        raise SettingsError(f"{where('server.' + given)}: server.{given} is set but server.{missing} is not; "
                            "HTTPS needs both (or neither, for plain HTTP)")
    if settings.smtp.security not in ("starttls", "tls", "none"):
        raise SettingsError(f"{where('smtp.security')}: smtp.security must be starttls, tls or none")
    if settings.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"{where('logging.level')}: logging.level must be DEBUG, INFO, WARNING or ERROR")
    if settings.logging.format not in ("auto", "json", "text"):
        raise SettingsError(f"{where('logging.format')}: logging.format must be auto, json or text")
    for section in SECTIONS:  # every number is a size, a count or a duration: above 0 (0 allowed where it means
        obj = getattr(settings, section)  # none or unlimited: catch_up and the quotas)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                key = f"{section}.{f.name}"
                zero_ok = key == "schedule.catch_up" or section == "quotas"
                if value < 0 or (value == 0 and not zero_ok):
                    least = "0 or more" if zero_ok else "above 0"
                    raise SettingsError(f"{where(key)}: {key} must be {least}, got {value}")


def field_docs(section_cls: type) -> dict[str, str]:
    """The docstring under each field of a settings section (read from the source)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(section_cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = nxt.value.value  # type: ignore[union-attr]
    return docs


def render_toml() -> str:
    """The shipped flowfuse.toml: every setting at its default, with its comment."""
    lines = ["# FlowFuse settings. Every key is shown with its default; the binary runs without this file.",
             "# Each key can also be set in the environment as FLOWFUSE_<SECTION>_<KEY>.", ""]
    defaults = Settings()
    for section in SECTIONS:
        obj = getattr(defaults, section)
        docs = field_docs(type(obj))
        lines.append(f"[{section}]")
        for f in dataclasses.fields(obj):
            lines.append(f"# {docs.get(f.name, '')}")
            value = getattr(obj, f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
