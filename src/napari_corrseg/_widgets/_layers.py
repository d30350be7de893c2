"""napari layer glue: read the plane a user sees, place grid maps, own result layers.

Rules kept here so every widget follows them:

- results go into layers the plugin created, marked ``layer.metadata["napari_corrseg"]``
  with a ``role``; a rerun finds the layer by role and updates it in place;
- a user's own layer (no mark) is never modified or removed;
- a grid-sized map is placed on its image with the image layer's own ``scale`` and
  ``translate`` composed with `ImageGeometry.scale` / `.translate`, never resampled.
"""

from __future__ import annotations

import colorsys
import hashlib
from typing import Any

import numpy as np

from ..core.maps import ImageGeometry
from ..errors import InputImageError

#: Key of the metadata entry that marks a layer as created by this plugin.
PLUGIN_KEY = "napari_corrseg"


# -- reading user layers ------------------------------------------------------------


def image_plane(layer, viewer=None) -> np.ndarray:
    """Return the 2-D (optionally RGB/RGBA) plane of an image layer the viewer shows.

    Parameters
    ----------
    layer : napari.layers.Image
        Any image layer: 2-D, RGB, multiscale (the finest level is used) or a stack
        whose last two axes are displayed.
    viewer : napari.Viewer, optional
        Needed for stacks: the plane at the viewer's current position is taken.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``.

    Raises
    ------
    InputImageError
        If the layer has fewer than two spatial axes, or is a stack and the viewer is
        not showing its last two axes in 2-D.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    n_spatial = data.ndim - (1 if layer.rgb else 0)
    if n_spatial < 2:
        raise InputImageError(f"layer {layer.name!r} has no 2-D plane (shape {data.shape})")
    if n_spatial > 2:
        if viewer is None:
            raise InputImageError(
                f"layer {layer.name!r} is a stack {data.shape}; pass the viewer so the "
                "displayed plane can be taken"
            )
        if viewer.dims.ndisplay != 2:
            raise InputImageError(
                f"layer {layer.name!r} is a stack; switch the viewer to 2-D so the plane "
                "to use is the one displayed"
            )
        displayed = [d - (viewer.dims.ndim - layer.ndim) for d in viewer.dims.displayed]
        if displayed != [layer.ndim - 2, layer.ndim - 1]:
            raise InputImageError(
                f"layer {layer.name!r}: display its last two axes (rows, cols) to use the "
                "displayed plane (View > Transpose / roll dims)"
            )
        index = stack_index(layer, viewer)
        data = data[index]
    return np.asarray(data)


def stack_index(layer, viewer) -> tuple[int, ...]:
    """Indices of the leading (non-displayed) axes of ``layer`` at the viewer's position."""
    n_leading = layer.ndim - 2
    if n_leading <= 0:
        return ()
    position = layer.world_to_data(viewer.dims.point)[:n_leading]
    shape = (layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape
    return tuple(
        int(np.clip(round(float(p)), 0, shape[axis] - 1)) for axis, p in enumerate(position)
    )


def stack_planes(layer) -> list[np.ndarray]:
    """Split a stack layer ``(n, y, x[, c])`` into its ``n`` planes."""
    data = np.asarray(layer.data)
    n_spatial = data.ndim - (1 if layer.rgb else 0)
    if n_spatial != 3 or data.shape[0] < 2:
        raise InputImageError(
            f"layer {layer.name!r} has shape {data.shape}; a stack for co-segmentation "
            "must be (n, y, x) or (n, y, x, channels) with n >= 2"
        )
    return [data[k] for k in range(data.shape[0])]


def image_hash(image: np.ndarray) -> str:
    """Content hash of an array (shape and dtype included), for in-memory map caches."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(array.data)
    return digest.hexdigest()


# -- placement ------------------------------------------------------------------------


def plane_scale_translate(layer) -> tuple[np.ndarray, np.ndarray]:
    """The ``(row, col)`` scale and translate of a layer's last two (displayed) axes."""
    return (
        np.asarray(layer.scale[-2:], dtype=float),
        np.asarray(layer.translate[-2:], dtype=float),
    )


def grid_placement(layer, geometry: ImageGeometry) -> dict[str, tuple[float, float]]:
    """``scale``/``translate`` that put a grid-sized map of ``geometry`` on ``layer``."""
    scale, translate = plane_scale_translate(layer)
    return {
        "scale": tuple(scale * np.asarray(geometry.scale)),
        "translate": tuple(translate + scale * np.asarray(geometry.translate)),
    }


def pixel_placement(layer) -> dict[str, tuple[float, float]]:
    """``scale``/``translate`` for data given in the image's own pixel coordinates."""
    scale, translate = plane_scale_translate(layer)
    return {"scale": tuple(scale), "translate": tuple(translate)}


def pixel_to_world(layer, pixels: np.ndarray) -> np.ndarray:
    """Convert ``(K, 2)`` pixel ``(row, col)`` of a layer's plane to 2-D world coordinates."""
    scale, translate = plane_scale_translate(layer)
    return np.asarray(pixels, dtype=float).reshape(-1, 2) * scale + translate


def world_to_pixel(layer, world: np.ndarray) -> np.ndarray:
    """Convert ``(K, 2)`` world ``(row, col)`` (displayed axes) to a layer's pixels."""
    scale, translate = plane_scale_translate(layer)
    return (np.asarray(world, dtype=float).reshape(-1, 2) - translate) / scale


def plane_shape(layer) -> tuple[int, int]:
    """``(H, W)`` of a layer's displayed plane."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = data.shape[:-1] if layer.rgb else data.shape
    return int(shape[-2]), int(shape[-1])


# -- plugin-owned layers --------------------------------------------------------------


def is_plugin_layer(layer, role: str | None = None) -> bool:
    """Whether ``layer`` was created by this plugin (and has ``role``, if given)."""
    mark = layer.metadata.get(PLUGIN_KEY)
    if not isinstance(mark, dict):
        return False
    return role is None or mark.get("role") == role


def find_plugin_layer(viewer, role: str):
    """The plugin layer with ``role``, or None."""
    for layer in viewer.layers:
        if is_plugin_layer(layer, role):
            return layer
    return None


def plugin_layers_of(viewer, prefix: str = "") -> list:
    """The plugin layers whose role starts with ``prefix``, in layer-list order."""
    return [
        layer
        for layer in viewer.layers
        if is_plugin_layer(layer) and layer.metadata[PLUGIN_KEY].get("role", "").startswith(prefix)
    ]


def upsert_layer(
    viewer,
    kind: str,
    data: Any,
    *,
    role: str,
    name: str,
    info: dict | None = None,
    style: dict | None = None,
    **properties: Any,
):
    """Create the plugin layer with ``role`` or update it in place.

    Parameters
    ----------
    viewer : napari.Viewer
    kind : {"image", "labels", "points"}
    data : array
        Layer data.
    role : str
        Stable identity of the result (e.g. ``"matches:source"``).
    name : str
        Layer name used when the layer is created (a user's renaming is kept).
    info : dict, optional
        Extra provenance stored in the metadata mark.
    style : dict, optional
        Properties applied only when the layer is created (colormap, opacity, symbol,
        visibility...), so a rerun keeps the user's display choices and skips redraws.
    **properties
        Properties set on every call (``scale``, ``translate``, ``features``,
        ``face_color``, ``contrast_limits``...). Without ``contrast_limits`` an image
        layer's limits are reset to its new data.

    Returns
    -------
    napari.layers.Layer
        The created or updated layer.
    """
    mark = {"role": role, **(info or {})}
    layer = find_plugin_layer(viewer, role)
    if layer is not None and layer._type_string != kind:
        viewer.layers.remove(layer)  # our own layer of another kind: replace it
        layer = None
    if layer is None:
        add = getattr(viewer, f"add_{kind}")
        return add(data, name=name, metadata={PLUGIN_KEY: mark}, **(style or {}), **properties)
    if layer.metadata.get(PLUGIN_KEY) != mark:
        layer.metadata = {**layer.metadata, PLUGIN_KEY: mark}
    # placement first so the new data lands where it belongs
    for key in ("scale", "translate"):
        if key in properties:
            value = properties.pop(key)
            if not np.allclose(getattr(layer, key), value):  # each set redraws: skip no-ops
                setattr(layer, key, value)
    layer.data = data
    for key, value in properties.items():
        setattr(layer, key, value)
    if kind == "image" and "contrast_limits" not in properties:
        layer.reset_contrast_limits()
    return layer


def value_range(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits of an array that may hold NaN (NaN-only: ``(0, 1)``)."""
    finite = np.asarray(values)[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return low, high if high > low else low + 1.0


def upsert_lines(viewer, lines: np.ndarray, colors: np.ndarray, *, role: str, name: str):
    """Create or update the plugin Shapes layer of line segments ``(K, 2, 2)`` (world)."""
    layer = find_plugin_layer(viewer, role)
    if layer is None:
        layer = viewer.add_shapes(
            name=name, metadata={PLUGIN_KEY: {"role": role}}, ndim=2, opacity=0.8
        )
    if layer.nshapes:
        layer.selected_data = set(range(layer.nshapes))
        layer.remove_selected()
    if len(lines):
        layer.add_lines(list(lines), edge_color=colors, edge_width=1.0)
    return layer


def remove_plugin_layer(viewer, role: str) -> None:
    """Remove the plugin layer with ``role`` if there is one (never a user's layer)."""
    layer = find_plugin_layer(viewer, role)
    if layer is not None:
        viewer.layers.remove(layer)


def match_colors(ids: np.ndarray) -> np.ndarray:
    """One distinct RGBA colour per id (golden-ratio hues), shared by both sides of a match."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    colors = np.ones((len(ids), 4), dtype=np.float32)
    for row, match_id in enumerate(ids):
        hue = (int(match_id) * 0.6180339887) % 1.0
        colors[row, :3] = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return colors
