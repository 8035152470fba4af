#!/usr/bin/env bash
# Installs what is missing, then runs lint and the whole test suite (run as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-/opt/corral/venv}"
bash "$ROOT/scripts/install.sh"
cd "$ROOT"
"$VENV/bin/ruff" check src tests bench
"$VENV/bin/python" -m pytest -q "$@"
