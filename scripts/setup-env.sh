#!/usr/bin/env bash
# Create or reuse the local virtual environment .venv and install napari-corrseg into it.
#
#   bash scripts/setup-env.sh          # the package (what the demo needs)
#   bash scripts/setup-env.sh test     # plus the test tools
#
# torch is installed first with the pin these machines serve from local disk
# (torch==2.13.0, a CPU build); asking for torch later, through diffusers, would
# otherwise pull a multi-GB CUDA build. On a GPU machine install the CUDA build of
# torch you want first: this script keeps a torch that is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${pip[@]}" "torch==2.13.0"
fi
if [ -n "$extras" ]; then
    "${pip[@]}" -e ".[qt,${extras}]"
else
    "${pip[@]}" -e ".[qt]"
fi

# napari draws only on a real X server; without a display we use Xvfb.
if [ -z "${DISPLAY:-}" ] && ! command -v Xvfb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        bash scripts/install-xvfb.sh
    else
        echo "note: no display and no Xvfb; install it (Debian: apt-get install xvfb) to render napari" >&2
    fi
fi
