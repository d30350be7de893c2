"""Layer builders: one image's results as a ready `LayerUpdate` (run in a worker).

Each function turns results of `napari_corrseg.tasks.pipeline` for one image into a
`LayerUpdate` with its arrays, features, colours and placement decided, so the GUI thread
only hands them to napari. They take the image layer and its reference (`_tags.layer_ref`)
and know nothing about which dock calls them: a collection calls them once per image.
Every array is copied, so a layer never shares memory with a result or another layer (a
brush stroke on one must not change the other).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..core.maps import ImageGeometry
from . import _layers as L
from ._plans import LayerUpdate

#: Fixed colour limits of every confidence colour map: 0 and 1 always look the same.
CONFIDENCE_LIMITS = (0.0, 1.0)


def points_size(image_layer) -> float:
    """Point size in data pixels that reads well on this image."""
    return max(3.0, 0.02 * max(L.plane_shape(image_layer)))


def match_points(
    points_px: np.ndarray,
    features: pd.DataFrame,
    colors: np.ndarray,
    *,
    side: str,
    image_layer,
    image_ref: str,
    info: dict[str, Any] | None = None,
) -> LayerUpdate:
    """The matches on one side of a pair, coloured per match (same colour on both sides)."""
    return LayerUpdate(
        kind="points",
        data=np.array(points_px, dtype=np.float64).reshape(-1, 2),  # a copy: the layer's own
        keys={"role": f"matches:{side}", "image": image_ref},
        name="matches on {image}",
        image_layer=image_layer,
        info={"side": side, **(info or {})},
        properties={"features": features, "face_color": colors},
        style={"border_color": "white", "size": points_size(image_layer)},
    )


def match_lines(
    source_px: np.ndarray, target_px: np.ndarray, colors: np.ndarray, source_layer, target_layer
) -> LayerUpdate:
    """Lines joining matches, in world coordinates (a Vectors layer: one array update)."""
    source_px = np.asarray(source_px, dtype=np.float64).reshape(-1, 2)
    target_px = np.asarray(target_px, dtype=np.float64).reshape(-1, 2)

    def lines() -> np.ndarray:  # at apply time: the layers' placement then
        start = L.pixel_to_world(source_layer, source_px)
        end = L.pixel_to_world(target_layer, target_px)
        return np.stack([start, end - start], axis=1)

    return LayerUpdate(
        kind="vectors",
        data=lines,
        keys={"role": "matches:lines"},
        name="match lines",
        placement=None,
        properties={"edge_color": colors if len(colors) else "white"},
        style={"edge_width": 1.0, "vector_style": "line", "opacity": 0.8},
    )


def grid_map(
    values: np.ndarray,
    geometry: ImageGeometry,
    *,
    role: str,
    name: str,
    image_layer,
    image_ref: str,
    colormap: str,
    contrast_limits: tuple[float, float],
    group: str = "run",
    visible: bool = True,
    info: dict[str, Any] | None = None,
    blending: str = "translucent",
    opacity: float = 0.6,
) -> LayerUpdate:
    """A grid-sized map placed exactly over its image (scale/translate, no resampling)."""
    return LayerUpdate(
        kind="image",
        data=np.array(values, dtype=np.float32),
        keys={"role": role, "image": image_ref},
        name=name,
        image_layer=image_layer,
        placement=geometry,
        group=group,
        info=dict(info or {}),
        properties={"contrast_limits": tuple(float(v) for v in contrast_limits)},
        style={"colormap": colormap, "visible": visible, "opacity": opacity, "blending": blending},
    )


def confidence_points(
    points_px: np.ndarray,
    features: pd.DataFrame,
    *,
    role: str,
    name: str,
    image_layer,
    image_ref: str,
    source_ref: str,
    group: str,
    info: dict[str, Any] | None = None,
) -> LayerUpdate:
    """Points coloured by their ``confidence`` feature on fixed [0, 1] limits."""
    return LayerUpdate(
        kind="points",
        data=np.array(points_px, dtype=np.float64).reshape(-1, 2),
        keys={"role": role, "image": image_ref, "source": source_ref},
        name=name,
        image_layer=image_layer,
        group=group,
        info=dict(info or {}),
        properties={
            "features": features,
            "face_color": "confidence",
            "face_contrast_limits": CONFIDENCE_LIMITS,
        },
        style={"face_colormap": "viridis", "size": points_size(image_layer)},
    )


def labels_layer(
    labels: np.ndarray,
    *,
    role: str,
    name: str,
    image_layer,
    image_ref: str,
    group: str = "run",
    source_ref: str | None = None,
    info: dict[str, Any] | None = None,
    placement: Any = "pixel",
) -> LayerUpdate:
    """A Labels layer on an image's own pixels (int32, 0 = background)."""
    keys = {"role": role, "image": image_ref}
    if source_ref is not None:
        keys["source"] = source_ref
    return LayerUpdate(
        kind="labels",
        data=np.array(labels, dtype=np.int32, order="C"),  # a copy: painting edits it
        keys=keys,
        name=name,
        image_layer=image_layer,
        placement=placement,
        group=group,
        info=dict(info or {}),
    )


def stack_placement(stack_layer) -> dict[str, tuple[float, ...]]:
    """scale/translate of a ``(n, H, W)`` result over a stack layer (its first axis too)."""
    scale, translate = L.plane_scale_translate(stack_layer)
    return {
        "scale": (float(stack_layer.scale[0]), *map(float, scale)),
        "translate": (float(stack_layer.translate[0]), *map(float, translate)),
    }
