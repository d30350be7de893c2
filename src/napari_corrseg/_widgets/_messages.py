"""What the widgets say: stage names, layer names in library messages, tiny-model warning."""

from __future__ import annotations

import re
from collections.abc import Sequence

from napari.utils.notifications import show_warning

#: Human names of the stages the engine and pipeline report.
STAGE_NAMES = {
    "load": "preparing",
    "load model": "loading model",
    "encode": "encoding images",
    "forward": "UNet forward pass",
    "metrics": "computing metrics",
    "match": "matching",
    "segment": "segmenting",
    "cache": "reading cache",
    "layers": "building layers",
    "transfer": "transferring",
    "propagate": "propagating",
    "read": "reading images",
    "verify": "checking the token store",
    "extract": "computing tokens",
    "cross maps": "cross maps",
    "rematch": "matching again",
    "cluster": "clustering segments",
    "save": "saving",
    "open": "opening the session",
}
PREFIX = "napari-corrseg"


def name_images(message: str, names: Sequence[str]) -> str:
    """Replace ``image 3`` in a library message by the layer's name (``image 'tgt'``)."""

    def named(match: re.Match) -> str:
        index = int(match.group(2))
        if 0 <= index < len(names):
            return f"{match.group(1)}{names[index]!r}"
        return match.group(0)

    return re.sub(r"\b(images? )(\d+)\b", named, message)


_WARNED_TINY: set[str] = set()


def warn_if_tiny(maps, results: str) -> None:
    """Warn once a session per kind of result that ``results`` are not semantic when
    ``maps`` came from the tiny model (a toast every run would nag, and costs frames)."""
    if maps.settings.get("tiny_model"):
        warn_tiny(results)


def warn_tiny(results: str) -> None:
    """Warn (once a session per kind of result) that the tiny model's ``results`` are not
    semantic."""
    if results not in _WARNED_TINY:
        _WARNED_TINY.add(results)
        show_warning(
            f"{PREFIX}: the tiny random model was used; {results} are not semantic. "
            "Choose sd2-base or point the model field at SD2 weights."
        )
