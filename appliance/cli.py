"""The `flowfuse` command: a thin shell over `appliance.commands` and the process entry points."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from typing import Any

import click

from engine import FlowInvalid

from . import build_info, commands
from .catalog import Conflict, NotFound
from .db import NewerDataDirectory
from .identity import Invalid
from .runtime import NotInitialised, init_data_dir
from .settings import SettingsError, load
from .vault import CredentialError

EXPECTED = (commands.CommandError, SettingsError, NotFound, Conflict, NotInitialised, CredentialError, Invalid,
            NewerDataDirectory)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    info = build_info()
    click.echo(f"flowfuse {info['version']}\ncommit {info['commit']}\nbuilt {info['build_date']}")
    ctx.exit()


def _settings(ctx: click.Context, **overrides: Any):
    try:
        return load(ctx.obj["config"], overrides={k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


class Group(click.Group):
    """Turns the errors a person can act on into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowInvalid as exc:
            for error in exc.errors:
                click.echo(f"error: {error}", err=True)
            ctx.exit(2)
        except EXPECTED as exc:
            raise click.ClickException(str(exc).strip("'\"")) from None


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), help="data directory (default from settings)")
tenant_option = click.option("--tenant", help="tenant slug (default: default)")


@click.group(cls=Group)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print the version, commit and build date, and exit")
@click.option("--config", type=click.Path(dir_okay=False), help="settings file (default: $FLOWFUSE_CONFIG or ./flowfuse.toml)")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """FlowFuse: workflow automation on one machine."""
    ctx.ensure_object(dict)["config"] = config


@main.command()
@data_dir_option
@click.option("--admin-email", help="also create this instance admin (owner of 'default'); the password is read "
                                    "from FLOWFUSE_ADMIN_PASSWORD or asked for")
@click.pass_context
def init(ctx: click.Context, data_dir: str | None, admin_email: str | None) -> None:
    """Create the data directory, its databases, the master key and the tenant 'default'."""
    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    made = init_data_dir(settings)
    if admin_email:
        password = os.environ.get("FLOWFUSE_ADMIN_PASSWORD") or click.prompt(
            f"Password for {admin_email}", hide_input=True, confirmation_prompt=True)
        made["admin"] = commands.create_admin(settings, admin_email, password)
    _emit(made)


def _server_options(fn):
    fn = click.option("--port", type=int, help="TCP port (default 8080)")(fn)
    fn = click.option("--host", help="listen address (default 127.0.0.1)")(fn)
    return data_dir_option(fn)


@main.command()
@_server_options
@click.pass_context
def serve(ctx: click.Context, data_dir: str | None, host: str | None, port: int | None) -> None:
    """Run the web server and the worker, and restart either if it dies; SIGTERM stops both."""
    from .serve import supervise

    settings = _settings(ctx, **{"storage.data_dir": data_dir, "server.host": host, "server.port": port})
    _logging(settings, "serve")
    sys.exit(supervise(settings, ctx.obj["config"]))


@main.command()
@_server_options
@click.option("--expect-worker", is_flag=True, hidden=True, help="/readyz also checks the worker (set by serve)")
@click.pass_context
def web(ctx: click.Context, data_dir: str | None, host: str | None, port: int | None, expect_worker: bool) -> None:
    """Run the web server only (console, API, webhooks)."""
    from web.server import run_web

    settings = _settings(ctx, **{"storage.data_dir": data_dir, "server.host": host, "server.port": port})
    _logging(settings, "web")
    run_web(settings, expect_worker=expect_worker)


@main.command()
@data_dir_option
@click.pass_context
def worker(ctx: click.Context, data_dir: str | None) -> None:
    """Run the worker only (queued executions, retries, waits, cron triggers)."""
    from .worker import run_worker

    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    _logging(settings, "worker")
    run_worker(settings)


@main.command("run")
@click.argument("flow_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_json", help="trigger items: a JSON object or a list of objects")
@tenant_option
@data_dir_option
@click.pass_context
def run_cmd(ctx: click.Context, flow_file: str, input_json: str | None, tenant: str | None,
            data_dir: str | None) -> None:
    """Run FLOW_FILE in this process without a server; print the result as JSON.

    If the data directory is initialised, nodes can use its credentials, variables and flows.
    """
    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    try:
        status, result = commands.run_flow(commands.read_flow_file(flow_file), commands.parse_input(input_json),
                                           settings, tenant)
    except commands.CommandError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _emit(result)
    sys.exit(status)


@main.group()
def flow() -> None:
    """Import, export, list, activate and deactivate flows."""


@flow.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@tenant_option
@click.option("--activate", is_flag=True, help="activate the flow (webhooks and schedules start)")
@data_dir_option
@click.pass_context
def flow_import(ctx, file: str, tenant: str | None, activate: bool, data_dir: str | None) -> None:
    """Validate and save FILE as a new version of its flow."""
    _emit(commands.import_flow(_settings(ctx, **{"storage.data_dir": data_dir}), file, tenant, activate))


@flow.command("export")
@click.argument("name")
@tenant_option
@data_dir_option
@click.pass_context
def flow_export(ctx, name: str, tenant: str | None, data_dir: str | None) -> None:
    """Print the flow's current JSON."""
    _emit(commands.export_flow(_settings(ctx, **{"storage.data_dir": data_dir}), name, tenant))


@flow.command("list")
@tenant_option
@data_dir_option
@click.pass_context
def flow_list(ctx, tenant: str | None, data_dir: str | None) -> None:
    """List the flows of a tenant."""
    _emit(commands.list_flows(_settings(ctx, **{"storage.data_dir": data_dir}), tenant))


def _activation(active: bool):
    @click.argument("name")
    @tenant_option
    @data_dir_option
    @click.pass_context
    def command(ctx, name: str, tenant: str | None, data_dir: str | None) -> None:
        _emit(commands.set_active(_settings(ctx, **{"storage.data_dir": data_dir}), name, tenant, active))
    return command


flow.command("activate", help="Start the flow's webhook or schedule.")(_activation(True))
flow.command("deactivate", help="Stop the flow's webhook or schedule.")(_activation(False))


@main.group()
def executions() -> None:
    """List, show and cancel executions."""


@executions.command("list")
@click.option("--flow", "flow_name", help="only this flow")
@click.option("--status", type=click.Choice(["queued", "running", "waiting", "succeeded", "failed", "cancelled"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--before", help="page: executions older than this id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@tenant_option
@data_dir_option
@click.pass_context
def executions_list(ctx, flow_name, status, limit, before, as_json, tenant, data_dir) -> None:
    """Recent executions, newest first."""
    rows = commands.list_executions(_settings(ctx, **{"storage.data_dir": data_dir}), tenant, flow_name, status,
                                    limit, before)
    if as_json:
        _emit(rows)
        return
    for r in rows:
        error = f"  {r['error']['message']}" if r["error"] else ""
        click.echo(f"{r['id']}  {r['status']:<9}  {r['trigger']:<8}  {r['flow']}{error}")


@executions.command("show")
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@tenant_option
@data_dir_option
@click.pass_context
def executions_show(ctx, execution_id, as_json, tenant, data_dir) -> None:
    """One execution with its steps."""
    found = commands.show_execution(_settings(ctx, **{"storage.data_dir": data_dir}), execution_id, tenant)
    if as_json:
        _emit(found)
        return
    click.echo(f"{found['id']}  {found['flow']}  {found['status']}  ({found['trigger']})")
    if found["error"]:
        click.echo(f"error at {found['error'].get('node')}: {found['error'].get('message')}")
    for s in found["steps"]:
        error = f"  {s['error']}" if s.get("error") else ""
        click.echo(f"  {s['key']:<24} {s['status']:<9} attempt {s['attempt']}  "
                   f"{s['input_count']} in, {len(s['items'])} out{error}")


@executions.command("cancel")
@click.argument("execution_id")
@tenant_option
@data_dir_option
@click.pass_context
def executions_cancel(ctx, execution_id, tenant, data_dir) -> None:
    """Cancel a queued, waiting or running execution."""
    before = commands.cancel_execution(_settings(ctx, **{"storage.data_dir": data_dir}), execution_id, tenant)
    click.echo(f"cancelled (was {before})")


@main.group()
def credentials() -> None:
    """Store credentials (encrypted) that nodes use by name."""


@credentials.command("set")
@click.argument("name")
@click.option("--type", "type_", required=True,
              help="credential type: basic, bearer, header, generic, or one a connector registers")
@click.option("--data", "data_json", help="fields as JSON; read from standard input when omitted")
@tenant_option
@data_dir_option
@click.pass_context
def credentials_set(ctx, name, type_, data_json, tenant, data_dir) -> None:
    """Create or replace a credential, e.g. --type bearer --data '{"token": "..."}'."""
    text = data_json if data_json is not None else sys.stdin.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise click.ClickException("credential data must be a JSON object") from None
    if not isinstance(data, dict):
        raise click.ClickException("credential data must be a JSON object")
    commands.set_credential(_settings(ctx, **{"storage.data_dir": data_dir}), name, type_, data, tenant)
    click.echo(f"credential {name!r} saved")


@main.group()
def keys() -> None:
    """Rotate the master key that wraps every tenant's credential key."""


@keys.command("rotate")
@data_dir_option
@click.pass_context
def keys_rotate(ctx, data_dir: str | None) -> None:
    """Re-wrap every tenant data key under a new master key; credentials are not re-encrypted.

    With flowfuse.key the file is replaced: back up the new one. With FLOWFUSE_MASTER_KEY the new
    key is printed before anything changes and no file is written: store it, and restart every
    process with it. Resume URLs already handed out stay valid.
    """
    def show(key_hex: str) -> None:
        click.echo(f"new master key: {key_hex}")
        click.echo("store it now and set FLOWFUSE_MASTER_KEY to it; if this command fails, the old key stays valid")

    done = commands.rotate_master_key(_settings(ctx, **{"storage.data_dir": data_dir}), show)
    where = ("set FLOWFUSE_MASTER_KEY to the new key and restart every process" if done["key"] == "FLOWFUSE_MASTER_KEY"
             else f"{done['key']} holds the new key: back it up")
    click.echo(f"master key rotated: {done['tenant_keys']} tenant data keys re-wrapped; {where}")


@main.group()
def audit() -> None:
    """Check and export the tamper-evident audit log."""


@audit.command("verify")
@data_dir_option
@click.pass_context
def audit_verify(ctx, data_dir: str | None) -> None:
    """Check every entry against its hash and the one before it; exit 1 at the first one tampered with."""
    result = commands.verify_audit(_settings(ctx, **{"storage.data_dir": data_dir}))
    if not result.ok:
        click.echo(f"audit log damaged: {result.problem}", err=True)
        sys.exit(1)
    click.echo(f"audit log intact: {result.entries} entries")


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--since", help="only entries from this ISO-8601 date or date-time on (UTC unless an offset is given)")
@tenant_option
@data_dir_option
@click.pass_context
def audit_export(ctx, fmt: str, since: str | None, tenant: str | None, data_dir: str | None) -> None:
    """Write the audit log to standard output, oldest entry first (all tenants unless --tenant)."""
    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    try:
        commands.export_audit(settings, sys.stdout, fmt, since, tenant)
    except commands.CommandError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _logging(settings, role: str = "cli") -> None:
    """Logs (JSON or text, secrets redacted) for every command; for the server processes also metrics,
    traces and error reports (appliance.telemetry), flushed at exit."""
    logging.basicConfig(level=settings.logging.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if role in ("serve", "web", "worker"):
        from . import telemetry

        telemetry.setup(settings, role)
        atexit.register(telemetry.shutdown)


@main.group()
def connector() -> None:
    """Make a connector: a new one from a template, or one from an OpenAPI document."""


@connector.command("from-openapi")
@click.argument("spec")
@click.option("--name", required=True, help="the connector's name; it prefixes its actions (name.operationId)")
@tenant_option
@data_dir_option
@click.pass_context
def connector_from_openapi(ctx, spec: str, name: str, tenant: str | None, data_dir: str | None) -> None:
    """Import an OpenAPI 3.0/3.1 document (JSON or YAML; a file, or an http(s) URL fetched like the
    http_request node would) as a connector of the tenant: every operation becomes an action that
    its flows and the builder can use at once (see connectors/openapi.py)."""
    import asyncio
    from pathlib import Path

    from connectors import openapi
    from connectors.http import client

    async def fetch() -> bytes:
        try:
            return await openapi.fetch(spec)
        finally:
            await client().aclose()

    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    try:
        if spec.startswith(("http://", "https://")):
            document, source = asyncio.run(fetch()), spec
        else:
            path = Path(spec)
            if not path.is_file():
                raise click.ClickException(f"{spec}: no such file (give a file or an http(s) URL)")
            if path.stat().st_size > openapi.MAX_SPEC_BYTES:
                raise click.ClickException(f"{spec}: {path.stat().st_size:,} bytes; at most "
                                           f"{openapi.MAX_SPEC_BYTES:,} are accepted")
            document, source = path.read_bytes(), str(path.resolve())
        with commands.opened(settings) as rt:
            tenant_id = rt.tenant_id(tenant)
            made = rt.catalog.import_connector(tenant_id, name, document, source)
            commands._audit_cli(rt, "connector.import", tenant_id, "connector", name,
                                {"source": source, "actions": len(made["node_types"])})
    except openapi.SpecError as exc:
        raise click.ClickException(f"{spec}: {exc}") from None
    _emit(made)


@main.group("connectors")
def connectors_group() -> None:
    """The connectors this installation has (built in, installed packages, the plugins directory)."""


@connector.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="where to write NAME.py and test_NAME.py")
@click.option("--force", is_flag=True, help="overwrite files of that name")
def connector_new(name: str, directory: str, force: bool) -> None:
    """Write a working connector NAME.py and its test test_NAME.py (see docs/connectors/write-a-connector.md)."""
    from pathlib import Path

    from connectors.sdk.scaffold import ScaffoldError, write

    try:
        files = write(name, Path(directory), force=force)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    for path in files:
        click.echo(f"wrote {path}")
    click.echo(f"test it: pytest {files[1]}; install it: copy {files[0].name} to <data_dir>/plugins/ and restart")


def _discovered(ctx: click.Context, data_dir: str | None):
    """The registry `serve` would build: built-ins, entry points and the data directory's plugins."""
    from connectors import default_registry

    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    return default_registry(settings.data_dir / "plugins"), settings.data_dir / "plugins"


@connectors_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@data_dir_option
@click.pass_context
def connectors_list(ctx, as_json: bool, data_dir: str | None) -> None:
    """Every connector found (built in, installed packages, <data_dir>/plugins) and those that failed to load."""
    registry, plugins = _discovered(ctx, data_dir)
    by_source: dict[str, list[str]] = {}
    for name in registry.names():
        by_source.setdefault(registry.sources.get(name, "builtin"), []).append(name)
    if as_json:
        _emit({"plugins_dir": str(plugins),
               "connectors": [{"source": s, "node_types": n} for s, n in by_source.items()],
               "credential_types": registry.credential_type_names(), "broken": registry.broken})
        return
    for source, names in by_source.items():
        click.echo(f"{source}: {', '.join(names)}")
    click.echo(f"credential types: {', '.join(registry.credential_type_names())}")
    for broken in registry.broken:
        click.echo(f"BROKEN {broken['source']}: {broken['error']} (skipped)")


@connectors_group.command("docs")
@click.option("--out", type=click.Path(dir_okay=False), help="write the page here (default: standard output)")
@click.option("--data-dir", type=click.Path(file_okay=False), help="also document this data directory's plugins")
@click.pass_context
def connectors_docs(ctx, out: str | None, data_dir: str | None) -> None:
    """The reference page of every connector, its params and credential types, made from their schemas."""
    from connectors import default_registry
    from connectors.sdk.docs import reference

    registry = _discovered(ctx, data_dir)[0] if data_dir else default_registry()
    page = reference(registry)
    if out is None:
        click.echo(page, nl=False)
        return
    from pathlib import Path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page)
    click.echo(f"wrote {out}: {len(registry.names())} node types, {len(registry.credential_type_names())} "
               "credential types")



@main.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--passphrase", help="encrypt the archive and include the master key in it (default: "
                                   "$FLOWFUSE_BACKUP_PASSPHRASE); without one the archive is plain and holds no key")
@data_dir_option
@click.pass_context
def backup_cmd(ctx, file: str, passphrase: str | None, data_dir: str | None) -> None:
    """Write a consistent snapshot of every database to FILE; flowfuse may keep running."""
    from pathlib import Path

    from . import backup

    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    passphrase = passphrase or os.environ.get(backup.PASSPHRASE_ENV) or None
    try:
        manifest = backup.create(settings.data_dir, Path(file), passphrase)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    sizes = ", ".join(f"{name} {size:,} B" for name, size in manifest["databases"].items())
    click.echo(f"backup written to {file}: {sizes}; "
               + ("encrypted, with the master key" if manifest["master_key"] else
                  "encrypted" if manifest["encrypted"] else "not encrypted"))
    if manifest.get("warning"):
        click.echo(f"note: {manifest['warning']}", err=True)


@main.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--passphrase", help="passphrase of an encrypted archive (default: $FLOWFUSE_BACKUP_PASSPHRASE)")
@data_dir_option
@click.pass_context
def restore_cmd(ctx, file: str, passphrase: str | None, data_dir: str | None) -> None:
    """Unpack the backup FILE into an empty (or new) data directory."""
    from pathlib import Path

    from . import backup

    settings = _settings(ctx, **{"storage.data_dir": data_dir})
    passphrase = passphrase or os.environ.get(backup.PASSPHRASE_ENV) or None
    try:
        manifest = backup.restore(Path(file), settings.data_dir, passphrase)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {', '.join(manifest['databases'])} into {settings.data_dir}")
    if not manifest["master_key"]:
        click.echo("note: the archive holds no master key: put flowfuse.key (mode 0600) into the data directory "
                   "or set FLOWFUSE_MASTER_KEY before starting flowfuse", err=True)


@main.command("doctor")
@click.option("--min-free-mb", type=click.IntRange(0), default=1024, show_default=True,
              help="warn when the data directory's file system has less free space")
@data_dir_option
@click.pass_context
def doctor_cmd(ctx, min_free_mb: int, data_dir: str | None) -> None:
    """Check the data directory (permissions, master key, databases, audit log, disk, clock, TLS, worker);
    exit 1 if any check fails."""
    from .doctor import FAIL, run_checks

    checks = run_checks(_settings(ctx, **{"storage.data_dir": data_dir}), min_free_mb)
    for check in checks:
        click.echo(check.line())
    if any(c.level == FAIL for c in checks):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
