"""Logging of every FlowFuse process: JSON lines, or human-readable text on a terminal; no secrets.

`setup(settings, role)` replaces the root logger's handlers with one on stderr. `[logging] format`
"auto" writes JSON lines (one object per record: ts, level, logger, msg, role, pid, request_id,
execution_id, exc) unless stderr is a terminal; "json" and "text" force one or the other.

The request id (web requests) and the execution id (set by the engine while it runs one)
travel in context variables, so every record logged while handling that
request or running that execution carries them, in this task and the tasks it starts.

`Redact`, the handler's filter, rewrites every record before it is written: the values of
Authorization, Proxy-Authorization, Cookie and Set-Cookie headers, FlowFuse API keys (`ffk_...`),
`password=`/`token=`-style parameters, and the secret values of every credential used in this
process (`remember_secrets`, called whenever a run's node is given a credential) become `[redacted]`,
in the message, its arguments and the traceback alike.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import IO

from engine.executor import current_execution

from .settings import Settings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowfuse_request_id", default=None)
execution_id = current_execution  # set by the engine while it runs an execution

REDACTED = "[redacted]"
#: Most credential secrets remembered per process (least recently used are forgotten first).
KNOWN_MAX = 4096
_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization|cookie|set-cookie|x-api-key)"  # the header's name
    r"(\"?'?\s*[:=]\s*b?[\"']?)"  # its separator: `Name: v`, `'name': 'v'`, `"name": "v"`, `name=v`
    r"([^\"'\r\n,}\]]+)")  # its value, up to the end of the quoted string, line, pair or list
_API_KEY = re.compile(r"ffk_[A-Za-z0-9_\-]{4,}")
_PARAM = re.compile(r"(?i)\b((?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|client[_-]?secret|"
                    r"password|passwd)=)([^&\s\"']+)")
_known: OrderedDict[str, None] = OrderedDict()
_known_lock = threading.Lock()
_role = "cli"
#: Whether `setup` ran in this process.
configured = False


def remember_secrets(values: Iterable[str]) -> None:
    """Keep these values out of every later log record of this process (values under 4 characters
    are ignored: they would redact ordinary text at random)."""
    with _known_lock:
        for value in values:
            if isinstance(value, str) and len(value) >= 4:
                _known[value] = None
                _known.move_to_end(value)
        while len(_known) > KNOWN_MAX:
            _known.popitem(last=False)


def redact(text: str) -> str:
    """`text` with every secret this module knows of replaced by [redacted]."""
    if _known:
        with _known_lock:
            known = list(_known)
        for value in sorted(known, key=len, reverse=True):  # longer first: one secret may contain another
            if value in text:
                text = text.replace(value, REDACTED)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _API_KEY.sub("ffk_" + REDACTED, text)
    return _PARAM.sub(lambda m: m.group(1) + REDACTED, text)


class Redact(logging.Filter):
    """Adds role, request_id and execution_id to each record and redacts its text (see module docstring).

    The message is formatted here (arguments included) and the traceback rendered here, so that
    no formatter after it can reintroduce what was redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "execution_id"):
            record.execution_id = execution_id.get()
        record.role = _role
        try:
            message = record.getMessage()
        except Exception:  # a wrong format string: still log what there is
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the (redacted) exc_text is what formatters print
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "role": getattr(record, "role", _role),
            "pid": record.process,
        }
        for key in ("request_id", "execution_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger [ids]: message` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{key[0:3]}={value}" for key in ("request_id", "execution_id")
               if (value := getattr(record, key, None))]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def use_json(settings: Settings, stream: IO | None = None) -> bool:
    fmt = settings.logging.format
    if fmt != "auto":
        return fmt == "json"
    stream = stream or sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def setup(settings: Settings, role: str, stream: IO | None = None) -> logging.Handler:
    """Send every log record of this process to `stream` (stderr), formatted and redacted; returns the handler."""
    global _role, configured
    _role, configured = role, True
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json(settings, stream) else TextFormatter())
    handler.addFilter(Redact())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.logging.level.upper())
    adopt("uvicorn", "uvicorn.error", "huey", "huey.consumer")
    try:  # uvicorn applies its default logging config when it starts: let it configure no logger of its own
        from uvicorn.config import LOGGING_CONFIG
        LOGGING_CONFIG["loggers"] = {}
    except ImportError:  # pragma: no cover
        pass
    sys.excepthook = _unhandled  # an uncaught exception is a (redacted) log record too, not raw stderr
    threading.excepthook = _unhandled_in_thread
    return handler


def _unhandled(kind, exc, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("flowfuse").critical("unhandled error", exc_info=(kind, exc, tb))


def _unhandled_in_thread(args) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("flowfuse").critical("unhandled error in thread %s", getattr(args.thread, "name", "?"),
                                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def adopt(*names: str) -> None:
    """Let loggers that installed handlers of their own (uvicorn configures its loggers when it
    starts) go through the root handler instead, so their records are formatted and redacted too."""
    for name in names:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
