"""Qt and napari glue: the dock widgets, their workers and result layers (no algorithm)."""

from __future__ import annotations

from .collection import CollectionWidget
from .correspondence import CorrespondenceWidget
from .cosegmentation import CosegmentationWidget

__all__ = ["CollectionWidget", "CorrespondenceWidget", "CosegmentationWidget"]
