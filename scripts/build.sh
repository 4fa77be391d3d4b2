#!/usr/bin/env bash
# Set up and build the book from the cached results in data/ (HTML in _build/html).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export LOPBOOK_MODE=cached MUJOCO_GL=${MUJOCO_GL:-egl}
.venv/bin/jupyter-book build -W -n --keep-going .
echo "book built: $(pwd)/_build/html/index.html"
