"""Regenerate the napari screenshots of docs/napari.md from the real plugin.

    .venv/bin/python scripts/make_screenshots.py [--model tiny] [--out docs/images]

Without a display it re-runs itself under ``xvfb-run`` (napari cannot draw with the
offscreen Qt platform). With the tiny model the results are not semantic: say so next to
the pictures, or pass ``--model sd2-base`` on a machine with the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="tiny", help="model for the widgets (default tiny)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder")
    args = parser.parse_args()
    from napari_corrseg.cli.display import ensure_display

    ensure_display("1920x1080x24")

    import napari

    from napari_corrseg._widgets._screenshots import make_screenshots

    viewer = napari.Viewer(show=True)
    try:
        for path in make_screenshots(viewer, args.out, model=args.model):
            print(path)
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
