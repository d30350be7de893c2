"""The mark on every layer this plugin makes, and how the plugin tells a user's edit.

A plugin layer carries ``layer.metadata["napari_corrseg"]``, a dict:

==============  ==============================================================================
``version``     1 (this scheme)
``widget``      the dock that made it: ``"correspondence"``, ``"cosegmentation"``,
                ``"collection"``
``role``        what it shows: ``"matches:source"``, ``"metric:entropy"``, ``"coseg"``,
                ``"transfer"``, ``"propagated"``, ``"query:heatmap"``...
``group``       which result set it belongs to (``"run"``, ``"query"``, ``"transfer"``,
                ``"propagation"``): a new result of a group replaces the old set
``image``       reference of the image it lies on (`layer_ref`): ``"layer:<uuid>"`` for an
                image layer, ``"layer:<uuid>#<plane>"`` for a plane of a stack;
                ``"image:<store key>"`` for an image of a collection (its content hash)
``source``      reference of the user layer it was made from (transfer, propagation)
``run``         the number of the widget's run that made it
``name``        the name the plugin gave it (a different name means the user renamed it)
``fingerprint`` hash of the data the plugin wrote (a different hash means the user edited it)
==============  ==============================================================================

plus provenance (``image_layer``: the image's name when written, thresholds, scores).

A layer is found by these keys, never by its name. When the user has renamed or edited
a plugin layer it is *released*: the mark moves to ``metadata["napari_corrseg_released"]``
(with ``released`` = the reason), so from then on it is the user's layer, which the plugin
reads but never changes or removes, and the next result goes to a new layer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

#: Metadata key of the mark on a plugin layer.
PLUGIN_KEY = "napari_corrseg"
#: Metadata key of the mark of a layer the user took over (renamed or edited).
RELEASED_KEY = "napari_corrseg_released"
TAG_VERSION = 1


def layer_ref(layer, plane: int | None = None) -> str:
    """A reference to ``layer`` (or one plane of a stack) that survives renaming."""
    ref = f"layer:{layer.unique_id}"
    return ref if plane is None else f"{ref}#{int(plane)}"


def fingerprint(data: Any) -> str:
    """A short hash of layer data (shape, dtype and values)."""
    digest = hashlib.blake2b(digest_size=12)
    items = data if isinstance(data, list) else [data]  # Shapes data is a list of arrays
    for item in items:
        array = np.ascontiguousarray(np.asarray(item))
        digest.update(f"{array.shape}|{array.dtype.str}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def tag_of(layer) -> dict[str, Any] | None:
    """The plugin mark of ``layer``, or None for a user's layer."""
    mark = layer.metadata.get(PLUGIN_KEY)
    return mark if isinstance(mark, dict) else None


def released_tag_of(layer) -> dict[str, Any] | None:
    """The mark a layer had before the user took it over, or None."""
    mark = layer.metadata.get(RELEASED_KEY)
    return mark if isinstance(mark, dict) else None


def is_plugin_layer(layer, **keys: Any) -> bool:
    """Whether ``layer`` is a (not released) plugin layer whose mark has all ``keys``."""
    mark = tag_of(layer)
    return mark is not None and all(mark.get(key) == value for key, value in keys.items())


def find_result(viewer, **keys: Any):
    """The plugin layer whose mark has all ``keys`` (e.g. ``widget``, ``role``, ``image``)."""
    for layer in viewer.layers:
        if is_plugin_layer(layer, **keys):
            return layer
    return None


def results_of(viewer, **keys: Any) -> list:
    """Every plugin layer whose mark has all ``keys``, in layer-list order."""
    return [layer for layer in viewer.layers if is_plugin_layer(layer, **keys)]


def role_of(layer) -> str:
    """The role of a plugin layer (``""`` for a user's layer)."""
    mark = tag_of(layer)
    return str(mark.get("role", "")) if mark else ""


def stamp(layer, mark: dict[str, Any]) -> None:
    """Write ``mark`` on ``layer`` with its current name and data fingerprint."""
    mark = {
        **mark,
        "version": TAG_VERSION,
        "name": layer.name,
        "fingerprint": fingerprint(layer.data),
    }
    if layer.metadata.get(PLUGIN_KEY) != mark:
        layer.metadata = {**layer.metadata, PLUGIN_KEY: mark}


def user_change(layer) -> str | None:
    """How the user changed a plugin layer since the plugin last wrote it.

    Returns
    -------
    str or None
        ``"renamed"``, ``"edited"`` (its data differ from what the plugin wrote), or None.
    """
    mark = tag_of(layer)
    if mark is None:
        return None
    if "name" in mark and layer.name != mark["name"]:
        return "renamed"
    if "fingerprint" in mark and fingerprint(layer.data) != mark["fingerprint"]:
        return "edited"
    return None


def collection_ref(key: str) -> str:
    """The ``image`` reference of a collection image: its token store key."""
    return f"image:{key}"


def edited_data(layer) -> bool:
    """Whether a plugin layer's data differ from what the plugin last wrote."""
    mark = tag_of(layer)
    return mark is not None and mark.get("fingerprint") != fingerprint(layer.data)


def mark_read(layer) -> None:
    """Record a plugin layer's current data as seen: a *working* layer whose edits the
    dock took into its own state (the Collection dock) is then not released. Its name
    is left as the mark says, so a rename is still noticed."""
    mark = tag_of(layer)
    if mark is not None:
        layer.metadata = {
            **layer.metadata,
            PLUGIN_KEY: {**mark, "fingerprint": fingerprint(layer.data)},
        }


def release(layer, reason: str) -> None:
    """Hand a plugin layer over to the user: the plugin will never change it again."""
    mark = tag_of(layer)
    if mark is None:
        return
    metadata = {key: value for key, value in layer.metadata.items() if key != PLUGIN_KEY}
    metadata[RELEASED_KEY] = {**mark, "released": reason}
    layer.metadata = metadata
