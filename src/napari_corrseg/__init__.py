"""napari-corrseg: correspondences, reliability maps and co-segmentation from the
self-attention of one Stable Diffusion 2 forward pass.

The public API is imported lazily so that ``import napari_corrseg`` stays cheap and
never pulls in torch, diffusers or Qt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AttentionMaps": "maps",
    "ImageGeometry": "maps",
    "load_engine": "engine",
    "inverse_mapping": "correspondence",
    "InverseMapping": "correspondence",
    "match": "correspondence",
    "Matches": "correspondence",
    "query": "correspondence",
    "transfer_points": "correspondence",
    "aggregate_attention": "correspondence",
    "segment": "segmentation",
    "Segmentation": "segmentation",
    "cosegment": "cosegmentation",
    "Cosegmentation": "cosegmentation",
    "propagate_labels": "cosegmentation",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .correspondence import (
        InverseMapping,
        Matches,
        aggregate_attention,
        inverse_mapping,
        match,
        query,
        transfer_points,
    )
    from .cosegmentation import Cosegmentation, cosegment, propagate_labels
    from .engine import load_engine
    from .maps import AttentionMaps, ImageGeometry
    from .segmentation import Segmentation, segment


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_corrseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
