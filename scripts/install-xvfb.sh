#!/usr/bin/env bash
# Debian packages napari needs to draw without a physical display (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
    libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxcb-cursor0 libxkbcommon-x11-0 \
    libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 >/dev/null
