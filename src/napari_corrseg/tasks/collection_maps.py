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
from .results import grid_labels_to_pixels

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


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


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
    segments = [_jsonable(record) for record in result.segments]
    consistency = {
        int(s["id"]): float(s["consistency"]) if s.get("consistency") is not None else 0.0
        for s in segments
    }
    scores = getattr(result, "image_scores", None)
    if scores is None:  # mean consistency of each image's tokens; single-image parts 0
        scores = [
            float(np.mean([consistency.get(int(v), 0.0) for v in lg.ravel()]))
            for lg in labels_grid
        ]
    ranking = sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda item: item[1])
    return CollectionCosegmentationResult(
        names=_names(keys, names),
        labels_grid=labels_grid,
        labels=labels,
        segments=segments,
        unmatched=_jsonable(list(getattr(result, "unmatched", []))),
        threshold=float(getattr(result, "threshold", np.nan)),
        geometries=geometries,
        ranking=ranking,
        no_clear_structure=result.no_clear_structure,
    )


def _field(record: Any, name: str, position: int) -> Any:
    if hasattr(record, name):
        return getattr(record, name)
    if isinstance(record, Mapping):
        return record[name]
    return record[position]


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
    for target, record in (getattr(result, "points", None) or {}).items():
        target = int(target)
        grid = np.asarray(_field(record, "target", 0), dtype=np.float64).reshape(-1, 2)
        points[target] = CollectionPoints(
            image=target,
            points=geometries[target].grid_to_pixel(grid),
            points_grid=grid,
            confidence=np.asarray(_field(record, "confidence", 1), dtype=np.float64),
            source=np.asarray(_field(record, "source", 2)).astype(np.int64),
            cycle_error=np.asarray(_field(record, "cycle_error", 3), dtype=np.float64),
            geometry=geometries[target],
        )
    carried = {}
    for target, record in (getattr(result, "labels", None) or {}).items():
        target = int(target)
        labels_grid = np.asarray(_field(record, "labels", 0))
        confidence_grid = np.asarray(_field(record, "confidence", 1), dtype=np.float64)
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
            source=_jsonable(_field(record, "source", 2)),
            geometry=geometries[target],
        )
    ranking = [(int(i), float(s)) for i, s in getattr(result, "ranking", [])]
    return CollectionTransferResult(_names(keys, names), sources, points, carried, ranking)
