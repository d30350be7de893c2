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
#
# It says what it is doing at every step (a first install takes a few minutes); pip's
# full output goes to .venv/setup.log.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
step() { printf '==> %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
    step "creating the virtual environment .venv"
    "${PYTHON:-python3}" -m venv .venv
else
    step "reusing the virtual environment .venv"
fi
log=.venv/setup.log
: > "$log"

# pip with its output in the log, and one line per package it fetches on the terminal
install() {
    local status
    set +e
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 \
        | tee -a "$log" \
        | awk '/^Collecting / { print "    fetching " $2; fflush() }
               /^Successfully installed/ { print "    installed " NF - 2 " packages"; fflush() }'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "pip failed (exit $status); the last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit "$status"
    fi
}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    step "installing torch 2.13.0 (CPU build) first, so that nothing pulls a CUDA build"
    install "torch==2.13.0"
else
    step "torch is already installed: $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
fi
if [ -n "$extras" ]; then
    step "installing napari-corrseg with napari, Qt and the '$extras' extra (a few minutes the first time)"
    install -e ".[qt,${extras}]"
else
    step "installing napari-corrseg with napari and Qt (a few minutes the first time)"
    install -e ".[qt]"
fi

# napari draws only on a real X server; without a display we use Xvfb.
if [ -z "${DISPLAY:-}" ] && ! command -v Xvfb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing Xvfb, so that napari can draw without a display"
        bash scripts/install-xvfb.sh
    else
        echo "note: no display and no Xvfb; install it (Debian: apt-get install xvfb) to render napari" >&2
    fi
fi
step "environment ready: .venv"
