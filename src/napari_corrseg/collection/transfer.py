"""Keypoints and painted labels of a few annotated images, carried to every other image.

`transfer_collection(maps, keypoints, labels)` proposes, for every target image, where
each keypoint lies and which label each token carries, each proposal with a confidence,
and ranks the targets least confident first so that a user reviews the worst first.

Per target and per annotated source, the core functions do the work:
`napari_corrseg.core.correspondence.transfer_points` (query forward, query back, a
sub-token cycle error and a confidence) and
`napari_corrseg.core.cosegmentation.propagate_labels` (the target's attention over the
source mixes the source's label fractions). With several sources, each keypoint takes
the source whose proposal is most confident (a source where the point is not marked, or
that sees the part badly, loses), and each label token the source it maps onto best
(inverse-mapping confidence). Cost: two cross maps per (target, source); linear in the
number of targets.

The per-target work is the module-level `transfer_stage`, run through a ``mapper`` like
the stages of `napari_corrseg.collection.cosegment`.

numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core._correspondence_ops import check_points
from ..core.correspondence import inverse_mapping_checked
from ..core.cosegmentation import propagate_labels_checked
from ..core.maps import AttentionMaps
from ..core.point_query import transfer_points_checked
from .links import checked_maps

__all__ = [
    "CollectionTransfer",
    "LabelProposal",
    "PointProposal",
    "transfer_collection",
    "transfer_stage",
]

#: Pixel label images are sampled down to at most this many samples per token side
#: before they travel to tasks; each token still gets every label's area share.
LABEL_SAMPLES_PER_TOKEN = 8

Mapper = Callable[[Callable, list], list]
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class PointProposal:
    """Keypoints proposed on one target image, in grid coordinates.

    Attributes
    ----------
    target : numpy.ndarray
        ``(P, 2)`` ``(row, col)`` per keypoint; NaN where no source marked it.
    confidence : numpy.ndarray
        ``(P,)`` in ``[0, 1]`` (`transfer_points`' confidence of the chosen source);
        0 where no source marked the point.
    source : numpy.ndarray
        ``(P,)`` the source image chosen per keypoint; -1 where none.
    cycle_error : numpy.ndarray
        ``(P,)`` sub-token round-trip error of the chosen proposal, grid cells.
    """

    target: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    cycle_error: np.ndarray


@dataclass(frozen=True)
class LabelProposal:
    """Labels proposed on one target image, on the token grid.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(h, w)`` int32 label values of the sources.
    confidence : numpy.ndarray
        ``(h, w)`` float32 in ``[0, 1]``: the winning label's share of the attention.
    source : numpy.ndarray
        ``(h, w)`` int32: the source image chosen per token, the one the token maps
        onto best.
    support : numpy.ndarray
        ``(h, w)`` float32 in ``[0, 1]``: how well the token maps onto the chosen source
        and back (the inverse-mapping confidence of `napari_corrseg.core.correspondence`:
        cycle error, entropy, density).
    """

    labels: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    support: np.ndarray


@dataclass
class CollectionTransfer:
    """Result of `transfer_collection`.

    Attributes
    ----------
    points : dict
        ``{target: PointProposal}`` (empty without keypoints).
    labels : dict
        ``{target: LabelProposal}`` (empty without labels).
    ranking : list of (int, float)
        ``(target, score)`` least confident first; the score is the mean confidence of
        the target's proposed keypoints, or the mean of share x support over its label
        tokens, or the mean of the two when both are given.
    sources : list of int
        The annotated images.
    """

    points: dict[int, PointProposal]
    labels: dict[int, LabelProposal]
    ranking: list[tuple[int, float]]
    sources: list[int]

    def score(self, image: int) -> float:
        """The ranking score of one target."""
        return dict(self.ranking)[image]


def transfer_stage(
    maps: AttentionMaps,
    target: int,
    keypoints: Mapping[int, np.ndarray],
    labels: Mapping[int, np.ndarray],
) -> tuple[PointProposal | None, LabelProposal | None]:
    """Proposals for one target from every source (the per-target task).

    Parameters
    ----------
    maps : AttentionMaps
        Lazy, or dense and checked (`checked_maps`, as `transfer_collection` passes
        them), holding both directions between the target and each source.
    target : int
        The target image.
    keypoints : mapping
        ``{source: (P, 2) grid points, NaN rows unmarked}`` (the same P for all).
    labels : mapping
        ``{source: (h, w) or (H, W) labels}``.

    Returns
    -------
    (PointProposal or None, LabelProposal or None)
    """
    grid = maps.grid
    point_result = label_result = None
    if keypoints:
        n_points = next(iter(keypoints.values())).shape[0]
        best = PointProposal(
            target=np.full((n_points, 2), np.nan),
            confidence=np.zeros(n_points),
            source=np.full(n_points, -1, dtype=np.int64),
            cycle_error=np.full(n_points, np.nan),
        )
        for source in sorted(keypoints):
            points = keypoints[source]
            marked = np.flatnonzero(~np.isnan(points).any(axis=1))
            if source == target or marked.size == 0:
                continue
            moved = transfer_points_checked(
                points[marked], maps.cross(source, target), maps.cross(target, source), grid
            )
            better = moved.confidence > best.confidence[marked]
            chosen = marked[better]
            best.target[chosen] = moved.target[better]
            best.confidence[chosen] = moved.confidence[better]
            best.source[chosen] = source
            best.cycle_error[chosen] = moved.cycle_error[better]
        point_result = best
    if labels:
        best_labels = best_share = best_support = best_source = None
        for source in sorted(labels):
            if source == target:
                continue
            a_ts, a_st = maps.cross(target, source), maps.cross(source, target)
            proposed, share = propagate_labels_checked(labels[source], a_ts, grid)
            # how well each target token maps onto this source and back
            support = inverse_mapping_checked(a_ts, a_st, grid, 1.0).confidence.reshape(grid)
            if best_labels is None:
                best_labels, best_share = proposed.copy(), share.copy()
                best_support = support.astype(np.float32)
                best_source = np.full(grid, source, dtype=np.int32)
                continue
            better = support > best_support
            best_labels[better] = proposed[better]
            best_share[better] = share[better]
            best_support[better] = support[better]
            best_source[better] = source
        if best_labels is not None:
            label_result = LabelProposal(best_labels, best_share, best_source, best_support)
    return point_result, label_result


def _check_keypoints(keypoints, n_images: int, grid) -> dict[int, np.ndarray]:
    if not isinstance(keypoints, Mapping):
        raise ValueError(
            "keypoints must be a dict {source image: (P, 2) grid points}, "
            f"got {type(keypoints).__name__}"
        )
    checked, sizes = {}, set()
    for source, points in keypoints.items():
        source = _check_image(source, n_images, "keypoints")
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(
                f"keypoints of image {source} must be (P, 2) (row, col) grid points, "
                f"got shape {points.shape}"
            )
        marked = ~np.isnan(points).any(axis=1)
        if marked.any():
            check_points(points[marked], grid, name=f"keypoints of image {source}")
        checked[source] = points
        sizes.add(points.shape[0])
    if len(sizes) > 1:
        raise ValueError(
            f"every source must list the same keypoints (got {sorted(sizes)} rows); mark a "
            "keypoint missing on a source with a NaN row"
        )
    return checked


def _check_image(index, n_images: int, what: str) -> int:
    if not isinstance(index, int | np.integer) or not 0 <= int(index) < n_images:
        raise ValueError(f"{what} names image {index!r}; the maps hold images 0..{n_images - 1}")
    return int(index)


def _compact_labels(labels, grid) -> np.ndarray:
    """Pixel labels sampled to at most `LABEL_SAMPLES_PER_TOKEN` per token side (at
    pixel centres), so that they are small enough to send to every task."""
    labels = np.asarray(labels)
    h, w = grid
    most = (LABEL_SAMPLES_PER_TOKEN * h, LABEL_SAMPLES_PER_TOKEN * w)
    if labels.ndim != 2 or (labels.shape[0] <= most[0] and labels.shape[1] <= most[1]):
        return labels
    rows = ((np.arange(most[0]) + 0.5) * labels.shape[0] / most[0]).astype(int)
    cols = ((np.arange(most[1]) + 0.5) * labels.shape[1] / most[1]).astype(int)
    return labels[np.ix_(rows, cols)]


def transfer_collection(
    maps: AttentionMaps,
    keypoints: Mapping[int, np.ndarray] | None = None,
    labels: Mapping[int, np.ndarray] | None = None,
    *,
    targets: Sequence[int] | None = None,
    mapper: Mapper | None = None,
    progress: Progress | None = None,
) -> CollectionTransfer:
    """Carry keypoints and painted labels from annotated images to every other image.

    Parameters
    ----------
    maps : AttentionMaps
        Lazy (`AttentionMaps.from_query_key`) or dense with the pairs needed.
    keypoints : dict, optional
        ``{source: (P, 2)}`` grid coordinates; row ``k`` is the same keypoint on every
        source, a NaN row means "not marked on this source".
    labels : dict, optional
        ``{source: (h, w) grid labels or (H, W) pixel labels}``; equal values mean the
        same label on every source.
    targets : sequence of int, optional
        Images to propose on; default every image that is not a source.
    mapper : callable, optional
        ``mapper(fn, [args, ...]) -> [fn(maps, *args), ...]``; the stage is
        `transfer_stage` with ``(target, keypoints, labels)``.
    progress : callable, optional
        ``progress("transfer", fraction)``.

    Returns
    -------
    CollectionTransfer

    Raises
    ------
    ValueError
        On no annotations, an image index outside the maps, keypoints that are not
        ``(P, 2)`` on the grid, or sources listing different numbers of keypoints.
    """
    maps = checked_maps(maps)
    n_images = maps.n_images
    point_sources = _check_keypoints(keypoints, n_images, maps.grid) if keypoints else {}
    label_sources = {}
    for source, painted in (labels or {}).items():
        if not isinstance(labels, Mapping):
            raise ValueError("labels must be a dict {source image: label image}")
        label_sources[_check_image(source, n_images, "labels")] = _compact_labels(
            painted, maps.grid
        )
    sources = sorted(set(point_sources) | set(label_sources))
    if not sources:
        raise ValueError("nothing to transfer: give keypoints or labels of at least one image")
    if targets is None:
        targets = [i for i in range(n_images) if i not in sources]
    else:
        targets = [_check_image(t, n_images, "targets") for t in targets]
    arguments = [(t, point_sources, label_sources) for t in targets]
    if progress is not None:
        progress("transfer", 0.0)
    if mapper is not None:
        results = mapper(transfer_stage, arguments)
    else:
        results = []
        for done, args in enumerate(arguments, start=1):
            results.append(transfer_stage(maps, *args))
            if progress is not None:
                progress("transfer", done / len(arguments))
    if progress is not None:
        progress("transfer", 1.0)
    points, label_maps, ranking = {}, {}, []
    for target, (moved, painted) in zip(targets, results, strict=True):
        parts = []
        if moved is not None:
            points[target] = moved
            proposed = moved.confidence[moved.source >= 0]
            parts.append(float(proposed.mean()) if proposed.size else 0.0)
        if painted is not None:
            label_maps[target] = painted
            parts.append(float((painted.confidence * painted.support).mean()))
        ranking.append((target, float(np.mean(parts)) if parts else float("nan")))
    ranking.sort(key=lambda item: (item[1], item[0]))
    return CollectionTransfer(points, label_maps, ranking, sources)
