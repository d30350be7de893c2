"""Task-level functions shared by the command line and the napari widgets.

Each function takes `AttentionMaps` plus image indices and returns a result
(`napari_corrseg.tasks.results`, re-exported here) in *image pixels* (``(row, col)``,
pixel-centred) with the `ImageGeometry` of each image, so grid-sized maps can be shown in
napari with ``scale=geometry.scale`` and ``translate=geometry.translate``. Neither the CLI
nor the widgets do any geometry of their own.

`compute_maps` runs the engine through the disk cache (`napari_corrseg.files.cache`).

This module imports neither torch nor Qt: the engine is passed in as an object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.maps import AttentionMaps
from ..errors import CorrsegError
from .results import (
    CosegmentationResult,
    KeypointTransfer,
    LabelPropagation,
    MetricMap,
    PairResult,
    PointQuery,
    SegmentationResult,
    grid_labels_to_pixels,
    pixel_labels_to_grid,
    plain_values,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..files.cache import MapCache

__all__ = [
    "CosegmentationResult",
    "KeypointTransfer",
    "LabelPropagation",
    "MetricMap",
    "PairResult",
    "PointQuery",
    "SegmentationResult",
    "compute_maps",
    "cosegment_images",
    "grid_labels_to_pixels",
    "match_images",
    "pixel_labels_to_grid",
    "propagate_label_image",
    "query_point",
    "segment_image",
    "transfer_keypoints",
]

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]


def _check_index(maps: AttentionMaps, index: int, name: str) -> int:
    if not 0 <= int(index) < maps.n_images:
        raise CorrsegError(
            f"{name} image {index} does not exist; the maps hold images 0..{maps.n_images - 1}"
        )
    return int(index)


def _cross(maps: AttentionMaps, i: int, j: int) -> np.ndarray:
    if not maps.has(i, j):
        raise CorrsegError(
            f"no attention map for images ({i}, {j}); extract the maps with pairs that "
            f"include ({i}, {j}) and ({j}, {i}), or with pairs='all'"
        )
    return maps.cross(i, j)


def _check_points(points: np.ndarray, name: str, image_shape: Sequence[int]) -> np.ndarray:
    """``(P, 2)`` float64 pixel positions, each within the image (pixel centres +- 0.5)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1 and points.shape == (2,):
        points = points[None, :]
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must be (P, 2) (row, col) pixel positions, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    # checked here in pixels: the core would report the same position in grid cells
    height, width = image_shape
    edge = 0.5 + 1e-6
    outside = ((points < -edge) | (points > np.array([height, width]) - 1 + edge)).any(axis=1)
    if outside.any():
        row, col = points[np.argmax(outside)]
        raise ValueError(
            f"{name} has {int(outside.sum())} position(s) outside the {height}x{width} pixel "
            f"image, e.g. ({row:g}, {col:g}); positions are (row, col) pixels"
        )
    return points


# -- tasks -----------------------------------------------------------------------------

_METRIC_DESCRIPTIONS = {
    "cycle_error": "forward-backward cycle error per source token, grid cells (lower is better)",
    "entropy": "inverse-mapping entropy per target token, nats (lower is more certain)",
    "density": "number of source tokens mapped to each target token (high = collapse)",
    "nims": "entropy / log(1 + density) per target token; NaN where nothing maps",
}


def match_images(
    maps: AttentionMaps,
    source: int = 0,
    target: int = 1,
    *,
    max_matches: int | None = None,
    min_confidence: float | str = "auto",
    mutual: bool = False,
) -> PairResult:
    """Match a source image to a target image and compute the reliability maps.

    Parameters
    ----------
    maps : AttentionMaps
        Maps holding the cross pairs ``(source, target)`` and ``(target, source)``.
    source, target : int
        Image indices.
    max_matches : int, optional
        Keep at most this many matches, most confident first.
    min_confidence : float or "auto"
        Drop matches below this confidence; "auto" (default) keeps the matches the
        pair's own cycle consistency supports (`core.correspondence.reliability_cut`);
        0 keeps every token that has a peak.
    mutual : bool
        Keep only mutual nearest neighbours (zero cycle error).

    Returns
    -------
    PairResult
    """
    from ..core.correspondence import inverse_mapping, match, reliability_cut

    source = _check_index(maps, source, "source")
    target = _check_index(maps, target, "target")
    if source == target:
        raise CorrsegError("source and target are the same image; pick two different images")
    a_st, a_ts = _cross(maps, source, target), _cross(maps, target, source)
    grid = maps.grid
    inverse = inverse_mapping(a_st, a_ts, grid)
    found = match(
        a_st,
        a_ts,
        grid,
        mutual=mutual,
        min_confidence=min_confidence,
        max_matches=max_matches,
        inverse=inverse,
    )
    geo_s, geo_t = maps.geometries[source], maps.geometries[target]
    source_grid = np.asarray(found.source, dtype=np.float64).reshape(-1, 2)
    target_grid = np.asarray(found.target, dtype=np.float64).reshape(-1, 2)
    metric_values = {
        "cycle_error": (inverse.cycle_error, source, geo_s),
        "entropy": (inverse.entropy, target, geo_t),
        "density": (inverse.density, target, geo_t),
        "nims": (inverse.nims, target, geo_t),
    }
    metrics = {
        name: MetricMap(
            name,
            np.asarray(values, dtype=np.float64).reshape(grid),
            image,
            geometry,
            _METRIC_DESCRIPTIONS[name],
        )
        for name, (values, image, geometry) in metric_values.items()
    }
    return PairResult(
        source=source,
        target=target,
        source_geometry=geo_s,
        target_geometry=geo_t,
        source_points=geo_s.grid_to_pixel(source_grid),
        target_points=geo_t.grid_to_pixel(target_grid),
        source_grid_points=source_grid,
        target_grid_points=target_grid,
        confidence=np.asarray(found.confidence, dtype=np.float64).reshape(-1),
        cycle_error=np.asarray(found.cycle_error, dtype=np.float64).reshape(-1),
        entropy=np.asarray(found.entropy, dtype=np.float64).reshape(-1),
        ims=float(inverse.ims),
        metrics=metrics,
        min_confidence=float(found.min_confidence),
        auto_confidence=float(reliability_cut(inverse).threshold),
    )


def transfer_keypoints(
    maps: AttentionMaps, source: int, target: int, points_px: np.ndarray
) -> KeypointTransfer:
    """Carry keypoints given in source-image pixels to the target image.

    Parameters
    ----------
    maps : AttentionMaps
        Maps holding ``(source, target)`` and ``(target, source)``.
    source, target : int
        Image indices.
    points_px : numpy.ndarray
        ``(P, 2)`` keypoints ``(row, col)`` in source pixels.

    Returns
    -------
    KeypointTransfer
    """
    from ..core.correspondence import transfer_points

    source = _check_index(maps, source, "source")
    target = _check_index(maps, target, "target")
    geo_s, geo_t = maps.geometries[source], maps.geometries[target]
    points_px = _check_points(points_px, "points_px", geo_s.image_shape)
    moved = transfer_points(
        geo_s.pixel_to_grid(points_px),
        _cross(maps, source, target),
        _cross(maps, target, source),
        maps.grid,
    )
    return KeypointTransfer(
        source=source,
        target=target,
        source_points=points_px,
        target_points=geo_t.grid_to_pixel(np.asarray(moved.target, dtype=np.float64)),
        confidence=np.asarray(moved.confidence, dtype=np.float64).reshape(-1),
        cycle_error=np.asarray(moved.cycle_error, dtype=np.float64).reshape(-1),
        target_geometry=geo_t,
    )


def segment_image(
    maps: AttentionMaps, image: int = 0, *, threshold: float | str = "auto"
) -> SegmentationResult:
    """Segment one image by clustering its self-attention.

    Parameters
    ----------
    maps : AttentionMaps
        Maps holding the self-attention of ``image``.
    image : int
        Image index.
    threshold : float or "auto"
        Merge threshold; ``"auto"`` chooses it from the data.

    Returns
    -------
    SegmentationResult
    """
    from ..core.segmentation import segment

    image = _check_index(maps, image, "image")
    result = segment(maps.self(image), maps.grid, threshold=threshold)
    labels_grid = np.asarray(result.labels)
    geometry = maps.geometries[image]
    return SegmentationResult(
        image=image,
        labels_grid=labels_grid,
        labels=grid_labels_to_pixels(labels_grid, geometry),
        threshold=float(result.threshold),
        n_segments=int(result.n_segments),
        geometry=geometry,
        no_clear_structure=result.no_clear_structure,
    )


def cosegment_images(
    maps: AttentionMaps,
    images: Sequence[int] | None = None,
    *,
    threshold: float | str = "auto",
    mapper: Callable | None = None,
    progress: ProgressCallback | None = None,
) -> CosegmentationResult:
    """Co-segment a collection: label maps whose ids agree across the images.

    Parameters
    ----------
    maps : AttentionMaps
        Lazy maps (formed on demand from queries and keys, any number of images), or
        maps held in memory with the cross pairs between the images (each image needs
        both directions with at least one other image).
    images : sequence of int, optional
        Which images to co-segment (default: all).
    threshold : float or "auto"
        Merge threshold of the segment clustering; ``"auto"`` chooses it from the data.
    mapper : callable, optional
        Runs the per-image stages elsewhere (see
        `napari_corrseg.collection.cosegment.cosegment`).
    progress : callable, optional
        ``progress(stage, fraction)``.

    Returns
    -------
    CosegmentationResult
        Label ids refer to the same segment in every image; the segment table also
        counts each segment's pixels per image.
    """
    from ..collection.cosegment import cosegment

    indices = list(range(maps.n_images)) if images is None else list(images)
    for index in indices:
        _check_index(maps, index, "image")
    if len(indices) < 2:
        raise CorrsegError("co-segmentation needs at least two images")
    chosen = maps if indices == list(range(maps.n_images)) else maps.subset(indices)
    if not chosen.is_lazy and not chosen.pairs:
        raise CorrsegError("no cross attention between the images; extract with pairs='all'")
    try:
        result = cosegment(chosen, threshold=threshold, mapper=mapper, progress=progress)
    except ValueError as error:
        if "cross maps" not in str(error):
            raise
        raise CorrsegError(str(error)) from None
    geometries = [maps.geometries[i] for i in indices]
    labels_grid = [np.asarray(labels) for labels in result.labels]
    labels = [grid_labels_to_pixels(lg, g) for lg, g in zip(labels_grid, geometries, strict=True)]
    segments = [plain_values(dataclasses.asdict(record)) for record in result.segments]
    for record in segments:
        record["pixels"] = [int(np.count_nonzero(lab == record["id"])) for lab in labels]
    return CosegmentationResult(
        labels_grid=labels_grid,
        labels=labels,
        segments=segments,
        unmatched=plain_values(result.unmatched),
        threshold=float(result.threshold),
        geometries=geometries,
        no_clear_structure=result.no_clear_structure,
    )


def propagate_label_image(
    maps: AttentionMaps, source: int, target: int, labels_px: np.ndarray
) -> LabelPropagation:
    """Carry a painted label image of the source image to the target image.

    Parameters
    ----------
    maps : AttentionMaps
        Maps holding ``(target, source)``.
    source, target : int
        Image indices.
    labels_px : numpy.ndarray
        ``(H, W)`` integer labels on the source image's pixels (0 = unlabelled).

    Returns
    -------
    LabelPropagation
    """
    from ..core.cosegmentation import propagate_labels

    source = _check_index(maps, source, "source")
    target = _check_index(maps, target, "target")
    geo_s = maps.geometries[source]
    labels_px = np.asarray(labels_px)
    if labels_px.shape != tuple(geo_s.image_shape):
        raise ValueError(
            f"labels have shape {labels_px.shape} but source image {source} is "
            f"{tuple(geo_s.image_shape)}; paint the labels on that image"
        )
    h, w = maps.grid
    if labels_px.shape[0] >= h and labels_px.shape[1] >= w:
        # full-resolution labels: each token gets every label's area share, so a part
        # smaller than a token still counts
        labels_src = labels_px
    else:
        labels_src = pixel_labels_to_grid(labels_px, geo_s)
    labels_grid, confidence_grid = propagate_labels(
        labels_src, _cross(maps, target, source), maps.grid
    )
    geo_t = maps.geometries[target]
    labels_grid = np.asarray(labels_grid)
    confidence_grid = np.asarray(confidence_grid, dtype=np.float64)
    return LabelPropagation(
        source=source,
        target=target,
        labels_grid=labels_grid,
        confidence_grid=confidence_grid,
        labels=grid_labels_to_pixels(labels_grid, geo_t),
        confidence=grid_labels_to_pixels(confidence_grid, geo_t),
        target_geometry=geo_t,
    )


def query_point(
    maps: AttentionMaps, source: int, target: int, point_px: Sequence[float]
) -> PointQuery:
    """Where does one source pixel land in the target image?

    Parameters
    ----------
    maps : AttentionMaps
        Maps holding ``(source, target)``.
    source, target : int
        Image indices.
    point_px : sequence of float
        ``(row, col)`` in source pixels.

    Returns
    -------
    PointQuery
    """
    from ..core.correspondence import query

    source = _check_index(maps, source, "source")
    target = _check_index(maps, target, "target")
    point = _check_points(point_px, "point_px", maps.geometries[source].image_shape)[0]
    result = query(
        _cross(maps, source, target), maps.geometries[source].pixel_to_grid(point), maps.grid
    )
    geo_t = maps.geometries[target]
    return PointQuery(
        heatmap=np.asarray(result.heatmap),
        best=geo_t.grid_to_pixel(np.asarray(result.best, dtype=np.float64)),
        score=float(result.score),
        target_geometry=geo_t,
    )


def compute_maps(
    engine: Any,
    images: Sequence[np.ndarray],
    *,
    layers: Any = "auto",
    timestep: int = 261,
    seed: int = 0,
    pairs: Any = "all",
    cache: MapCache | bool | None = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> AttentionMaps:
    """Extract attention maps, reading and filling the disk cache.

    Parameters
    ----------
    engine : Engine, LazyEngine or str
        From `napari_corrseg.load_engine`; only touched on a cache miss. A
        `napari_corrseg.engine.LazyEngine` (or a model name, which becomes one) is
        loaded only on a miss: a hit never loads the model.
    images : sequence of numpy.ndarray
        The images, as the user gave them (2-D grey or ``(H, W, 3|4)``).
    layers, timestep, seed, pairs
        Passed to ``engine.extract`` and part of the cache key.
    cache : MapCache, bool or None
        ``True`` uses the default cache (`napari_corrseg.files.cache.MapCache`), ``False`` or
        ``None`` disables it, or pass a `MapCache`.
    progress : callable, optional
        ``progress(stage, fraction)``; a hit reports ``("cache", 1.0)``.
    cancel : callable, optional
        Returns True to stop; the engine raises `napari_corrseg.errors.Cancelled`.

    Returns
    -------
    AttentionMaps
    """
    from ..files.cache import MapCache, cache_key

    if isinstance(engine, str):
        from ..engine import LazyEngine  # imports torch, which a model needs anyway

        engine = LazyEngine(engine)
    if cache is True:
        cache = MapCache()
    elif cache is False:
        cache = None
    key = None
    if cache is not None:
        # image_size changes the maps but is not part of every engine's identity
        identity = {**dict(engine.identity), "image_size": getattr(engine, "image_size", None)}
        key = cache_key(images, identity, layers=layers, timestep=timestep, seed=seed, pairs=pairs)
        hit = cache.get(key)
        if hit is not None:
            if progress is not None:
                progress("cache", 1.0)
            return hit
    maps = engine.extract(
        list(images),
        layers=layers,
        timestep=timestep,
        seed=seed,
        pairs=pairs,
        progress=progress,
        cancel=cancel,
    )
    if cache is not None and key is not None:
        cache.put(key, maps)
    return maps
