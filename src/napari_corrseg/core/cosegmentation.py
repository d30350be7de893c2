"""Result types of co-segmentation, segment consistency, and labels carried between images.

The co-segmentation algorithm itself lives in `napari_corrseg.collection.cosegment`
(``nc.cosegment``): each image is segmented alone, segments are matched between
neighbouring images and clustered into collection-wide ids, at a cost linear in the
number of images. This module keeps what it returns (`Cosegmentation`, `SegmentRecord`),
the round-trip test behind the consistency score (`round_trips`, `build_records`,
`score_segments`), and `propagate_labels`, which turns a label image painted on a source
image into a proposal on a target image, with a confidence per token.

numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._validation import check_attention, check_grid

__all__ = [
    "Cosegmentation",
    "PropagatedLabels",
    "RoundTrips",
    "SegmentRecord",
    "build_records",
    "label_fractions",
    "propagate_labels",
    "round_trips",
    "score_segments",
]


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
        In ``[0, 1]``: over the compared ordered pairs ``(i, j)`` of images that both hold
        the id, the fraction of its tokens in ``i`` whose forward match lands on the id
        in ``j`` and whose backward match returns onto the id in ``i``; averaged over
        those pairs. NaN for an id seen in one image only, or in no compared pair.
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
    """Result of `napari_corrseg.collection.cosegment.cosegment`.

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
        Merge threshold used for the segments (symmetric KL, average linkage); with
        "auto" the chosen one, reusable as a number.
    merge_distances : numpy.ndarray
        Ascending merge distances of the segment clustering (running maximum).
    gap_ratio : float
        Upper / lower merge distance around the cut.
    unstructured_images : list of int
        Images whose own attention shows no clear structure (each is one segment; see
        `core.segmentation.Segmentation.no_clear_structure`).
    """

    labels: list[np.ndarray]
    segments: list[SegmentRecord]
    unmatched: list[int]
    threshold: float
    merge_distances: np.ndarray
    gap_ratio: float
    unstructured_images: list[int] = field(default_factory=list)

    @property
    def no_clear_structure(self) -> bool:
        """No image of the collection shows clear structure."""
        return len(self.unstructured_images) == len(self.labels)

    @property
    def n_segments(self) -> int:
        """Number of distinct ids over the collection."""
        return len(self.segments)


class RoundTrips(NamedTuple):
    """Where the tokens of one image go and come back, counted by label.

    ``counts[a, b, c]``: tokens of image ``source`` with local label ``a`` whose forward
    match lands on local label ``b`` in ``target`` and whose round trip returns onto local
    label ``c`` in ``source``. Local labels are ``0..S-1``; ``source_ids`` and
    ``target_ids`` turn them into collection ids.
    """

    source: int
    target: int
    counts: np.ndarray
    source_ids: np.ndarray
    target_ids: np.ndarray


def round_trips(labels_s, labels_t, forward, backward, n_s: int, n_t: int) -> np.ndarray:
    """``(n_s, n_t, n_s)`` round-trip counts (see `RoundTrips`) of one ordered pair.

    Parameters
    ----------
    labels_s, labels_t : numpy.ndarray
        ``(N,)`` local labels ``0..n-1`` of every token of the source and the target.
    forward : numpy.ndarray
        ``(N,)`` ``argmax_j A_st[i, j]`` per source token.
    backward : numpy.ndarray
        ``(N,)`` ``argmax_i A_ts[j, i]`` per target token.
    n_s, n_t : int
        Number of local labels in each image.
    """
    landed = labels_t[forward]
    returned = labels_s[backward[forward]]
    index = (labels_s * n_t + landed) * n_s + returned
    return np.bincount(index, minlength=n_s * n_t * n_s).reshape(n_s, n_t, n_s)


def build_records(labels: Sequence[np.ndarray], evidence: Iterable[RoundTrips]):
    """`SegmentRecord` of every id ``1..max`` of ``labels``, scored on ``evidence``.

    The consistency of an id averages, over the ordered pairs in ``evidence`` whose two
    images both hold it, the fraction of its tokens in the source whose round trip stays
    on it. Cost: one pass over the labels and the (small) count tensors.
    """
    n_ids = max(int(np.max(lab)) for lab in labels)
    sizes = np.stack(
        [np.bincount(np.asarray(lab).reshape(-1), minlength=n_ids + 1)[1:] for lab in labels],
        axis=1,
    )  # (n_ids, n_images)
    ratio_sum = np.zeros(n_ids)
    ratio_count = np.zeros(n_ids, dtype=np.int64)
    for trip in evidence:
        ids_s, ids_t = np.asarray(trip.source_ids), np.asarray(trip.target_ids)
        stays = (ids_s[:, None, None] == ids_t[None, :, None]) & (
            ids_s[:, None, None] == ids_s[None, None, :]
        )
        by_id = np.broadcast_to(ids_s[:, None, None], stays.shape)[stays]
        agree = np.bincount(by_id, weights=trip.counts[stays], minlength=n_ids + 1)[1:]
        both = (sizes[:, trip.source] > 0) & (sizes[:, trip.target] > 0)
        ratio_sum[both] += agree[both] / sizes[both, trip.source]
        ratio_count[both] += 1
    records = []
    for s in range(n_ids):
        present = [int(i) for i in np.flatnonzero(sizes[s] > 0)]
        consistency = (
            float(ratio_sum[s] / ratio_count[s])
            if len(present) > 1 and ratio_count[s]
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


def score_segments(labels: Sequence, cross_maps: Mapping, grid) -> list[SegmentRecord]:
    """Where each id of a set of label maps appears, and how consistent it is.

    Works on any labels with shared ids (for example a co-segmentation after manual
    corrections in napari).

    Parameters
    ----------
    labels : list of numpy.ndarray
        ``(h, w)`` int label maps, one per image, ids ``>= 1`` shared across images.
    cross_maps : dict
        ``{(i, j): (N, N)}``: for every pair of images to score, both directions.
        Consistency is averaged over the pairs given.
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
    if not isinstance(cross_maps, Mapping):
        raise ValueError("cross_maps must be a dict {(i, j): (N, N) map} over ordered pairs")
    pairs = sorted({(min(i, j), max(i, j)) for i, j in cross_maps if i != j})
    missing = [
        (b, a) if (a, b) in cross_maps else (a, b)
        for a, b in pairs
        if (a, b) not in cross_maps or (b, a) not in cross_maps
    ]
    if missing:
        raise ValueError(
            f"cross_maps lacks the ordered pairs {missing[:6]}; give both directions "
            "(queries of i over keys of j, and of j over keys of i) of every pair"
        )
    n_ids = max(int(lab.max()) for lab in labels)
    ids = np.arange(n_ids + 1)
    evidence = []
    for a, b in pairs:
        a_ab = check_attention(cross_maps[(a, b)], (h, w), name=f"cross_maps[{(a, b)}]")
        a_ba = check_attention(cross_maps[(b, a)], (h, w), name=f"cross_maps[{(b, a)}]")
        forward, backward = np.argmax(a_ab, axis=1), np.argmax(a_ba, axis=1)
        flat_a, flat_b = labels[a].reshape(-1), labels[b].reshape(-1)
        for s, t, fwd, bwd, ls, lt in (
            (a, b, forward, backward, flat_a, flat_b),
            (b, a, backward, forward, flat_b, flat_a),
        ):
            counts = round_trips(ls, lt, fwd, bwd, n_ids + 1, n_ids + 1)
            evidence.append(RoundTrips(s, t, counts, ids, ids))
    return build_records(labels, evidence)


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
    return propagate_labels_checked(labels_src, a_ts, check_grid(grid, a_ts.shape[0]))


def propagate_labels_checked(
    labels_src, a_ts: np.ndarray, grid: tuple[int, int]
) -> PropagatedLabels:
    """`propagate_labels` on a map that `check_attention` has already validated."""
    h, w = grid
    fractions, values = label_fractions(labels_src, (h, w))
    shares = a_ts @ fractions
    best = np.argmax(shares, axis=1)
    confidence = np.clip(shares[np.arange(best.size), best], 0.0, 1.0)
    return PropagatedLabels(
        values[best].reshape(h, w).astype(np.int32),
        confidence.reshape(h, w).astype(np.float32),
    )


def __getattr__(name: str):
    # `cosegment` moved to napari_corrseg.collection.cosegment (it works on whole
    # collections now); the old import path keeps working without importing it here
    if name == "cosegment":
        from ..collection.cosegment import cosegment

        return cosegment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
