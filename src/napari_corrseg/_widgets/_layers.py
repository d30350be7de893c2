"""napari layer glue: read the plane a user sees, place results on their image.

A grid-sized map is placed on its image with the image layer's own ``scale`` and
``translate`` composed with `ImageGeometry.scale` / `.translate`, never resampled. Reading
is split so that the GUI thread only *points at* the data (`image_plane` with
``materialize=False``: a view, or a lazy dask slice) and the worker reads it.
"""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np

from ..core.maps import ImageGeometry
from ..errors import InputImageError
from ._tags import PLUGIN_KEY  # noqa: F401 - re-exported for older imports

# -- reading user layers ------------------------------------------------------------


def image_plane(layer, viewer=None, *, materialize: bool = True):
    """Return the 2-D (optionally RGB/RGBA) plane of an image layer the viewer shows.

    Parameters
    ----------
    layer : napari.layers.Image
        Any image layer: 2-D, RGB, multiscale (the finest level is used) or a stack
        whose last two axes are displayed.
    viewer : napari.Viewer, optional
        Needed for stacks: the plane at the viewer's current position is taken.
    materialize : bool
        False returns the plane as the layer holds it (a numpy view, or a lazy dask or
        zarr slice) for a worker to read with ``numpy.asarray``.

    Returns
    -------
    numpy.ndarray or array-like
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
    return np.asarray(data) if materialize else data


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


def stack_planes(layer, *, materialize: bool = True) -> list:
    """Split a stack layer ``(n, y, x[, c])`` into its ``n`` planes (lazy if asked)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    data = np.asarray(data) if materialize else data
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


def points_world(layer) -> np.ndarray:
    """``(K, 2)`` world coordinates (displayed axes) of a Points layer's points."""
    data = np.asarray(layer.data, dtype=float)
    if not len(data):
        return np.zeros((0, 2))
    ndim = data.shape[1]
    plain = (
        np.allclose(layer.rotate, np.eye(ndim))
        and np.allclose(layer.shear, 0.0)
        and np.allclose(layer.affine.affine_matrix, np.eye(ndim + 1))
    )
    if plain:  # the usual case: one vectorised step
        world = data * np.asarray(layer.scale) + np.asarray(layer.translate)
    else:
        world = np.array([layer.data_to_world(point) for point in data])
    return world[:, -2:]


def plane_shape(layer) -> tuple[int, int]:
    """``(H, W)`` of a layer's displayed plane."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = data.shape[:-1] if layer.rgb else data.shape
    return int(shape[-2]), int(shape[-1])


# -- colours ------------------------------------------------------------------------


def value_range(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits of an array that may hold NaN (NaN-only: ``(0, 1)``)."""
    finite = np.asarray(values)[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return low, high if high > low else low + 1.0


def match_colors(ids: np.ndarray) -> np.ndarray:
    """One distinct RGBA colour per id (golden-ratio hues), shared by both sides of a match."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    colors = np.ones((len(ids), 4), dtype=np.float32)
    for row, match_id in enumerate(ids):
        hue = (int(match_id) * 0.6180339887) % 1.0
        colors[row, :3] = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return colors
