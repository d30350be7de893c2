"""One image of a collection as ready layer data (built in a worker).

The Collection dock shows one image at a time, in a fixed set of *working* layers that
it updates in place as the user browses (`ROLES`):

- ``collection:image`` the image itself (``collection:image:rgb`` for colour);
- ``collection:points`` its keypoints: the user's, or a proposal coloured by confidence
  (viridis on fixed limits 0 to 1), with ``keypoint_id``, ``confidence``, ``source``
  and ``cycle_error`` features;
- ``collection:labels`` its painted parts, or a proposal;
- ``collection:label-confidence`` the confidence of proposed labels (grid-sized map);
- ``collection:coseg`` its co-segmentation (ids shared by the whole collection).

Each layer's mark holds ``image`` (``image:<store key>``), ``image_index`` and the
``session`` it belongs to. The keypoints and labels layers are working layers: the dock
reads the user's edits from them (`LayerUpdate.capture`) before showing another image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.maps import ImageGeometry
from ..tasks.results import grid_labels_to_pixels
from ._builders import CONFIDENCE_LIMITS
from ._collection_session import Entry
from ._plans import LayerUpdate, Plan
from ._tags import collection_ref

WIDGET = "collection"
ROLE_IMAGE = "collection:image"
ROLE_IMAGE_RGB = "collection:image:rgb"
ROLE_POINTS = "collection:points"
ROLE_LABELS = "collection:labels"
ROLE_CONFIDENCE = "collection:label-confidence"
ROLE_COSEG = "collection:coseg"
ROLES = (ROLE_IMAGE, ROLE_IMAGE_RGB, ROLE_POINTS, ROLE_LABELS, ROLE_CONFIDENCE, ROLE_COSEG)
#: Layers whose edits the dock keeps.
WORKING_ROLES = (ROLE_POINTS, ROLE_LABELS, ROLE_COSEG)
POINT_FEATURES = ("keypoint_id", "confidence", "source", "cycle_error")
#: Features of a point the user adds (a reference point: confidence 1).
NEW_POINT = {"keypoint_id": -1, "confidence": 1.0, "source": "", "cycle_error": 0.0}

Capture = Callable[[Any], bool]


@dataclass(frozen=True)
class ViewRequest:
    """What showing one image needs, taken on the GUI thread (a snapshot).

    Attributes
    ----------
    session : str
        The session id (written into each mark).
    index : int
    entry : Entry
    geometry : ImageGeometry
    placement : dict
        ``scale``/``translate`` of the image's pixels in the viewer.
    names : list of str
        Every image's name (a proposal's source is shown by name).
    coseg : numpy.ndarray or None
        The image's co-segmentation on the grid.
    annotate : frozenset of str
        ``"keypoints"`` and/or ``"parts"``: the working layers to show even when empty.
    load : callable or None
        Reads the image's pixels (in the worker); None keeps the image layer as it is.
    """

    session: str
    index: int
    entry: Entry
    geometry: ImageGeometry
    placement: dict[str, tuple[float, float]]
    names: list[str]
    coseg: np.ndarray | None
    annotate: frozenset[str]
    load: Callable[[], np.ndarray] | None = None


def points_size(shape: tuple[int, int]) -> float:
    """Point size in pixels that reads well on an image of this shape."""
    return max(3.0, 0.02 * max(shape))


def point_table(request: ViewRequest) -> tuple[np.ndarray, pd.DataFrame]:
    """The marked keypoints of the image, and their features."""
    entry = request.entry
    empty = pd.DataFrame(
        {
            "keypoint_id": np.zeros(0, dtype=np.int64),
            "confidence": np.zeros(0),
            "source": np.zeros(0, dtype=object),
            "cycle_error": np.zeros(0),
        }
    )
    if entry.points is None:
        return np.zeros((0, 2)), empty
    found = entry.points
    marked = np.flatnonzero(np.isfinite(found.points).all(axis=1))
    n = len(marked)
    if found.confidence is None:  # the user's own points
        confidence, cycle_error = np.ones(n), np.zeros(n)
        source = np.full(n, entry.name, dtype=object)
    else:
        confidence = np.asarray(found.confidence, dtype=np.float64)[marked]
        cycle_error = np.asarray(found.cycle_error, dtype=np.float64)[marked]
        names = request.names
        source = np.array(
            [names[s] if 0 <= s < len(names) else "" for s in found.source[marked].tolist()],
            dtype=object,
        )
    features = pd.DataFrame(
        {
            "keypoint_id": marked.astype(np.int64),
            "confidence": confidence,
            "source": source,
            "cycle_error": cycle_error,
        }
    )
    return np.array(found.points[marked], dtype=np.float64), features


def _mark(request: ViewRequest) -> dict[str, Any]:
    return {
        "image": collection_ref(request.entry.key),
        "image_index": int(request.index),
        "image_name": request.entry.name,
        "session": request.session,
        "version": int(request.entry.version),
        "status": request.entry.status,
    }


def _grid_placement(request: ViewRequest) -> dict[str, tuple[float, float]]:
    scale = np.asarray(request.placement["scale"], dtype=float)
    translate = np.asarray(request.placement["translate"], dtype=float)
    geometry = request.geometry
    return {
        "scale": tuple(scale * np.asarray(geometry.scale)),
        "translate": tuple(translate + scale * np.asarray(geometry.translate)),
    }


def view_updates(
    request: ViewRequest, capture: Callable[[str], Capture | None]
) -> tuple[list[LayerUpdate], list[dict[str, str]]]:
    """The layer updates showing ``request``'s image, and the roles to remove.

    ``capture(role)`` gives the `LayerUpdate.capture` of a working layer. Runs in a
    worker (it reads the image when ``request.load`` is given).
    """
    entry, info = request.entry, _mark(request)
    placement = dict(request.placement)
    updates: list[LayerUpdate] = []
    shown: set[str] = set()
    if request.load is not None:
        image = np.asarray(request.load())
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        role = ROLE_IMAGE_RGB if rgb else ROLE_IMAGE
        updates.append(
            LayerUpdate(
                kind="image",
                data=image,
                keys={"role": role},
                name=f"collection: {entry.name}",
                placement=placement,
                info=info,
                style={"rgb": rgb},
            )
        )
        shown.add(role)  # the other kind of image layer is removed
    labels = entry.labels
    if labels is not None and labels.confidence_grid is not None and entry.status != "edited":
        updates.append(
            LayerUpdate(
                kind="image",
                data=np.array(labels.confidence_grid, dtype=np.float32),
                keys={"role": ROLE_CONFIDENCE},
                name=f"label confidence on {entry.name}",
                placement=_grid_placement(request),
                info=info,
                properties={"contrast_limits": CONFIDENCE_LIMITS},
                style={"colormap": "viridis", "visible": False, "opacity": 0.6},
            )
        )
        shown.add(ROLE_CONFIDENCE)
    if labels is not None or "parts" in request.annotate:
        data = (
            labels.to_pixels(request.geometry)
            if labels is not None
            else np.zeros(entry.shape, dtype=np.int32)
        )
        updates.append(
            LayerUpdate(
                kind="labels",
                data=np.array(data, dtype=np.int32, order="C"),  # a copy: painting edits it
                keys={"role": ROLE_LABELS},
                name=f"parts on {entry.name}",
                placement=placement,
                info=info,
                capture=capture(ROLE_LABELS),
            )
        )
        shown.add(ROLE_LABELS)
    if request.coseg is not None:
        coseg = (
            entry.coseg_edit
            if entry.coseg_edit is not None
            else grid_labels_to_pixels(np.asarray(request.coseg, dtype=np.int32), request.geometry)
        )
        updates.append(
            LayerUpdate(
                kind="labels",
                data=np.array(coseg, dtype=np.int32, order="C"),
                keys={"role": ROLE_COSEG},
                name=f"co-segmentation of {entry.name}",
                placement=placement,
                info=info,
                capture=capture(ROLE_COSEG),
                style={"opacity": 0.5},
            )
        )
        shown.add(ROLE_COSEG)
    if entry.points is not None or "keypoints" in request.annotate:
        points, features = point_table(request)
        updates.append(
            LayerUpdate(
                kind="points",
                data=points,
                keys={"role": ROLE_POINTS},
                name=f"keypoints on {entry.name}",
                placement=placement,
                info={**info, "n_marked": len(points)},
                capture=capture(ROLE_POINTS),
                # the colours follow the confidence feature as features are replaced:
                # set once, when the layer is made (a user's colour choice then stays)
                properties={"features": features, "feature_defaults": dict(NEW_POINT)},
                style={
                    "face_color": "confidence",
                    "face_colormap": "viridis",
                    "face_contrast_limits": CONFIDENCE_LIMITS,
                    "size": points_size(entry.shape),
                    "border_color": "white",
                },
            )
        )
        shown.add(ROLE_POINTS)
    image_roles = (ROLE_IMAGE, ROLE_IMAGE_RGB)
    removes = [
        {"role": role}
        for role in ROLES
        if role not in shown and (role not in image_roles or request.load is not None)
    ]
    return updates, removes


def view_plan(request: ViewRequest, capture, *, run: int, summary: str = "") -> Plan:
    """A `Plan` showing one image (see `view_updates`)."""
    updates, removes = view_updates(request, capture)
    return Plan(WIDGET, updates=updates, removes=removes, run=run, summary=summary)
