#!/usr/bin/env bash
# Installs Corral and everything it needs on Debian 12 (run as root).
# Idempotent: a second run only checks what is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-/opt/corral/venv}"
EXTRAS="${CORRAL_EXTRAS:-dev}"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (Corral creates cgroups, mounts and network namespaces)" >&2
    exit 1
fi

# System packages: sandbox (bubblewrap, libseccomp), networking (iproute2, nftables),
# the in-sandbox supervisor's compiler, and the tools tests drive inside sandboxes.
PKGS=(bubblewrap libseccomp2 iproute2 nftables gcc libc6-dev python3 python3-venv python3-pip
      procps psmisc util-linux ca-certificates openssl curl openssh-client socat git)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python 3.11+: the first python3 on PATH if new enough, else Debian's.
PY="$(command -v python3)"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=/usr/bin/python3; fi
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
fi
# Reinstall only when the dependencies or the checkout's location changed.
stamp="$VENV/.corral-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import corral' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
    echo "$want" > "$stamp"
fi
ln -sf "$VENV/bin/corral" /usr/local/bin/corral

# Build the in-sandbox supervisor now rather than on first use.
"$VENV/bin/corral" setup
