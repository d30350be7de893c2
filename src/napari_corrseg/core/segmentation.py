"""Segmentation of one image by clustering its self-attention, with an automatic threshold.

The idea is DiffSeg's (Tian et al., CVPR 2024, google/diffseg): tokens whose attention
distributions are alike belong to the same segment, anchors on a regular grid keep the
work small, and symmetric Kullback-Leibler divergence measures likeness. What differs
(see ``docs/segmentation.md``):

1. Proposals. DiffSeg averages, per anchor, the attention of every token within a KL
   threshold of it. Here an anchor's proposal is its two-step attention ``A[a] @ A``: the
   same averaging, weighted by the anchor's own attention, with no threshold.
2. Merging. DiffSeg merges greedily for a fixed number of iterations at one threshold.
   Here the symmetric-KL distances between proposals go into average-linkage
   agglomerative clustering, which gives the whole sequence of merge distances.
3. Threshold. ``threshold="auto"`` cuts the merge tree inside the widest gap of the
   merge distances on a log scale (the number of segments that survives the widest
   range of thresholds); the returned threshold is the geometric middle of that gap, so
   passing it back reproduces the segmentation. A number cuts the tree there. Distances
   are computed in float64 and floored at the noise the input's own precision can make
   (`merge_noise_floor`); when the widest gap is not a clear one (the merge distance
   less than doubles across it, `CLEAR_GAP_RATIO`) the map shows no clear structure:
   "auto" gives one segment and says so (`Segmentation.no_clear_structure`).
4. Assignment. DiffSeg labels a pixel by the arg-max of the merged attention maps. Here
   each token goes to the segment whose mean proposal explains its own attention row
   best (smallest ``KL(row || segment)``), so every token gets exactly one segment.
5. Pooling. On grids above 32 x 32 the key axis is summed over blocks down to at most
   32 x 32 before clustering; every query token is still labelled on the full grid.

numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ._merging import (
    CLEAR_GAP_RATIO,
    LOG_FLOOR,
    _normalised,
    is_clear_gap,
    merge_levels,
    merge_noise_floor,
    symmetric_kl,
    widest_log_gap,
)
from ._validation import check_attention, check_grid, input_precision

__all__ = [
    "CLEAR_GAP_RATIO",
    "Segmentation",
    "anchor_tokens",
    "is_clear_gap",
    "merge_levels",
    "merge_noise_floor",
    "pool_keys",
    "segment",
    "symmetric_kl",
    "widest_log_gap",
]

#: Anchors per side by default, as DiffSeg's 16 x 16 grid.
DEFAULT_ANCHORS_PER_SIDE = 16
#: Keys are pooled to at most this many (32 x 32) for clustering (see `pool_keys`).
MAX_CLUSTER_KEYS = 1024


@dataclass
class Segmentation:
    """Result of `segment`.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(h, w)`` int32 segment ids ``1..n_segments``; every token has one.
    threshold : float
        Merge threshold used (symmetric KL between proposals, average linkage). With
        ``threshold="auto"`` the chosen value: pass it back to reproduce the result.
    n_segments : int
        Number of distinct ids in ``labels``.
    merge_distances : numpy.ndarray
        ``(n_anchors - 1,)`` ascending distances at which the anchor clusters merge; the
        automatic threshold sits in the widest log-gap of this sequence.
    anchors : numpy.ndarray
        ``(n_anchors,)`` token indices of the anchors.
    anchor_labels : numpy.ndarray
        ``(n_anchors,)`` cluster of each anchor after the cut (before relabelling).
    auto : bool
        Whether the threshold was chosen automatically.
    gap_ratio : float
        Upper / lower merge distance around the widest gap (with "auto") or the given
        threshold: how clearly the data separate there (large is clear, near 1 is
        ambiguous).
    no_clear_structure : bool
        True when ``gap_ratio`` is below `CLEAR_GAP_RATIO`: no number of segments stands
        out. With "auto" the result is then one segment; ``levels()`` still lists the
        other cuts.
    noise_floor : float
        Merge distances at or below this are rounding noise of the input (see
        `merge_noise_floor`); they count as 0.
    """

    labels: np.ndarray
    threshold: float
    n_segments: int
    merge_distances: np.ndarray
    anchors: np.ndarray
    anchor_labels: np.ndarray
    auto: bool
    gap_ratio: float
    no_clear_structure: bool = False
    noise_floor: float = 0.0

    def levels(self, max_segments: int = 20) -> list[tuple[int, float, float]]:
        """Other ways to cut the same tree: ``(n_clusters, threshold, gap_ratio)``.

        One entry per number of anchor clusters from 2 to ``max_segments``, with the
        threshold that gives it (pass it to `segment`) and how stable it is (the ratio
        of the merge distances around it; the "auto" level has the largest). After
        token assignment a cluster that wins no token disappears, so ``n_segments`` can
        come out smaller than ``n_clusters``.
        """
        return merge_levels(self.merge_distances, max_segments, floor=self.noise_floor)


def anchor_tokens(grid: tuple[int, int], anchors=None) -> np.ndarray:
    """Token indices of the anchors.

    Parameters
    ----------
    grid : tuple of int
        ``(h, w)`` of the token grid.
    anchors : None, int, (int, int) or array of shape (K, 2)
        None: a ``16 x 16`` grid (fewer per side on a smaller token grid); an int ``k``
        or ``(k_rows, k_cols)``: a regular grid of that many; a ``(K, 2)`` array: the
        ``(row, col)`` tokens themselves.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` int64 unique token indices in raster order.
    """
    h, w = check_grid(grid)
    if anchors is None:
        anchors = (min(DEFAULT_ANCHORS_PER_SIDE, h), min(DEFAULT_ANCHORS_PER_SIDE, w))
    array = np.asarray(anchors)
    if array.ndim == 2:
        if array.shape[1] != 2 or array.shape[0] < 2:
            raise ValueError(
                f"anchors as points must be (K, 2) (row, col) with K >= 2, got {array.shape}"
            )
        rows, cols = np.round(array[:, 0]).astype(int), np.round(array[:, 1]).astype(int)
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= h or cols.max() >= w:
            raise ValueError(f"anchor points must lie on the {h}x{w} grid")
        return np.unique(rows * w + cols)
    if array.ndim > 1 or array.size not in (1, 2) or array.dtype.kind not in "iu":
        raise ValueError(
            f"anchors must be None, an int, (rows, cols) or (K, 2) points; got {anchors!r}"
        )
    k_rows, k_cols = (int(array), int(array)) if array.size == 1 else (int(v) for v in array)
    if not (1 <= k_rows <= h and 1 <= k_cols <= w) or k_rows * k_cols < 2:
        raise ValueError(
            f"an anchor grid of {k_rows}x{k_cols} does not fit the {h}x{w} token grid; "
            "use between 2 anchors and one per token"
        )
    # centre of each of k equal bins per axis
    rows = ((np.arange(k_rows) + 0.5) * h / k_rows).astype(int)
    cols = ((np.arange(k_cols) + 0.5) * w / k_cols).astype(int)
    return (rows[:, None] * w + cols[None, :]).reshape(-1).astype(np.int64)


def pool_factor(grid: tuple[int, int], max_keys: int) -> int:
    """Smallest integer factor ``f`` with ``ceil(h/f) * ceil(w/f) <= max_keys``."""
    h, w = grid
    factor = 1
    while -(-h // factor) * -(-w // factor) > max_keys:
        factor += 1
    return factor


def pool_keys(attention: np.ndarray, grid: tuple[int, int], factor: int) -> np.ndarray:
    """Sum the key axis of ``(Q, N)`` attention over ``factor x factor`` blocks of the grid.

    Rows stay distributions (they still sum to 1); ``factor == 1`` returns the input.
    The last block of a side that ``factor`` does not divide is smaller.
    """
    if factor == 1:
        return attention
    h, w = grid
    cube = attention.reshape(attention.shape[0], h, w)
    # strided adds read the input once and allocate only the result; reshape-sum,
    # reduceat and bin-matrix products were 2-10x slower or needed a larger temporary
    pooled = np.zeros((cube.shape[0], -(-h // factor), -(-w // factor)), attention.dtype)
    for row in range(factor):
        for col in range(factor):
            part = cube[:, row::factor, col::factor]
            pooled[:, : part.shape[1], : part.shape[2]] += part
    return pooled.reshape(attention.shape[0], -1)


def _aggregate(maps: Sequence, grids: Sequence) -> tuple[np.ndarray, tuple[int, int]]:
    """Multi-resolution maps to one map on the finest grid, as the correspondence
    module's `aggregate_attention` does (DiffSeg's weighting)."""
    if len(maps) != len(grids):
        raise ValueError(f"got {len(maps)} maps but {len(grids)} grids; give one grid per map")
    if len(maps) == 0:
        raise ValueError("no attention maps given")
    from .correspondence import aggregate_attention

    checked_grids = [check_grid(g) for g in grids]
    finest = max(checked_grids, key=lambda g: g[0] * g[1])
    return aggregate_attention(list(maps), checked_grids, out_grid=finest), finest


def segment(
    a_self,
    grid,
    threshold: float | str = "auto",
    *,
    anchors=None,
) -> Segmentation:
    """Segment an image from its self-attention.

    Parameters
    ----------
    a_self : numpy.ndarray or list of numpy.ndarray
        ``(N, N)`` row-stochastic self-attention (head-averaged), or a list of maps at
        several resolutions (then ``grid`` is the matching list of grids) which are
        aggregated on the finest grid as DiffSeg does.
    grid : tuple of int or list of tuple
        ``(h, w)`` with ``h * w == N``, or one grid per map.
    threshold : "auto" or float
        "auto" picks the merge level by the widest log-gap of the merge distances; a
        positive number (symmetric KL in nats, average linkage) cuts there instead.
    anchors : None, int, (int, int) or (K, 2) array
        Where the clustering starts; see `anchor_tokens`. Default 16 x 16.

    Returns
    -------
    Segmentation
        Labels ``(h, w)`` with ids ``1..n``, the threshold used and what explains it.

    Raises
    ------
    ValueError
        If the map is not a row-stochastic ``(N, N)`` array matching ``grid``, or the
        threshold is neither "auto" nor a positive number.
    """
    if isinstance(a_self, list | tuple):
        precision = max(input_precision(m) for m in a_self)
        a_self, grid = _aggregate(a_self, grid)
    else:
        precision = input_precision(a_self)
    attention = check_attention(a_self, grid, name="a_self")
    return segment_checked(attention, grid, threshold, anchors=anchors, precision=precision)


def segment_checked(
    attention: np.ndarray,
    grid,
    threshold: float | str = "auto",
    *,
    anchors=None,
    precision: float | None = None,
) -> Segmentation:
    """`segment` of one map that `check_attention` has already validated.

    For callers that validated their maps where they entered (co-segmentation), so that
    no map is checked twice. ``precision`` is that of the values the map was given in
    (`input_precision`; default: the map's own dtype).
    """
    if precision is None:
        precision = input_precision(attention)
    h, w = check_grid(grid, attention.shape[0])
    auto = _check_threshold(threshold)
    anchor_index = anchor_tokens((h, w), anchors)

    # keys pooled to at most 32 x 32: the clustering cost stops growing with N, and
    # pooling commutes with the product, so proposals are exactly the pooled ones
    pooled = pool_keys(attention, (h, w), pool_factor((h, w), MAX_CLUSTER_KEYS))
    pooled64 = pooled.astype(np.float64)
    rows64 = attention[anchor_index].astype(np.float64)
    # two-step attention: the anchor's attention averaged over the tokens it attends to;
    # float64 so that the distances of near-identical proposals are not rounding noise
    proposals = _normalised(rows64 @ pooled64)
    floor = merge_noise_floor(rows64, pooled64, precision)
    distances = symmetric_kl(proposals)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    merge_distances = tree[:, 2].copy()

    if auto:
        _, threshold, gap_ratio = widest_log_gap(merge_distances, floor=floor)
        unclear = not is_clear_gap(gap_ratio)
        if unclear:  # nothing stands out: one segment, above every merge
            threshold = 2.0 * max(float(merge_distances.max(initial=0.0)), floor, 1e-300)
    else:
        threshold = float(threshold)
        above = np.maximum(merge_distances[merge_distances > threshold], floor)
        below = np.maximum(merge_distances[merge_distances <= threshold], floor)
        gap_ratio = (
            float(above.min() / below.max())
            if above.size and below.size and below.max() > 0
            else 1.0
        )
        unclear = not is_clear_gap(gap_ratio)
    anchor_labels = fcluster(tree, t=threshold, criterion="distance")
    labels = _assign(pooled, proposals.astype(np.float32), anchor_labels).reshape(h, w)
    return Segmentation(
        labels=labels,
        threshold=float(threshold),
        n_segments=int(labels.max()),
        merge_distances=merge_distances,
        anchors=anchor_index,
        anchor_labels=anchor_labels.astype(np.int32),
        auto=auto,
        gap_ratio=float(gap_ratio),
        no_clear_structure=bool(unclear),
        noise_floor=float(floor),
    )


def _check_threshold(threshold) -> bool:
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f'threshold must be "auto" or a positive number, got {threshold!r}')
        return True
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(
            f'threshold must be "auto" or a positive number, got {threshold!r}'
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"threshold must be a positive finite number, got {threshold!r}")
    return False


def cluster_means(features: np.ndarray, cluster_ids: np.ndarray) -> np.ndarray:
    """Mean feature row of every cluster id ``1..max`` (``(C, D)``); missing ids give 0."""
    n_clusters = int(cluster_ids.max())
    members = (cluster_ids[None, :] - 1 == np.arange(n_clusters)[:, None]).astype(np.float32)
    counts = members.sum(axis=1, keepdims=True)
    return (members @ features) / np.maximum(counts, 1)


def assign_to_centroids(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid with the smallest ``KL(row || centroid)`` for every row.

    ``KL(r || c) = sum r log r - sum r log c``; the first term does not depend on ``c``,
    so this is the arg-max of ``rows @ log(centroids).T``.
    """
    centroids = centroids / centroids.sum(axis=1, keepdims=True)
    return np.argmax(rows @ np.log(np.maximum(centroids, LOG_FLOOR)).T, axis=1)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids ``1..n`` in order of first appearance (raster order)."""
    flat = labels.reshape(-1)
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    lookup = np.zeros(int(flat.max()) + 1, dtype=np.int32)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[labels]


def _assign(attention: np.ndarray, proposals: np.ndarray, anchor_labels: np.ndarray):
    centroids = cluster_means(proposals, anchor_labels)
    return relabel_sequential(assign_to_centroids(attention, centroids) + 1)
