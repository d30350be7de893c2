"""Result types of the collection tasks (`napari_corrseg.tasks.collection`), in image pixels.

numpy only; imports neither torch nor Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.maps import ImageGeometry

__all__ = [
    "CollectionCosegmentationResult",
    "CollectionLabels",
    "CollectionPoints",
    "CollectionTransferResult",
    "FillPlan",
    "FillReport",
]


@dataclass(frozen=True)
class FillPlan:
    """What `fill_store` is about to do, reported before any image is computed.

    Attributes
    ----------
    n_images : int
        Distinct images of the collection.
    n_present : int
        Of those, already in the store and intact.
    n_damaged : int
        In the store but damaged: recomputed.
    n_missing : int
        To compute (damaged included).
    bytes_per_image : int
        Store bytes one image takes (0 when unknown: nothing to compute).
    store : str
        The store folder.
    """

    n_images: int
    n_present: int
    n_damaged: int
    n_missing: int
    bytes_per_image: int
    store: str

    @property
    def bytes_to_add(self) -> int:
        """Bytes the run adds to the store (damaged entries are replaced, not added)."""
        return (self.n_missing - self.n_damaged) * self.bytes_per_image

    def describe(self) -> str:
        """One line for people: counts and the size estimate."""
        line = (
            f"token store {self.store}: {self.n_images} images, {self.n_present} stored, "
            f"{self.n_missing} to compute"
        )
        if self.n_damaged:
            line += f" ({self.n_damaged} damaged)"
        if self.n_missing and self.bytes_per_image:
            line += (
                f"; adds ~{self.bytes_to_add / 1e6:.1f} MB "
                f"({self.bytes_per_image / 1e6:.2f} MB per image, float16)"
            )
        return line


@dataclass(frozen=True)
class FillReport:
    """What `fill_store` did.

    Attributes
    ----------
    keys, names : list of str
        Per input image (in input order): its store key and its name.
    shapes : list of tuple of int
        Per input image, ``(H, W)`` in pixels.
    computed : int
        Images computed because they were missing.
    reused : int
        Images found intact in the store.
    recomputed : int
        Images whose entry was damaged and was computed again.
    store : str
        The store folder.
    """

    keys: list[str]
    names: list[str]
    shapes: list[tuple[int, int]]
    computed: int
    reused: int
    recomputed: int
    store: str
    plan: FillPlan | None = None

    def describe(self) -> str:
        """One line for people."""
        return (
            f"{len(self.keys)} images: computed {self.computed}, reused {self.reused}, "
            f"damaged and recomputed {self.recomputed}"
        )


@dataclass(frozen=True)
class CollectionCosegmentationResult:
    """Labels consistent across a collection, per image in its pixels.

    Attributes
    ----------
    names : list of str
        Image names, in collection order.
    labels_grid, labels : list of numpy.ndarray
        Per image, ``(h, w)`` grid labels and ``(H, W)`` pixel labels; an id means the
        same part in every image.
    segments : list of dict
        One JSON-able record per id (as the co-segmentation reports it).
    unmatched : list
        Ids seen in one image only.
    threshold : float
        Merge threshold used.
    geometries : list of ImageGeometry
        Per image.
    ranking : list of (int, float)
        ``(image, score)``, least confident first: the order to review in.
    no_clear_structure : bool
        The attention does not separate into parts (see
        `core.segmentation.Segmentation.no_clear_structure`).
    """

    names: list[str]
    labels_grid: list[np.ndarray]
    labels: list[np.ndarray]
    segments: list[dict[str, Any]]
    unmatched: list[Any]
    threshold: float
    geometries: list[ImageGeometry]
    ranking: list[tuple[int, float]]
    no_clear_structure: bool = False


@dataclass(frozen=True)
class CollectionPoints:
    """Keypoints carried onto one image of a collection.

    Attributes
    ----------
    image : int
        The target image.
    points : numpy.ndarray
        ``(P, 2)`` (row, col) in the target's pixels; NaN where a point has no source.
    points_grid : numpy.ndarray
        The same on the token grid.
    confidence : numpy.ndarray
        ``(P,)`` in ``[0, 1]``.
    source : numpy.ndarray
        ``(P,)`` int: the annotated image each point came from (-1 if none).
    cycle_error : numpy.ndarray
        ``(P,)`` grid cells.
    geometry : ImageGeometry
    """

    image: int
    points: np.ndarray
    points_grid: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    cycle_error: np.ndarray
    geometry: ImageGeometry


@dataclass(frozen=True)
class CollectionLabels:
    """A painted label image carried onto one image of a collection.

    Attributes
    ----------
    image : int
        The target image.
    labels, confidence : numpy.ndarray
        ``(H, W)`` on the target's pixels (nearest token).
    labels_grid, confidence_grid : numpy.ndarray
        ``(h, w)`` on the token grid.
    source : Any
        The source image(s) as the transfer reports them.
    geometry : ImageGeometry
    """

    image: int
    labels: np.ndarray
    confidence: np.ndarray
    labels_grid: np.ndarray
    confidence_grid: np.ndarray
    source: Any
    geometry: ImageGeometry


@dataclass(frozen=True)
class CollectionTransferResult:
    """Annotations of some images carried to every other one, ranked for review.

    Attributes
    ----------
    names : list of str
        Image names, in collection order.
    sources : list of int
        The annotated images.
    points : dict
        ``{target image: CollectionPoints}``.
    labels : dict
        ``{target image: CollectionLabels}``.
    ranking : list of (int, float)
        ``(image, score)``, least confident first.
    """

    names: list[str]
    sources: list[int]
    points: dict[int, CollectionPoints] = field(default_factory=dict)
    labels: dict[int, CollectionLabels] = field(default_factory=dict)
    ranking: list[tuple[int, float]] = field(default_factory=list)
