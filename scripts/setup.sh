#!/usr/bin/env bash
# Create .venv and install lopbook with the pinned stack (sourced by build.sh and test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt "$@"
.venv/bin/pip install -q --no-deps -e .
# The JavaScript the book serves itself (MathJax, the Jupyter widgets manager, RequireJS), pinned by
# package-lock.json; lopbook/sphinx_ext.py copies it into the built book. Reinstalled only when the lock changes.
if ! command -v npm >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q && $SUDO apt-get install -y -q nodejs npm
fi
if ! cmp -s package-lock.json node_modules/.lopbook-lock; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.lopbook-lock
fi
