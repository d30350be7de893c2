"""Run a script under Xvfb when there is no display (napari cannot draw offscreen)."""

from __future__ import annotations

import os
import shutil
import sys

_MARK = "_CORRSEG_UNDER_XVFB"


def ensure_display(screen: str = "1600x1000x24") -> None:
    """Return if a display exists; otherwise re-run this process under ``xvfb-run``.

    Exits with one readable line when neither a display nor ``xvfb-run`` is available.
    Also drops ``QT_QPA_PLATFORM``: the offscreen platform cannot draw napari's canvas.
    """
    if not (os.environ.get("DISPLAY") or os.environ.get(_MARK)):
        xvfb_run = shutil.which("xvfb-run")
        if xvfb_run is None:
            sys.exit("no display and no xvfb-run: install xvfb (bash scripts/install-xvfb.sh)")
        os.environ[_MARK] = "1"
        command = [xvfb_run, "-a", "-s", f"-screen 0 {screen}", sys.executable, *sys.argv]
        os.execv(xvfb_run, command)
    os.environ.pop("QT_QPA_PLATFORM", None)
