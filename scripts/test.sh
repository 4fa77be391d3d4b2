#!/usr/bin/env bash
# Set up and run the whole test suite: lint, library tests, every chapter in quick mode,
# the book build and a headless-Chromium check of every page. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver
fi
bash scripts/setup.sh -r requirements-test.txt
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check lopbook tests benchmarks
.venv/bin/python -m pytest "$@"
