"""Collection tasks that read the token store: co-segmentation and annotation transfer.

`cosegment_collection` and `transfer_over_collection` call the collection algorithms
(`collection.cosegment.cosegment` and `collection.transfer.transfer_collection`) on the
store's lazy maps; their cross-map stages go through a ``mapper``: `LocalMapper` in this
process, or the Dask scheduler's (`napari_corrseg.tasks.distributed.DaskMapper`). Results
are in image pixels (`napari_corrseg.tasks.collection_results`).

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..collection.store import TokenStore
from ..errors import CorrsegError, InputImageError
from .collection_inputs import Cancel, Progress, checked_progress
from .collection_results import (
    CollectionCosegmentationResult,
    CollectionLabels,
    CollectionPoints,
    CollectionTransferResult,
)
from .results import grid_labels_to_pixels, plain_values

__all__ = ["LocalMapper", "cosegment_collection", "transfer_over_collection"]


class LocalMapper:
    """``mapper(fn, argument_tuples)``: ``fn(maps, *args)`` for each, in process, with
    progress and cancel between calls (what `cosegment_collection` passes without Dask)."""

    def __init__(self, maps: Any, progress: Progress | None = None, cancel: Cancel | None = None):
        self.maps = maps
        self.report = checked_progress(progress, cancel, "the collection run")

    def __call__(self, fn: Callable, arguments: Sequence[tuple]) -> list:
        arguments = list(arguments)
        results = []
        for done, args in enumerate(arguments):
            results.append(fn(self.maps, *args))
            self.report("cross maps", (done + 1) / max(1, len(arguments)))
        return results


def _maps_and_mapper(store, keys, scheduler, backend, progress, cancel):
    maps = store.maps(keys, backend=backend)
    if scheduler is not None:
        mapper = scheduler.mapper(store, keys, progress=progress, cancel=cancel)
    else:
        mapper = LocalMapper(maps, progress, cancel)
    return maps, mapper


def _names(keys: Sequence[str], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"image_{k:04d}" for k in range(len(keys))]
    if len(names) != len(keys):
        raise ValueError(f"{len(names)} names for {len(keys)} images")
    return list(names)


def cosegment_collection(
    store: TokenStore,
    keys: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    threshold: float | str = "auto",
    scheduler: Any = None,
    backend: Any = None,
    pixel_labels: bool = True,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CollectionCosegmentationResult:
    """Co-segment stored images: ids agree across the collection; cost linear in n.

    Parameters
    ----------
    store : TokenStore
        Holding every image (see `fill_store`).
    keys : sequence of str
        The images, in collection order (``FillReport.keys``).
    names : sequence of str, optional
        Per image, for the result.
    threshold : float or "auto"
        Merge threshold of the co-segmentation.
    scheduler : DaskScheduler, optional
        Run the cross-map stages on Dask workers.
    backend : callable, optional
        Attention backend in process (e.g. ``engine.attention_backend``).
    pixel_labels : bool
        False leaves ``labels`` empty (a caller that shows one image at a time makes
        each with `grid_labels_to_pixels` from ``labels_grid``, never all at once).
    progress, cancel : callable, optional

    Returns
    -------
    CollectionCosegmentationResult
    """
    from ..collection import cosegment as cosegment_module

    keys = list(keys)
    if len(keys) < 2:
        raise CorrsegError("co-segmentation needs at least two images")
    report = checked_progress(progress, cancel, "co-segmentation")
    maps, mapper = _maps_and_mapper(store, keys, scheduler, backend, progress, cancel)
    result = cosegment_module.cosegment(maps, threshold=threshold, mapper=mapper, progress=report)
    geometries = list(maps.geometries)
    labels_grid = [np.asarray(labels) for labels in result.labels]
    labels = (
        [grid_labels_to_pixels(lg, g) for lg, g in zip(labels_grid, geometries, strict=True)]
        if pixel_labels
        else []
    )
    segments = [plain_values(dataclasses.asdict(record)) for record in result.segments]
    # NaN (a part seen in one image) counts as 0: nothing confirms it
    consistency = {int(s["id"]): float(np.nan_to_num(s["consistency"], nan=0.0)) for s in segments}
    # an image's score: the mean consistency of its tokens' parts (single-image parts 0)
    scores = [
        float(np.mean([consistency.get(int(v), 0.0) for v in lg.ravel()])) for lg in labels_grid
    ]
    ranking = sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda item: item[1])
    return CollectionCosegmentationResult(
        names=_names(keys, names),
        labels_grid=labels_grid,
        labels=labels,
        segments=segments,
        unmatched=[int(i) for i in result.unmatched],
        threshold=float(result.threshold),
        geometries=geometries,
        ranking=ranking,
        no_clear_structure=result.no_clear_structure,
    )


def _check_sources(maps, keypoints, labels) -> tuple[dict, dict]:
    grid_points, pixel_labels = {}, {}
    counts = set()
    for source, points in (keypoints or {}).items():
        source = int(source)
        if not 0 <= source < maps.n_images:
            raise CorrsegError(f"source image {source} is not in the collection")
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        height, width = maps.geometries[source].image_shape
        marked = np.isfinite(points).all(axis=1)
        inside = (points[marked] >= -0.5).all(axis=1) & (
            points[marked] <= np.array([height, width]) - 0.5
        ).all(axis=1)
        if not inside.all():
            row, col = points[marked][np.argmin(inside)]
            raise InputImageError(
                f"keypoint ({row:g}, {col:g}) lies outside the source image of "
                f"{height}x{width} pixels; coordinates are (row, col) pixels"
            )
        counts.add(len(points))
        grid_points[source] = maps.geometries[source].pixel_to_grid(points)
    if len(counts) > 1:
        raise CorrsegError(f"source images mark different numbers of keypoints: {sorted(counts)}")
    for source, painted in (labels or {}).items():
        source = int(source)
        painted = np.asarray(painted)
        shape = tuple(maps.geometries[source].image_shape)
        if painted.shape != shape or painted.dtype.kind not in "iub":
            raise InputImageError(
                f"labels of source image {source} must be integer {shape}, got "
                f"{painted.dtype} {painted.shape}; paint them on that image"
            )
        pixel_labels[source] = painted
    if not grid_points and not pixel_labels:
        raise CorrsegError("nothing to transfer: give keypoints or labels of a source image")
    return grid_points, pixel_labels


def transfer_over_collection(
    store: TokenStore,
    keys: Sequence[str],
    *,
    keypoints: Mapping[int, np.ndarray] | None = None,
    labels: Mapping[int, np.ndarray] | None = None,
    targets: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    scheduler: Any = None,
    backend: Any = None,
    pixel_labels: bool = True,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CollectionTransferResult:
    """Carry keypoints and painted labels of annotated images to every other image.

    Parameters
    ----------
    store : TokenStore
        Holding every image.
    keys : sequence of str
        The images, in collection order.
    keypoints : dict, optional
        ``{source image: (P, 2) (row, col) pixels}``; row k is the same keypoint on
        every source, NaN where it is not marked on that source.
    labels : dict, optional
        ``{source image: (H, W) integer labels}`` painted on its pixels (0 = none).
    targets : sequence of int, optional
        Images to carry them to (default: every image that is not a source).
    names, scheduler, backend, progress, cancel
        As for `cosegment_collection`.
    pixel_labels : bool
        False leaves each carried label's ``labels`` and ``confidence`` (pixels) None;
        ``labels_grid`` and ``confidence_grid`` are always given.

    Returns
    -------
    CollectionTransferResult
        In each target's pixels, each point and label with a confidence and the source
        it came from; ``ranking`` least confident first.
    """
    from ..collection import transfer as transfer_module

    keys = list(keys)
    report = checked_progress(progress, cancel, "transfer")
    maps, mapper = _maps_and_mapper(store, keys, scheduler, backend, progress, cancel)
    grid_points, pixel_labels = _check_sources(maps, keypoints, labels)
    sources = sorted(set(grid_points) | set(pixel_labels))
    if targets is None:
        targets = [i for i in range(len(keys)) if i not in sources]
    targets = [int(t) for t in targets]
    result = transfer_module.transfer_collection(
        maps,
        keypoints=grid_points or None,
        labels=pixel_labels or None,
        targets=targets,
        mapper=mapper,
        progress=report,
    )
    geometries = maps.geometries
    points = {}
    for target, proposal in result.points.items():
        target = int(target)
        grid = np.asarray(proposal.target, dtype=np.float64).reshape(-1, 2)
        points[target] = CollectionPoints(
            image=target,
            points=geometries[target].grid_to_pixel(grid),
            points_grid=grid,
            confidence=np.asarray(proposal.confidence, dtype=np.float64),
            source=np.asarray(proposal.source).astype(np.int64),
            cycle_error=np.asarray(proposal.cycle_error, dtype=np.float64),
            geometry=geometries[target],
        )
    carried = {}
    for target, proposal in result.labels.items():
        target = int(target)
        labels_grid = np.asarray(proposal.labels)
        confidence_grid = np.asarray(proposal.confidence, dtype=np.float64)
        carried[target] = CollectionLabels(
            image=target,
            labels=grid_labels_to_pixels(labels_grid, geometries[target])
            if pixel_labels
            else None,
            confidence=grid_labels_to_pixels(confidence_grid, geometries[target])
            if pixel_labels
            else None,
            labels_grid=labels_grid,
            confidence_grid=confidence_grid,
            source=plain_values(proposal.source),
            geometry=geometries[target],
        )
    ranking = [(int(i), float(s)) for i, s in result.ranking]
    return CollectionTransferResult(_names(keys, names), sources, points, carried, ranking)
