#!/usr/bin/env bash
# Create .venv and install lopbook with the pinned stack (sourced by build.sh and test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt "$@"
.venv/bin/pip install -q --no-deps -e .
