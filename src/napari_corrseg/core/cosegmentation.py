"""Label maps that agree across images, and labels carried from one image to another.

`cosegment` clusters the anchors of all images together, so a part gets one id in every
image it appears in. Each anchor ``a`` of image ``i`` is described by where it leads in
every image ``k`` of the collection: the two-step attention ``A_ik[a] @ A_kk`` (to image
``k`` through self or cross attention, then spread over the region it lands in by
``k``'s self-attention). The blocks for all ``k`` side by side form one distribution per
anchor; anchors are then clustered exactly as in `napari_corrseg.core.segmentation.segment`
(symmetric KL, average linkage, cut in the widest log-gap of the merge distances). A
cluster whose anchors all come from one image is a part seen in that image only; it is
kept and flagged. Each shared part gets a consistency score from the inverse mapping of
every pair of images it appears in.

`propagate_labels` turns a label image painted on a source image into a proposal on a
target image, with a confidence per token.

numpy and scipy only (plus `napari_corrseg.core.correspondence`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ._validation import check_attention, check_grid
from .correspondence import inverse_mapping
from .segmentation import (
    LOG_FLOOR,
    _check_threshold,
    anchor_tokens,
    cluster_means,
    pool_factor,
    pool_keys,
    symmetric_kl,
    widest_log_gap,
)

__all__ = [
    "Cosegmentation",
    "PropagatedLabels",
    "SegmentRecord",
    "cosegment",
    "label_fractions",
    "propagate_labels",
    "score_segments",
]

#: Anchors over the whole collection are kept near this many (16 x 16 per image for a
#: pair, fewer per image for larger collections) so that clustering stays fast.
ANCHOR_BUDGET = 512
#: Each anchor's joint feature (all images side by side) is kept near this many values
#: by pooling keys: 2 images of 32 x 32 keep every key, 8 images are pooled 2 x 2.
FEATURE_BUDGET = 4096


@dataclass
class SegmentRecord:
    """One co-segmentation id.

    Attributes
    ----------
    id : int
        The label value, the same in every image.
    images : list of int
        Images whose label map contains the id.
    sizes : list of int
        Tokens with this id in each image of the collection (0 where absent).
    consistency : float
        In ``[0, 1]``: over every ordered pair ``(i, j)`` of images holding the id, the
        fraction of its tokens in ``i`` whose forward match lands on the id in ``j``
        and whose backward match returns onto the id in ``i``; averaged over pairs.
        NaN for an id seen in one image only.
    shared : bool
        Whether the id appears in two or more images.
    """

    id: int
    images: list[int]
    sizes: list[int]
    consistency: float
    shared: bool


@dataclass
class Cosegmentation:
    """Result of `cosegment`.

    Attributes
    ----------
    labels : list of numpy.ndarray
        ``(h, w)`` int32 per image; ids ``1..n`` mean the same part in every image (0 is
        never used).
    segments : list of SegmentRecord
        One record per id, in id order.
    unmatched : list of int
        Ids found in one image only (parts with no counterpart elsewhere).
    threshold : float
        Merge threshold used; with "auto" the chosen one, reusable as a number.
    merge_distances : numpy.ndarray
        Ascending merge distances of the joint anchor clustering.
    gap_ratio : float
        Upper / lower merge distance around the cut.
    """

    labels: list[np.ndarray]
    segments: list[SegmentRecord]
    unmatched: list[int]
    threshold: float
    merge_distances: np.ndarray
    gap_ratio: float

    @property
    def n_segments(self) -> int:
        """Number of distinct ids over the collection."""
        return len(self.segments)


def _check_collection(self_maps, cross_maps, grid):
    if isinstance(self_maps, np.ndarray) or not isinstance(self_maps, Sequence):
        raise ValueError("self_maps must be a list with one (N, N) self-attention per image")
    if len(self_maps) < 2:
        raise ValueError(f"cosegment needs at least 2 images, got {len(self_maps)}")
    if not isinstance(cross_maps, Mapping):
        raise ValueError("cross_maps must be a dict {(i, j): (N, N) map} over ordered pairs")
    n_images = len(self_maps)
    selfs = [check_attention(m, grid, name=f"self_maps[{i}]") for i, m in enumerate(self_maps)]
    grid = check_grid(grid, selfs[0].shape[0])
    cross = _check_cross(cross_maps, n_images, grid)
    return selfs, cross, grid


def _check_cross(cross_maps: Mapping, n_images: int, grid) -> dict:
    """Every ordered pair's map, validated; a clear error names the missing pairs."""
    missing = [
        (i, j)
        for i in range(n_images)
        for j in range(n_images)
        if i != j and (i, j) not in cross_maps
    ]
    if missing:
        more = "..." if len(missing) > 6 else ""
        raise ValueError(
            f"cross_maps lacks the ordered pairs {missing[:6]}{more}; "
            "extract the maps for every ordered pair of images (queries of i over keys of j)"
        )
    return {
        (i, j): check_attention(cross_maps[(i, j)], grid, name=f"cross_maps[{(i, j)}]")
        for i in range(n_images)
        for j in range(n_images)
        if i != j
    }


def _default_anchors(n_images: int, grid: tuple[int, int]) -> int:
    per_side = int(np.sqrt(ANCHOR_BUDGET / n_images))
    return max(2, min(16, per_side, *grid))


def cosegment(
    self_maps: Sequence,
    cross_maps: Mapping,
    grid,
    threshold: float | str = "auto",
    *,
    anchors=None,
) -> Cosegmentation:
    """Segment a collection of images with ids that agree across images.

    Parameters
    ----------
    self_maps : list of numpy.ndarray
        ``(N, N)`` row-stochastic self-attention of each image (2 or more).
    cross_maps : dict
        ``{(i, j): (N, N)}`` cross self-attention, queries of image ``i`` over keys of
        image ``j``, for every ordered pair ``i != j``.
    grid : tuple of int
        ``(h, w)`` shared by all maps.
    threshold : "auto" or float
        As in `napari_corrseg.core.segmentation.segment`.
    anchors : None, int or (int, int)
        Anchor grid per image; default 16 x 16 for a pair, fewer per image for larger
        collections (about 512 anchors in all).

    Returns
    -------
    Cosegmentation

    Raises
    ------
    ValueError
        On fewer than 2 images, a missing pair, or maps that are not row-stochastic
        ``(N, N)`` arrays on ``grid``.
    """
    selfs, cross, grid = _check_collection(self_maps, cross_maps, grid)
    auto = _check_threshold(threshold)
    n_images = len(selfs)
    if anchors is None:
        anchors = _default_anchors(n_images, grid)
    anchor_index = anchor_tokens(grid, anchors)

    def attention(i, k):
        return selfs[i] if i == k else cross[(i, k)]

    # keys pooled so that the joint feature stays under FEATURE_BUDGET values
    factor = pool_factor(grid, max(FEATURE_BUDGET // n_images, 1))
    pooled = [pool_keys(m, grid, factor) for m in selfs]
    n_keys = pooled[0].shape[1]
    # feature of every anchor: its two-step attention into every image, side by side
    features = np.empty((n_images * anchor_index.size, n_images * n_keys), np.float32)
    for i in range(n_images):
        rows = slice(i * anchor_index.size, (i + 1) * anchor_index.size)
        for k in range(n_images):
            block = attention(i, k)[anchor_index] @ pooled[k]
            block /= block.sum(axis=1, keepdims=True) * n_images
            features[rows, k * n_keys : (k + 1) * n_keys] = block
    distances = symmetric_kl(features)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    merge_distances = tree[:, 2].copy()
    if auto:
        _, threshold, gap_ratio = widest_log_gap(merge_distances)
    else:
        threshold, gap_ratio = float(threshold), float("nan")
    clusters = fcluster(tree, t=threshold, criterion="distance")
    anchor_image = np.repeat(np.arange(n_images), anchor_index.size)
    centroids = cluster_means(features, clusters)

    labels = []
    for i in range(n_images):
        # only parts with an anchor in image i may claim its tokens
        allowed = np.unique(clusters[anchor_image == i]) - 1
        block = centroids[allowed, i * n_keys : (i + 1) * n_keys]
        block = block / block.sum(axis=1, keepdims=True)
        scores = pooled[i] @ np.log(np.maximum(block, LOG_FLOOR)).T
        labels.append(allowed[np.argmax(scores, axis=1)].reshape(grid) + 1)
    labels = _relabel_collection(labels)
    segments = _segment_records(labels, cross, grid)
    return Cosegmentation(
        labels=labels,
        segments=segments,
        unmatched=[s.id for s in segments if not s.shared],
        threshold=float(threshold),
        merge_distances=merge_distances,
        gap_ratio=float(gap_ratio),
    )


def _relabel_collection(labels: list[np.ndarray]) -> list[np.ndarray]:
    """Ids ``1..n`` in order of first appearance over the images in turn."""
    flat = np.concatenate([lab.reshape(-1) for lab in labels])
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    lookup = np.zeros(int(flat.max()) + 1, dtype=np.int32)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return [lookup[lab] for lab in labels]


def score_segments(labels: Sequence, cross_maps: Mapping, grid) -> list[SegmentRecord]:
    """Where each id of a set of label maps appears, and how consistent it is.

    Works on any labels with shared ids (for example a `cosegment` result after manual
    corrections in napari).

    Parameters
    ----------
    labels : list of numpy.ndarray
        ``(h, w)`` int label maps, one per image, ids ``>= 1`` shared across images.
    cross_maps : dict
        ``{(i, j): (N, N)}`` for every ordered pair of images.
    grid : tuple of int
        ``(h, w)``.

    Returns
    -------
    list of SegmentRecord
        One per id ``1..max``; see `SegmentRecord` for the consistency score.
    """
    h, w = check_grid(grid)
    labels = [np.asarray(lab) for lab in labels]
    for i, lab in enumerate(labels):
        if lab.shape != (h, w) or lab.dtype.kind not in "iu" or lab.min() < 1:
            raise ValueError(
                f"labels[{i}] must be an ({h}, {w}) integer map with ids >= 1, "
                f"got shape {lab.shape} and dtype {lab.dtype}"
            )
    n_images = len(labels)
    if not isinstance(cross_maps, Mapping):
        raise ValueError("cross_maps must be a dict {(i, j): (N, N) map} over ordered pairs")
    cross = _check_cross(cross_maps, n_images, (h, w))
    return _segment_records(labels, cross, (h, w))


def _segment_records(labels, cross, grid) -> list[SegmentRecord]:
    n_images = len(labels)
    n_ids = max(int(lab.max()) for lab in labels)
    flat = [lab.reshape(-1) for lab in labels]
    sizes = np.stack([np.bincount(f, minlength=n_ids + 1)[1:] for f in flat], axis=1)
    agree = np.zeros((n_ids, n_images, n_images))
    for i in range(n_images):
        for j in range(i + 1, n_images):
            # one inverse mapping serves both directions: its backward map is j -> i
            inv = inverse_mapping(cross[(i, j)], cross[(j, i)], grid)
            for a, b, forward, backward in (
                (i, j, inv.forward, inv.backward),
                (j, i, inv.backward, inv.forward),
            ):
                landed = flat[b][forward]
                returned = flat[a][backward[forward]]
                ok = (landed == flat[a]) & (returned == flat[a])
                agree[:, a, b] = np.bincount(flat[a], weights=ok, minlength=n_ids + 1)[1:]
    records = []
    for s in range(n_ids):
        present = [int(i) for i in np.flatnonzero(sizes[s] > 0)]
        pairs = [(i, j) for i in present for j in present if i != j]
        consistency = (
            float(np.mean([agree[s, i, j] / sizes[s, i] for i, j in pairs]))
            if pairs
            else float("nan")
        )
        records.append(
            SegmentRecord(
                id=s + 1,
                images=present,
                sizes=[int(v) for v in sizes[s]],
                consistency=consistency,
                shared=len(present) > 1,
            )
        )
    return records


class PropagatedLabels(NamedTuple):
    """Labels carried to the target grid, and how sure each token is (unpacks as a pair)."""

    labels: np.ndarray
    confidence: np.ndarray


def label_fractions(labels_src, grid) -> tuple[np.ndarray, np.ndarray]:
    """Per-token area fraction of every label value.

    Parameters
    ----------
    labels_src : numpy.ndarray
        ``(h, w)`` labels on the token grid, or ``(H, W)`` labels on the source image
        with ``H >= h`` and ``W >= w`` (each pixel counts for the token holding its centre).
    grid : tuple of int
        ``(h, w)``.

    Returns
    -------
    fractions : numpy.ndarray
        ``(N, L)`` float32, rows sum to 1.
    values : numpy.ndarray
        ``(L,)`` the label value of each column, ascending.
    """
    h, w = check_grid(grid)
    labels = np.asarray(labels_src)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(
            f"labels_src must be a 2-D integer label image, got shape {labels.shape} and "
            f"dtype {labels.dtype}; use a napari Labels layer's data"
        )
    if labels.shape[0] < h or labels.shape[1] < w:
        raise ValueError(
            f"labels_src of shape {labels.shape} is smaller than the {h}x{w} token grid; "
            "pass labels on the grid or on the full-size source image"
        )
    if labels.min() < 0:
        raise ValueError("labels_src has negative values; label ids must be >= 0")
    values, index = np.unique(labels, return_inverse=True)
    # the token holding each pixel's centre: floor((p + 0.5) * h / H), in integers
    rows = (2 * np.arange(labels.shape[0]) + 1) * h // (2 * labels.shape[0])
    cols = (2 * np.arange(labels.shape[1]) + 1) * w // (2 * labels.shape[1])
    token = (rows[:, None] * w + cols[None, :]).reshape(-1)
    counts = np.bincount(token * values.size + index.reshape(-1), minlength=h * w * values.size)
    counts = counts.reshape(h * w, values.size).astype(np.float32)
    return counts / counts.sum(axis=1, keepdims=True), values


def propagate_labels(labels_src, a_ts, grid) -> PropagatedLabels:
    """Carry a source label image to the target through cross self-attention.

    Every target token takes the attention-weighted mix of the source tokens' label
    fractions, ``P = A_ts @ F``, and the label with the largest share. Label 0
    (background) is a label like any other: background on the source stays background
    on the target.

    Parameters
    ----------
    labels_src : numpy.ndarray
        ``(h, w)`` labels on the grid, or ``(H, W)`` labels on the source image.
    a_ts : numpy.ndarray
        ``(N, N)`` row-stochastic map, target queries over source keys.
    grid : tuple of int
        ``(h, w)`` of the token grid.

    Returns
    -------
    PropagatedLabels
        ``labels`` ``(h, w)`` with the source's label values, and ``confidence``
        ``(h, w)`` in ``[0, 1]``: the winning label's share of the attention.
    """
    a_ts = check_attention(a_ts, grid, name="a_ts")
    h, w = check_grid(grid, a_ts.shape[0])
    fractions, values = label_fractions(labels_src, (h, w))
    shares = a_ts @ fractions
    best = np.argmax(shares, axis=1)
    confidence = np.clip(shares[np.arange(best.size), best], 0.0, 1.0)
    return PropagatedLabels(
        values[best].reshape(h, w).astype(np.int32),
        confidence.reshape(h, w).astype(np.float32),
    )
