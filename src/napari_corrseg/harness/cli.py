"""Registers ``napari-corrseg evaluate`` with the command line when imported.

`napari_corrseg.cli` imports the modules in its ``EXTENSION_MODULES`` list while it
builds its parser; listing ``"napari_corrseg.harness.cli"`` there adds ``evaluate``.
"""

from __future__ import annotations

from .run import register_cli

register_cli()
