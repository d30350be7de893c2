"""Result types of the task-level functions, and label resampling between grid and pixels.

Every result carries image-pixel coordinates ``(row, col)`` and the `ImageGeometry` of
each image, so that callers (CLI, widgets) do no geometry of their own. Grid-sized maps are
shown in napari with ``scale=geometry.scale`` and ``translate=geometry.translate``.
Re-exported by `napari_corrseg.tasks.pipeline`. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.maps import ImageGeometry

__all__ = [
    "CosegmentationResult",
    "KeypointTransfer",
    "LabelPropagation",
    "MetricMap",
    "PairResult",
    "PointQuery",
    "SegmentationResult",
    "grid_labels_to_pixels",
    "pixel_labels_to_grid",
    "plain_values",
]


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricMap:
    """One reliability map on the token grid of one image.

    Attributes
    ----------
    name : str
        ``"cycle_error"``, ``"entropy"``, ``"density"`` or ``"nims"``.
    values : numpy.ndarray
        ``(h, w)`` float64 map on the token grid (NaN where undefined).
    image : int
        Index of the image whose grid the map lies on.
    geometry : ImageGeometry
        Geometry of that image: use ``geometry.scale`` / ``geometry.translate`` in napari.
    description : str
        One line saying what the map measures and which way is better.
    """

    name: str
    values: np.ndarray
    image: int
    geometry: ImageGeometry
    description: str


@dataclass(frozen=True)
class PairResult:
    """Correspondences from a source image to a target image, in pixels and on the grid.

    Attributes
    ----------
    source, target : int
        Image indices in the `AttentionMaps`.
    source_geometry, target_geometry : ImageGeometry
        Geometry of each image.
    source_points, target_points : numpy.ndarray
        ``(K, 2)`` matched positions in image pixels, ``(row, col)``.
    source_grid_points, target_grid_points : numpy.ndarray
        The same matches in grid coordinates.
    confidence : numpy.ndarray
        ``(K,)`` in ``[0, 1]``, higher is more reliable.
    cycle_error : numpy.ndarray
        ``(K,)`` forward-backward cycle error in grid cells (0 is a perfect cycle).
    entropy : numpy.ndarray
        ``(K,)`` inverse-mapping entropy of each match's target token (nats).
    ims : float
        Inverse mapping score of the pair (mean cycle error, grid cells).
    metrics : dict of str to MetricMap
        ``cycle_error`` on the source grid; ``entropy``, ``density``, ``nims`` on the
        target grid.
    min_confidence : float
        The confidence floor applied (with ``"auto"``: the cut chosen for this pair).
    auto_confidence : float
        The automatic cut of this pair (`core.correspondence.reliability_cut`), whatever
        floor was applied: a viewer can return all matches and still start at the cut.
    """

    source: int
    target: int
    source_geometry: ImageGeometry
    target_geometry: ImageGeometry
    source_points: np.ndarray
    target_points: np.ndarray
    source_grid_points: np.ndarray
    target_grid_points: np.ndarray
    confidence: np.ndarray
    cycle_error: np.ndarray
    entropy: np.ndarray
    ims: float
    metrics: dict[str, MetricMap] = field(default_factory=dict)
    min_confidence: float = 0.0
    auto_confidence: float = 0.0

    def __len__(self) -> int:
        return len(self.confidence)


@dataclass(frozen=True)
class KeypointTransfer:
    """Keypoints of a source image carried to a target image.

    Attributes
    ----------
    source, target : int
        Image indices.
    source_points, target_points : numpy.ndarray
        ``(P, 2)`` pixel coordinates ``(row, col)``, one row per input keypoint.
    confidence : numpy.ndarray
        ``(P,)`` in ``[0, 1]``.
    cycle_error : numpy.ndarray
        ``(P,)`` cycle error in grid cells.
    target_geometry : ImageGeometry
        Geometry of the target image.
    """

    source: int
    target: int
    source_points: np.ndarray
    target_points: np.ndarray
    confidence: np.ndarray
    cycle_error: np.ndarray
    target_geometry: ImageGeometry


@dataclass(frozen=True)
class SegmentationResult:
    """Segmentation of one image from its self-attention.

    Attributes
    ----------
    image : int
        Image index.
    labels_grid : numpy.ndarray
        ``(h, w)`` int labels on the token grid.
    labels : numpy.ndarray
        ``(H, W)`` int labels on the image's pixels (nearest token).
    threshold : float
        Merge threshold used (chosen automatically unless given).
    n_segments : int
        Number of segments.
    geometry : ImageGeometry
        Geometry of the image.
    no_clear_structure : bool
        The attention shows no clear structure (see `napari_corrseg.core.segmentation`).
    """

    image: int
    labels_grid: np.ndarray
    labels: np.ndarray
    threshold: float
    n_segments: int
    geometry: ImageGeometry
    no_clear_structure: bool = False


@dataclass(frozen=True)
class CosegmentationResult:
    """Label maps whose ids agree across a collection of images.

    Attributes
    ----------
    labels_grid : list of numpy.ndarray
        One ``(h, w)`` int label map per image on the token grid.
    labels : list of numpy.ndarray
        One ``(H_i, W_i)`` int label map per image on its pixels.
    segments : list of dict
        One JSON-able record per shared id (``id``, ``images``, ``consistency``,
        ``shared``, and ``pixels``: the pixel count in each image).
    unmatched : Any
        What the co-segmentation reports as unmatched (JSON-able).
    threshold : float
        Merge threshold used.
    geometries : list of ImageGeometry
        One per image.
    no_clear_structure : bool
        The automatic cut found no clear structure (the merge distance less than
        doubles across it).
    """

    labels_grid: list[np.ndarray]
    labels: list[np.ndarray]
    segments: list[dict[str, Any]]
    unmatched: Any
    threshold: float
    geometries: list[ImageGeometry]
    no_clear_structure: bool = False


@dataclass(frozen=True)
class LabelPropagation:
    """A label image of a source image carried to a target image.

    Attributes
    ----------
    source, target : int
        Image indices.
    labels_grid, confidence_grid : numpy.ndarray
        ``(h, w)`` labels and confidence on the target's token grid.
    labels, confidence : numpy.ndarray
        The same on the target image's pixels (nearest token).
    target_geometry : ImageGeometry
        Geometry of the target image.
    """

    source: int
    target: int
    labels_grid: np.ndarray
    confidence_grid: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    target_geometry: ImageGeometry


@dataclass(frozen=True)
class PointQuery:
    """Where one source pixel lands in the target image.

    Attributes
    ----------
    heatmap : numpy.ndarray
        ``(h, w)`` attention of the query over the target grid (show with the target's
        ``scale``/``translate``).
    best : numpy.ndarray
        ``(2,)`` best target position in pixels ``(row, col)``.
    score : float
        Score of the best position as reported by `correspondence.query`.
    target_geometry : ImageGeometry
        Geometry of the target image.
    """

    heatmap: np.ndarray
    best: np.ndarray
    score: float
    target_geometry: ImageGeometry


# -- geometry helpers ------------------------------------------------------------------


def _pixel_token_index(geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Nearest token row for every pixel row and token column for every pixel column."""
    (height, width), (h, w) = geometry.image_shape, geometry.grid
    sy, sx = geometry.scale
    ty, tx = geometry.translate
    rows = np.clip(np.rint((np.arange(height) - ty) / sy), 0, h - 1).astype(np.intp)
    cols = np.clip(np.rint((np.arange(width) - tx) / sx), 0, w - 1).astype(np.intp)
    return rows, cols


def grid_labels_to_pixels(values: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Resample an ``(h, w)`` grid map to the image's ``(H, W)`` pixels (nearest token).

    Parameters
    ----------
    values : numpy.ndarray
        ``(h, w)`` map on the token grid.
    geometry : ImageGeometry
        Geometry of the image.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` array of the same dtype.
    """
    values = np.asarray(values)
    if values.shape != tuple(geometry.grid):
        raise ValueError(f"map has shape {values.shape}; the grid is {tuple(geometry.grid)}")
    rows, cols = _pixel_token_index(geometry)
    return values[np.ix_(rows, cols)]


def pixel_labels_to_grid(labels: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Reduce an ``(H, W)`` label image to the token grid by majority vote per token.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` integer labels (0 is background and votes like any label).
    geometry : ImageGeometry
        Geometry of the image.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` int64 labels: the most frequent label among the pixels nearest each
        token.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(
            f"labels must be a 2-D integer image, got shape {labels.shape} and dtype "
            f"{labels.dtype}; pass a napari Labels layer's data"
        )
    if labels.shape != tuple(geometry.image_shape):
        raise ValueError(
            f"labels have shape {labels.shape} but the image is {tuple(geometry.image_shape)}"
        )
    h, w = geometry.grid
    rows, cols = _pixel_token_index(geometry)
    token = (rows[:, None] * w + cols[None, :]).ravel()
    values, inverse = np.unique(labels.ravel(), return_inverse=True)
    votes = np.zeros((h * w, len(values)), dtype=np.int64)
    np.add.at(votes, (token, inverse.ravel()), 1)
    return values[np.argmax(votes, axis=1)].astype(np.int64).reshape(h, w)


def plain_values(value: Any) -> Any:
    """Numpy scalars and arrays, tuples and sets inside a record as plain Python values
    (lists, ints, floats), for result tables and ``json``; NaN stays NaN (the strict
    JSON writer `files.io.write_json` turns it into null)."""
    if isinstance(value, dict):
        return {str(k): plain_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain_values(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_values(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
