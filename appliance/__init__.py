"""The composition root: settings, storage, queue, vault, runtime, worker and the CLI."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path


def _import_lean() -> None:
    """Import huey and httpx without the extras they load whenever those are installed: huey.storage
    imports psycopg (for a Postgres queue FlowFuse does not use) and httpx imports rich and pygments
    (for its command line), about 9 and 3 MB in each of the web and worker processes. A None in
    sys.modules makes those imports fail quietly; the names are then freed again, so that the SQL
    connector still imports psycopg when one of its nodes runs."""
    hidden = [name for name in ("psycopg", "pygments", "rich") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
        import huey.storage  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


_import_lean()

#: Written by packaging/build.sh and bundled into the binary beside this module.
BUILD_INFO = Path(__file__).resolve().parent / "build_info.json"
UNKNOWN = "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.cache
def build_info() -> dict[str, str]:
    """Version, commit and build date: the binary's, as the build wrote them; from a checkout, asked of git
    ("unknown" where git or the metadata is not there)."""
    if BUILD_INFO.exists():
        try:
            found = json.loads(BUILD_INFO.read_text("utf-8"))
            return {key: str(found.get(key) or UNKNOWN) for key in ("version", "commit", "build_date")}
        except (OSError, ValueError):
            pass
    try:
        version = importlib.metadata.version("flowfuse")
    except importlib.metadata.PackageNotFoundError:
        version = UNKNOWN
    described = _git("describe", "--tags", "--always", "--dirty")
    if described and version != UNKNOWN and described != version:
        version = f"{version}+{described}"
    return {"version": version, "commit": _git("rev-parse", "HEAD") or UNKNOWN, "build_date": UNKNOWN}
