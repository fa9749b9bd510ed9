"""Every node type FlowFuse has, registered through one registry the engine reads.

Connectors are found in three places, in this order:

1. the built-in modules named in `BUILTIN` (connectors/<name>.py, each with `register(registry)`),
2. the Python entry points of the group `flowfuse.connectors` of installed packages (each names a
   module with `register(registry)`, or a `register` function itself),
3. `<data_dir>/plugins/*.py`: an air-gapped install adds a connector by copying one file there.

A connector that fails to import or to register is logged, recorded in `registry.broken` as
{"source", "error"} (shown by `flowfuse connectors list` and the node-types API) and skipped,
together with whatever it registered before failing; it never stops start-up.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.nodes import Registry

log = logging.getLogger("flowfuse.connectors")
ENTRY_POINT_GROUP = "flowfuse.connectors"
#: Where plugin modules are imported as (`flowfuse_plugins.<file stem>`).
PLUGIN_PACKAGE = "flowfuse_plugins"

#: Where node types' icons are: local SVG files named by NodeType.icon (nothing is fetched from the network).
ICONS = Path(__file__).resolve().parent / "icons"

#: The built-in connector modules (each has `register(registry)`), one per line.
BUILTIN = [
    "core",
    "flow_control",
    "http",
    "slack",
    "teams",
    "sendgrid",
    "stripe",
    "github",
    "salesforce",
    "ai",
    "graphql",
    "soap",
    "email",
    "sql",
    "mqtt",
    "utilities",
]


def default_registry(plugins_dir: Path | str | None = None) -> Registry:
    """Every built-in connector, every installed entry point, and the plugins in `plugins_dir`."""
    registry = Registry()
    for name in BUILTIN:
        _load(registry, f"builtin:{name}", lambda name=name: importlib.import_module(f"{__name__}.{name}"))
    from .sdk import auth  # api_key and the OAuth2 types, unless a built-in module registered them already

    _load(registry, "builtin:sdk.auth", lambda: auth.register)
    for entry_point in _entry_points():
        _load(registry, f"entry point:{entry_point.name} ({entry_point.value})", entry_point.load)
    if plugins_dir is not None:
        for path in sorted(Path(plugins_dir).glob("*.py")):
            _load(registry, f"plugin:{path}", lambda path=path: _import_file(path))
    registry.source = "builtin"
    return registry


def icon_file(icon: str) -> Path | None:
    """The SVG file of a NodeType.icon, or None if it names none or one that does not exist (only a
    plain file name under ICONS: never a path out of it)."""
    if not icon or "/" in icon or "\\" in icon or icon.startswith(".") or not icon.endswith(".svg"):
        return None
    found = ICONS / icon
    return found if found.is_file() else None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    try:
        return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    except Exception:  # a broken installed distribution's metadata must not stop start-up either
        log.exception("could not read the %s entry points", ENTRY_POINT_GROUP)
        return []


def _import_file(path: Path) -> Any:
    name = f"{PLUGIN_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load(registry: Registry, source: str, load: Callable[[], Any]) -> None:
    """Import one connector and let it register; on any error take back what it added and record it."""
    before_types, before_credentials = set(registry.names()), set(registry.credential_type_names())
    registry.source = source
    try:
        found = load()
        register = found if callable(found) and not hasattr(found, "register") else getattr(found, "register", None)
        if not callable(register):
            raise TypeError("it has no register(registry) function")
        register(registry)
    except Exception as exc:  # noqa: BLE001 - whatever a plugin raises is reported, not raised
        registry.discard([n for n in registry.names() if n not in before_types],
                         [n for n in registry.credential_type_names() if n not in before_credentials])
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        registry.broken.append({"source": source, "error": error})
        log.error("connector %s skipped: %s", source, error)
    finally:
        registry.source = "builtin"


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "ICONS", "default_registry", "icon_file"]
