#!/usr/bin/env bash
# Set up (or reuse) .venv and run the demo: the whole pipeline on the shipped sample pair.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
echo "==> running the demo on the sample pair (results in corrseg-demo/)"
.venv/bin/napari-corrseg demo --out corrseg-demo "$@"
cat <<'NEXT'

==> Next:
  source .venv/bin/activate                   # 1. put napari-corrseg and napari on your PATH
  napari-corrseg demo --gui                   # 2. open napari with the results and the plugin
                                              #    (or: napari, then Plugins > napari-corrseg)
  napari-corrseg match A.png B.png --out my-results   # 3. your own images (docs/cli.md)
NEXT
