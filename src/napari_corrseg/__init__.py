"""napari-corrseg: correspondences, reliability maps and co-segmentation from the
self-attention of one Stable Diffusion 2 forward pass.

The public API is imported lazily so that ``import napari_corrseg`` stays cheap and
never pulls in torch, diffusers or Qt.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "AttentionMaps": "core.maps",
    "ImageGeometry": "core.maps",
    "load_engine": "engine",
    "inverse_mapping": "core.correspondence",
    "InverseMapping": "core.correspondence",
    "match": "core.correspondence",
    "Matches": "core.correspondence",
    "query": "core.correspondence",
    "transfer_points": "core.correspondence",
    "aggregate_attention": "core.correspondence",
    "segment": "core.segmentation",
    "Segmentation": "core.segmentation",
    "cosegment": "collection.cosegment",
    "Cosegmentation": "core.cosegmentation",
    "propagate_labels": "core.cosegmentation",
    "transfer_collection": "collection.transfer",
    "CollectionTransfer": "collection.transfer",
}

#: Modules that lived at the top of the package before it was grouped by layer: the old
#: import paths (``napari_corrseg.maps``, ``from napari_corrseg.io import read_image``)
#: keep working and give the same module objects.
MOVED_MODULES = {
    "maps": "core.maps",
    "correspondence": "core.correspondence",
    "segmentation": "core.segmentation",
    "cosegmentation": "core.cosegmentation",
    "evaluation": "core.evaluation",
    "images": "core.images",
    "io": "files.io",
    "export": "files.export",
    "cache": "files.cache",
    "latent_cache": "files.latent_cache",
    "sample_data": "files.sample_data",
    "pipeline": "tasks.pipeline",
    "results": "tasks.results",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .collection.cosegment import cosegment
    from .collection.transfer import CollectionTransfer, transfer_collection
    from .core.correspondence import (
        InverseMapping,
        Matches,
        aggregate_attention,
        inverse_mapping,
        match,
        query,
        transfer_points,
    )
    from .core.cosegmentation import Cosegmentation, propagate_labels
    from .core.maps import AttentionMaps, ImageGeometry
    from .core.segmentation import Segmentation, segment
    from .engine import load_engine


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``napari_corrseg.<old name>`` as the module it moved to (same object)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        moved = spec.name.partition(".")[2]
        module = importlib.import_module(f"{__name__}.{MOVED_MODULES[moved]}")
        spec.loader_state = module.__spec__  # the import system replaces it next
        return module

    def exec_module(self, module):
        # the target module is already executed; the import system has just set its
        # __spec__ to the alias's, which would make its own relative imports resolve
        # against the wrong parent (ImportWarning "__package__ != __spec__.parent")
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        if name in MOVED_MODULES:  # napari_corrseg.maps without importing it first
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'napari_corrseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
