#!/usr/bin/env bash
# Install FlowFuse on an air-gapped Linux x86-64 host from the files beside this script (no network used):
#   sudo ./install.sh [--binary PATH] [--config PATH] [--root DIR]
# Creates the system user `flowfuse` and /var/lib/flowfuse (0700), installs the binary to /usr/local/bin/flowfuse,
# flowfuse.toml to /etc/flowfuse/ (kept if it is already there) and the hardened unit
# /etc/systemd/system/flowfuse.service, then prints the next step. Running it again is safe: it is how an upgrade
# replaces the binary (the data directory is migrated, after a backup, when the service starts).
# --root DIR installs under DIR instead of / and touches nothing else (no useradd, no chown, no systemctl): for tests
# and for preparing an image.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT=""
BINARY=""
CONFIG=""
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a path}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
first() { for f in "$@"; do [ -f "$f" ] && { echo "$f"; return 0; }; done; return 0; }
# beside this script (a release directory), else in the checkout this script belongs to
BINARY="${BINARY:-$(first "$HERE/flowfuse" "$HERE/../dist/flowfuse")}"
CONFIG="${CONFIG:-$(first "$HERE/flowfuse.toml" "$HERE/../flowfuse.toml")}"
UNIT="$(first "$HERE/flowfuse.service")"
[ -n "$BINARY" ] && [ -f "$BINARY" ] || { echo "install.sh: no flowfuse binary at ${BINARY:-$HERE/flowfuse}; pass --binary PATH (build it with 'make binary')" >&2; exit 1; }
[ -n "$CONFIG" ] && [ -f "$CONFIG" ] || { echo "install.sh: no flowfuse.toml found; pass --config PATH" >&2; exit 1; }
[ -n "$UNIT" ] || { echo "install.sh: flowfuse.service is missing beside install.sh" >&2; exit 1; }
if [ -f "$BINARY.sha256" ] || [ -f "$(dirname "$BINARY")/flowfuse.sha256" ]; then
  sums="$(first "$BINARY.sha256" "$(dirname "$BINARY")/flowfuse.sha256")"
  want="$(awk '{print $1}' "$sums")"
  have="$(sha256sum "$BINARY" | awk '{print $1}')"
  [ "$want" = "$have" ] || { echo "install.sh: $BINARY does not match its checksum in $sums; copy it again" >&2; exit 1; }
fi

FAKE=0
if [ -n "$ROOT" ]; then
  FAKE=1
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
elif [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or with --root DIR to install into a directory" >&2
  exit 1
fi

# 1. the system user and group `flowfuse` (no login, no home of its own beyond the data directory)
if [ "$FAKE" = 1 ]; then
  mkdir -p "$ROOT/etc"
  touch "$ROOT/etc/passwd" "$ROOT/etc/group"
  grep -q '^flowfuse:' "$ROOT/etc/group" || echo 'flowfuse:x:999:' >> "$ROOT/etc/group"
  grep -q '^flowfuse:' "$ROOT/etc/passwd" || \
    echo 'flowfuse:x:999:999:FlowFuse:/var/lib/flowfuse:/usr/sbin/nologin' >> "$ROOT/etc/passwd"
elif ! id -u flowfuse >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/flowfuse --no-create-home --shell /usr/sbin/nologin \
    --comment FlowFuse flowfuse
fi

# 2. the data directory, readable by the service only
install -d -m 0700 "$ROOT/var/lib/flowfuse"
[ "$FAKE" = 1 ] || chown flowfuse:flowfuse /var/lib/flowfuse

# 3. the binary (replaced atomically: a running service keeps its old file until it restarts)
install -d -m 0755 "$ROOT/usr/local/bin"
install -m 0755 "$BINARY" "$ROOT/usr/local/bin/.flowfuse.new"
mv -f "$ROOT/usr/local/bin/.flowfuse.new" "$ROOT/usr/local/bin/flowfuse"

# 4. the settings: installed once, never overwritten (the operator edits them)
install -d -m 0755 "$ROOT/etc/flowfuse"
if [ -f "$ROOT/etc/flowfuse/flowfuse.toml" ]; then
  echo "kept the existing $ROOT/etc/flowfuse/flowfuse.toml"
else
  install -m 0640 "$CONFIG" "$ROOT/etc/flowfuse/flowfuse.toml"
  [ "$FAKE" = 1 ] || chgrp flowfuse /etc/flowfuse/flowfuse.toml
fi

# 5. the hardened systemd unit
install -d -m 0755 "$ROOT/etc/systemd/system"
install -m 0644 "$UNIT" "$ROOT/etc/systemd/system/flowfuse.service"
if [ "$FAKE" = 0 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
fi

echo "FlowFuse $("$ROOT/usr/local/bin/flowfuse" --version 2>/dev/null | head -1 | sed 's/^flowfuse //') installed${ROOT:+ under $ROOT}."
if [ "$FAKE" = 0 ] && systemctl is-active --quiet flowfuse 2>/dev/null; then
  echo "Next: systemctl restart flowfuse   (the service is running the old binary; it migrates the data after a backup)"
else
  cat <<NEXT
Next steps:
  1. edit /etc/flowfuse/flowfuse.toml (at least [server] host, port and base_url)
  2. create the first admin:
       sudo -u flowfuse FLOWFUSE_CONFIG=/etc/flowfuse/flowfuse.toml flowfuse init --data-dir /var/lib/flowfuse --admin-email you@example.com
  3. start it: systemctl enable --now flowfuse
     check it:  curl -fsS http://127.0.0.1:8080/readyz   (journalctl -u flowfuse for its logs)
NEXT
fi
