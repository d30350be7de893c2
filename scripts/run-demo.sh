#!/usr/bin/env bash
# Set up (or reuse) .venv and run the demo: the whole pipeline on the shipped sample pair.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/napari-corrseg demo --out corrseg-demo "$@"
