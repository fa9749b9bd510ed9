#!/usr/bin/env bash
# Builds dist/flowfuse (one file, Linux x86-64), dist/flowfuse.sha256 and the CycloneDX SBOM dist/flowfuse.cdx.json.
# Usage: packaging/build.sh [PYTHON]   (PYTHON: the venv's python with pyinstaller and cyclonedx-bom; `make binary`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
WORK="$ROOT/build/flowfuse"
DIST="$ROOT/dist"
cd "$ROOT"
mkdir -p "$WORK" "$DIST"

# version, commit and build date, bundled as appliance/build_info.json (read by appliance.build_info)
VERSION="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$COMMIT" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  COMMIT="$COMMIT-dirty"
fi
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf '{"version": "%s", "commit": "%s", "build_date": "%s"}\n' "$VERSION" "$COMMIT" "$BUILD_DATE" > "$WORK/build_info.json"

# the binary's entry point: `flowfuse ARGS` (serve starts its children as `flowfuse web` and `flowfuse worker`)
cat > "$WORK/entry.py" <<'PYEOF'
import multiprocessing

multiprocessing.freeze_support()

from appliance.cli import main  # noqa: E402  (the CLI sets up logs, metrics, traces and error reports)

main(prog_name="flowfuse")
PYEOF

"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --workpath "$WORK/pyinstaller" --distpath "$DIST" "$ROOT/packaging/flowfuse.spec"

(cd "$DIST" && sha256sum flowfuse > flowfuse.sha256)

# SBOM: the Python packages in the binary, i.e. flowfuse and what it requires (not the build and test tools)
"$PY" -m cyclonedx_py environment --output-reproducible --of JSON -o "$WORK/environment.cdx.json" "$PY"
"$PY" - "$WORK/environment.cdx.json" "$DIST/flowfuse.cdx.json" "$VERSION" <<'PYEOF'
import importlib.metadata as md
import json
import re
import sys

from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

wanted, todo = set(), [("flowfuse", frozenset())]
while todo:
    name, extras = todo.pop()
    key = (norm(name), extras)
    if key in wanted:
        continue
    wanted.add(key)
    try:
        requires = md.distribution(name).requires or []
    except md.PackageNotFoundError:
        continue
    for line in requires:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            todo.append((req.name, frozenset(req.extras)))
names = {n for n, _ in wanted}
src, dest, version = sys.argv[1:4]
bom = json.load(open(src))
keep = [c for c in bom.get("components", []) if norm(c["name"]) in names]
refs = {c["bom-ref"] for c in keep}
bom["components"] = keep
bom["dependencies"] = [{"ref": d["ref"], "dependsOn": [x for x in d.get("dependsOn", []) if x in refs]}
                       for d in bom.get("dependencies", []) if d["ref"] in refs]
meta = bom.setdefault("metadata", {})
meta["component"] = {"type": "application", "bom-ref": "flowfuse-binary", "name": "flowfuse", "version": version}
bom["dependencies"].append({"ref": "flowfuse-binary", "dependsOn": sorted(refs)})
json.dump(bom, open(dest, "w"), indent=2)
print(f"SBOM: {len(keep)} Python packages in {dest}")
PYEOF
ls -l "$DIST/flowfuse" "$DIST/flowfuse.sha256" "$DIST/flowfuse.cdx.json"
