"""SQL: parameterised queries, inserts, upserts and a "new rows" trigger on PostgreSQL, MySQL/MariaDB
and SQLite.

No SQL text is ever built from item data. The `query` of `sql.query` is literal text from the flow
(never an expression); item data reaches it only as bound parameters. `sql.insert`, `sql.upsert`
and `sql.new_rows` build their statements from identifiers (table and column names) that are
literal params of the flow, checked against `IDENTIFIER` and quoted, and bind every value.

Which database a node talks to follows from its credential's type (`postgres`, `mysql`, `sqlite`).
Drivers are blocking (psycopg 3, PyMySQL, the standard sqlite3), so every call runs in a thread; one
node run is one connection and one transaction, committed when every item is done.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import re
import sqlite3
import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .sdk import CredentialType, Field, NodeContext, NodeError, NodeType, Param, PollResult, Registry

#: A plain SQL identifier: what `table`, `column`, `key` and the names in `values` must be.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DIALECTS = ("postgres", "mysql", "sqlite")
CONNECT_TIMEOUT_S = 10


# -- identifiers -------------------------------------------------------------------------------------------------


def _identifier_problem(name: Any, what: str, dotted: bool = False) -> str | None:
    parts = name.split(".") if isinstance(name, str) and dotted else [name]
    if not isinstance(name, str) or len(parts) > 2 or not all(isinstance(p, str) and IDENTIFIER.match(p)
                                                              for p in parts):
        shape = "a table name, or schema.table," if dotted else "a column name"
        return (f"{what} {name!r} is not a plain SQL identifier: it must be {shape} made of letters, digits and _ "
                "(not starting with a digit, at most 63 characters)")
    return None


def quote(dialect: str, name: str) -> str:
    """A checked identifier (or schema.table) quoted for the dialect."""
    mark = "`" if dialect == "mysql" else '"'
    return ".".join(f"{mark}{part}{mark}" for part in name.split("."))


def _checked(dialect: str, name: Any, what: str, dotted: bool = False) -> str:
    problem = _identifier_problem(name, what, dotted)
    if problem:
        raise NodeError(problem)
    return quote(dialect, name)


def _validate_write(params: Mapping[str, Any]) -> list[str]:
    """insert/upsert: the table, the column names of `values` and the key columns are literal identifiers."""
    errors = []
    table_problem = _identifier_problem(params.get("table"), "param 'table'", dotted=True)
    if table_problem:
        errors.append(table_problem)
    values = params.get("values")
    if not isinstance(values, dict) or not values:
        errors.append("param 'values' must be an object written in the flow, {column: value or expression}, "
                      "with at least one column (column names cannot come from an expression)")
        return errors
    errors += [p for column in values if (p := _identifier_problem(column, "column"))]
    if "key" in params:
        key = params.get("key")
        if not isinstance(key, list) or not key:
            errors.append("param 'key' must be a list of the columns of the unique key, e.g. [\"id\"]")
        else:
            for column in key:
                problem = _identifier_problem(column, "key column")
                if problem:
                    errors.append(problem)
                elif column not in values:
                    errors.append(f"key column {column!r} must also be one of the columns in 'values'")
    return errors


def _validate_new_rows(params: Mapping[str, Any]) -> list[str]:
    errors = [p for p in (_identifier_problem(params.get("table"), "param 'table'", dotted=True),
                          _identifier_problem(params.get("column"), "param 'column'")) if p]
    limit = params.get("limit", 100)
    if isinstance(limit, int) and not 1 <= limit <= 10_000:
        errors.append("param 'limit' must be between 1 and 10000")
    return errors


# -- connections -------------------------------------------------------------------------------------------------


def _dialect(credential: Mapping[str, Any] | None) -> str:
    kind = (credential or {}).get("type")
    if kind not in DIALECTS:
        raise NodeError("an SQL node needs a credential of type postgres, mysql or sqlite"
                        + (f" (got {kind!r})" if kind else ""))
    return kind


def _port(credential: Mapping[str, Any], default: int) -> int:
    raw = credential.get("port") or str(default)
    if not str(raw).isdigit() or not 0 < int(raw) < 65536:
        raise NodeError(f"the credential's port {raw!r} is not a port number")
    return int(raw)


def _tls_context(credential: Mapping[str, Any], verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=credential.get("ca_cert") or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _sqlite_path(credential: Mapping[str, Any]) -> Path:
    path = Path(credential.get("path") or "")
    if not path.is_absolute():
        raise NodeError(f"the sqlite credential's path {str(path)!r} must be an absolute path to a database file")
    if (path.parent / "flowfuse.key").exists():
        # the appliance's own data directory: its databases are not for flows to read or write
        raise NodeError("the sqlite credential points into FlowFuse's own data directory; use another database file")
    if not path.is_file():
        raise NodeError(f"no SQLite database at {str(path)!r} (the file must exist)")
    return path


def connect(credential: Mapping[str, Any]) -> Any:
    """A DB-API connection for a postgres, mysql or sqlite credential (blocking; call it in a thread)."""
    dialect = _dialect(credential)
    try:
        if dialect == "postgres":
            import psycopg

            return psycopg.connect(host=credential.get("host"), port=_port(credential, 5432),
                                   dbname=credential.get("database"), user=credential.get("user"),
                                   password=credential.get("password") or None,
                                   sslmode=credential.get("sslmode") or "prefer", connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="FlowFuse")
        if dialect == "mysql":
            import pymysql

            mode = credential.get("ssl") or "preferred"
            tls: dict[str, Any] = {"ssl_disabled": True} if mode == "disabled" else \
                {"ssl": _tls_context(credential, verify=mode == "verify")} if mode in ("required", "verify") else {}
            return pymysql.connect(host=credential.get("host"), port=_port(credential, 3306),
                                   database=credential.get("database") or None, user=credential.get("user"),
                                   password=credential.get("password") or "", charset="utf8mb4",
                                   connect_timeout=CONNECT_TIMEOUT_S, autocommit=False, **tls)
        conn = sqlite3.connect(_sqlite_path(credential).as_uri() + "?mode=rw", uri=True, timeout=5,
                               isolation_level="DEFERRED", check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=ON")
        return conn
    except NodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - each driver has its own errors; say which database refused and why
        raise NodeError(f"cannot connect to the {dialect} database: {_driver_message(exc, credential)}") from None


def _driver_message(exc: BaseException, credential: Mapping[str, Any]) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = credential.get("password")
    return text.replace(password, "***") if password else text


def jsonable(value: Any) -> Any:
    """A column value as JSON: dates as ISO 8601, exact numerics as strings, bytes as base64."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _bindable(value: Any) -> Any:
    """An item value as a bound parameter: objects and lists travel as JSON text."""
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value)
    return value


def _rows(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [{name: jsonable(v) for name, v in zip(names, row)} for row in cursor.fetchall()]


def _in_transaction(credential: Mapping[str, Any], work) -> Any:
    """Run `work(conn, cursor)` in one transaction: committed if it returns, rolled back if it raises."""
    conn = connect(credential)
    try:
        cursor = conn.cursor()
        try:
            result = work(conn, cursor)
        except NodeError:
            conn.rollback()
            raise
        except Exception as exc:  # noqa: BLE001 - the driver's error, whatever its class, is the user's message
            conn.rollback()
            raise NodeError(f"the {credential['type']} database refused the statement: "
                            f"{_driver_message(exc, credential)}") from None
        conn.commit()
        return result
    finally:
        conn.close()


# -- nodes -------------------------------------------------------------------------------------------------------


async def _query(ctx: NodeContext, items: list[dict]) -> list[dict]:
    credential = ctx.credential
    _dialect(credential)
    sql = ctx.param("query")
    bound = []
    for item in items:
        values = ctx.param("values", item)
        if values is not None and not isinstance(values, (list, dict)):
            raise NodeError("param 'values' must be a list (for positional placeholders) or an object "
                            "(for named placeholders)")
        if isinstance(values, list):
            bound.append([_bindable(v) for v in values])
        elif isinstance(values, dict):
            bound.append({str(k): _bindable(v) for k, v in values.items()})
        else:
            bound.append(None)

    def work(conn, cursor):
        out = []
        for values in bound:
            if values is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, values)
            if cursor.description:
                out += _rows(cursor)
            else:
                out.append({"rowcount": cursor.rowcount})
        return out

    return await asyncio.to_thread(_in_transaction, credential, work)


def _placeholders(dialect: str, n: int) -> str:
    return ", ".join(["?" if dialect == "sqlite" else "%s"] * n)


def _insert_sql(dialect: str, table: str, columns: list[str], key: list[str] | None) -> str:
    cols = [_checked(dialect, c, "column") for c in columns]
    sql = (f"INSERT INTO {_checked(dialect, table, 'table', dotted=True)} ({', '.join(cols)}) "
           f"VALUES ({_placeholders(dialect, len(cols))})")
    if key is None:
        return sql
    keys = [_checked(dialect, c, "key column") for c in key]
    others = [c for c, name in zip(cols, columns) if name not in key]
    if dialect == "mysql":  # MySQL/MariaDB take the conflict from any unique key of the table
        updates = ", ".join(f"{c} = VALUES({c})" for c in others) or f"{keys[0]} = {keys[0]}"
        return f"{sql} ON DUPLICATE KEY UPDATE {updates}"
    action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in others) if others else "DO NOTHING"
    return f"{sql} ON CONFLICT ({', '.join(keys)}) {action}"


async def _write(ctx: NodeContext, items: list[dict], upsert: bool) -> list[dict]:
    credential = ctx.credential
    dialect = _dialect(credential)
    table = ctx.param("table")
    key = ctx.param("key") if upsert else None
    problems = _validate_write({"table": table, "values": ctx.node.params["values"].source,
                                **({"key": key} if upsert else {})})
    if problems:
        raise NodeError(problems[0])
    rows = []
    for item in items:
        values = ctx.param("values", item)
        if not isinstance(values, dict):
            raise NodeError("param 'values' must be an object {column: value}")
        rows.append(values)
    if not rows:
        return []
    columns = list(rows[0])
    sql = _insert_sql(dialect, table, columns, key)

    def work(conn, cursor):
        cursor.executemany(sql, [[_bindable(row[c]) for c in columns] for row in rows])
        return [{c: jsonable(row[c]) for c in columns} for row in rows]

    return await asyncio.to_thread(_in_transaction, credential, work)


async def _insert(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return await _write(ctx, items, upsert=False)


async def _upsert(ctx: NodeContext, items: list[dict]) -> list[dict]:
    return await _write(ctx, items, upsert=True)


# -- the new rows trigger ----------------------------------------------------------------------------------------


def new_rows(credential: Mapping[str, Any], params: Mapping[str, Any], cursor: Any) -> PollResult:
    """One poll: the rows whose `column` is above the cursor's `last`, in order, at most `limit`.

    The first poll (cursor None) only notes the column's current maximum, so that activating a flow
    does not replay the table; `start: "beginning"` takes every row instead.
    """
    dialect = _dialect(credential)
    table = _checked(dialect, params.get("table"), "param 'table'", dotted=True)
    column = _checked(dialect, params.get("column"), "param 'column'")
    limit = int(params.get("limit") or 100)
    mark = "?" if dialect == "sqlite" else "%s"

    def work(conn, cur):
        if cursor is None and (params.get("start") or "now") == "now":
            cur.execute(f"SELECT MAX({column}) FROM {table}")
            return PollResult([], {"last": jsonable(cur.fetchone()[0])})
        last = cursor.get("last") if isinstance(cursor, dict) else None
        if last is None:
            cur.execute(f"SELECT * FROM {table} ORDER BY {column} LIMIT {limit}")
        else:
            cur.execute(f"SELECT * FROM {table} WHERE {column} > {mark} ORDER BY {column} LIMIT {limit}", [last])
        rows = _rows(cur)
        if not rows:
            return PollResult([], {"last": last})
        return PollResult(rows, {"last": rows[-1].get(params["column"])})

    return _in_transaction(credential, work)


async def _poll(pctx: Any) -> PollResult:
    return await asyncio.to_thread(new_rows, pctx.credential, pctx.params, pctx.cursor)


# -- registration ------------------------------------------------------------------------------------------------

_HOST = {"host": Field("Host", secret=False), "port": Field("Port", secret=False, required=False)}
CREDENTIAL_TYPES = (
    CredentialType("postgres", {**_HOST, "database": Field("Database", secret=False),
                                "user": Field("User", secret=False), "password": Field("Password", required=False),
                                "sslmode": Field("SSL mode (disable, prefer, require, verify-ca, verify-full)",
                                                 secret=False, required=False)},
                   description="A PostgreSQL server (port 5432 unless given)."),
    CredentialType("mysql", {**_HOST, "database": Field("Database", secret=False, required=False),
                             "user": Field("User", secret=False), "password": Field("Password", required=False),
                             "ssl": Field("TLS: preferred, disabled, required or verify", secret=False,
                                          required=False),
                             "ca_cert": Field("CA certificate (PEM) to verify the server with", secret=False,
                                              required=False)},
                   description="A MySQL or MariaDB server (port 3306 unless given)."),
    CredentialType("sqlite", {"path": Field("Absolute path of an existing database file", secret=False)},
                   description="A SQLite database file on the FlowFuse machine."),
)
_CREDENTIALS = ("postgres", "mysql", "sqlite")
_TABLE = Param("string", required=True, expression=False, description="table name, or schema.table")
_VALUES = Param("object", required=True, description="{column: value or expression}; column names are literal")


def register(registry: Registry) -> None:
    for credential_type in CREDENTIAL_TYPES:
        registry.add_credential_type(credential_type)
    common = {"category": "SQL", "icon": "sql.svg", "credential_types": _CREDENTIALS}
    registry.add(NodeType(
        type="sql.query", run=_query, label="SQL query", **common,
        params={"query": Param("string", required=True, expression=False,
                               description="SQL with placeholders: %s or %(name)s on PostgreSQL and MySQL, "
                                           "? or :name on SQLite"),
                "values": Param("any", description="the placeholders' values: a list, or an object for named ones")},
        description="Runs one parameterised statement per item, in one transaction; outputs the rows it returns "
                    "(or {rowcount})."))
    registry.add(NodeType(
        type="sql.insert", run=_insert, label="SQL insert", **common, validate=_validate_write,
        params={"table": _TABLE, "values": _VALUES},
        description="Inserts one row per item, in one transaction; outputs the values written."))
    registry.add(NodeType(
        type="sql.upsert", run=_upsert, label="SQL upsert", **common, validate=_validate_write,
        params={"table": _TABLE, "values": _VALUES,
                "key": Param("list", required=True, expression=False,
                             description="the columns of the unique key that decides insert or update")},
        description="Inserts a row per item, or updates the row with the same key; outputs the values written."))
    registry.add(NodeType(
        type="sql.new_rows", run=None, label="SQL new rows", **common, trigger=True, trigger_kind="polling",
        poll=_poll, validate=_validate_new_rows,
        params={"table": _TABLE,
                "column": Param("string", required=True, expression=False,
                                description="an always increasing column (an id or serial) that orders new rows"),
                "interval_s": Param("number", default=60, expression=False),
                "limit": Param("integer", default=100, expression=False, description="rows per poll, at most"),
                "start": Param("string", default="now", choices=("now", "beginning"), expression=False,
                               description="'now': only rows added after activation; 'beginning': every row")},
        description="Starts the flow with each row added to a table since the last poll, each row once."))
