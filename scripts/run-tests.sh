#!/usr/bin/env bash
# Set up (or reuse) .venv with the test tools, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh test
unset QT_QPA_PLATFORM   # napari needs a real (Xvfb) X server, not the offscreen platform
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
