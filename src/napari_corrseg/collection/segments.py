"""Stages 1 and 2 of collection co-segmentation: what each image and each link yield.

`segment_stage` segments one image alone and summarises its segments (`ImageSegments`);
`match_stage` compares an image's segments with those of its partners through the two
cross maps of each link (`PairEvidence`). Both are module-level functions
``fn(maps, *small_arguments)`` returning small picklable results, never an ``(N, N)``
map, so that a driver can run them as tasks anywhere
(`napari_corrseg.collection.cosegment.cosegment` and its ``mapper``).

numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.cosegmentation import round_trips
from ..core.maps import AttentionMaps
from ..core.segmentation import pool_factor, pool_keys, segment_checked, symmetric_kl
from .neighbours import image_descriptor, segment_descriptors

__all__ = ["ImageSegments", "PairEvidence", "match_stage", "min_segment_tokens", "segment_stage"]

#: Segment profiles keep at most this many keys (16 x 16): small enough to ship to tasks.
PROFILE_KEYS = 256


@dataclass(frozen=True)
class ImageSegments:
    """What stage 1 learns about one image (small and picklable).

    Attributes
    ----------
    image : int
        Image index.
    labels : numpy.ndarray
        ``(h, w)`` int32 local segment ids ``0..S-1``.
    profiles : numpy.ndarray
        ``(S, K)`` float32: the mean self-attention row of each segment's tokens, keys
        pooled to at most `PROFILE_KEYS`; rows sum to 1.
    within : numpy.ndarray
        ``(S, S)`` symmetric KL between the profiles.
    descriptor : numpy.ndarray
        ``(D,)`` global descriptor of the image (`image_descriptor`).
    segment_descriptors : numpy.ndarray or None
        ``(S, D)`` mean key direction of each segment (lazy maps only), used to find
        partners for segments that found none.
    threshold, gap_ratio : float
        The image's own automatic segmentation threshold and how clear it was.
    no_clear_structure : bool
        The image's attention does not separate into parts
        (`core.segmentation.Segmentation.no_clear_structure`).
    """

    image: int
    labels: np.ndarray
    profiles: np.ndarray
    within: np.ndarray
    descriptor: np.ndarray
    segment_descriptors: np.ndarray | None
    threshold: float
    gap_ratio: float
    no_clear_structure: bool = False

    @property
    def n_segments(self) -> int:
        return int(self.profiles.shape[0])


@dataclass(frozen=True)
class PairEvidence:
    """What stage 2 learns about one linked pair ``(source, target)`` (small).

    Attributes
    ----------
    source, target : int
        The two images.
    distances : numpy.ndarray
        ``(S_s, S_t)`` segment distances: the mean of the symmetric KL between where a
        segment lands in the other image and the other image's profiles, both ways.
    forward : numpy.ndarray
        ``(S_s, S_t, S_s)`` round-trip counts from the source (see
        `napari_corrseg.core.cosegmentation.RoundTrips`).
    backward : numpy.ndarray
        ``(S_t, S_s, S_t)`` round-trip counts from the target.
    """

    source: int
    target: int
    distances: np.ndarray
    forward: np.ndarray
    backward: np.ndarray


def _memberships(labels: np.ndarray, n_segments: int) -> np.ndarray:
    """``(S, N)`` float32 rows averaging the tokens of each segment."""
    flat = labels.reshape(-1)
    members = (flat[None, :] == np.arange(n_segments)[:, None]).astype(np.float32)
    return members / members.sum(axis=1, keepdims=True)


def _profiles(rows: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    pooled = pool_keys(rows, grid, pool_factor(grid, PROFILE_KEYS))
    return (pooled / pooled.sum(axis=1, keepdims=True)).astype(np.float32)


def _fold_specks(labels: np.ndarray, attention: np.ndarray, grid):
    """Fold segments of fewer than `min_segment_tokens` tokens into the segment of the
    same image whose profile is closest (symmetric KL); return labels ``0..S-1`` and the
    profiles. A speck below the anchor spacing is noise, not a part to match."""
    smallest = min_segment_tokens(grid)
    while True:
        n_segments = int(labels.max()) + 1
        profiles = _profiles(_memberships(labels, n_segments) @ attention, grid)
        sizes = np.bincount(labels.reshape(-1), minlength=n_segments)
        if n_segments < 2 or sizes.min() >= smallest:
            return labels, profiles
        speck = int(np.argmin(sizes))
        distances = symmetric_kl(profiles[speck : speck + 1], profiles)[0]
        distances[speck] = np.inf
        target = int(np.argmin(distances))
        labels = np.where(labels == speck, target, labels)
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def min_segment_tokens(grid) -> int:
    """Smallest segment kept as a part: 2 tokens, or one 16 x 16 anchor cell on larger
    grids (4 tokens at 32 x 32)."""
    return max(2, -(-grid[0] * grid[1] // 256))


def segment_stage(
    maps: AttentionMaps, image: int, anchors=None, threshold: float | str = "auto"
) -> ImageSegments:
    """Stage 1 for one image: segment it alone and describe its segments.

    Parameters
    ----------
    maps : AttentionMaps
        Lazy, or dense and checked (`checked_maps`, as `cosegment` passes them); only
        ``maps.self(image)`` (and, lazy, its keys) are read.
    image : int
        Image index.
    anchors : None, int or (int, int)
        The image's anchor grid (`napari_corrseg.core.segmentation.anchor_tokens`).
    threshold : "auto" or float
        The image's segmentation threshold.

    Returns
    -------
    ImageSegments
        Segments of fewer than `min_segment_tokens` tokens are folded into the closest
        segment of the image.
    """
    attention = maps.self(image)
    # checked where the maps entered (`checked_maps`), or softmaxes of queries and keys
    seg = segment_checked(attention, maps.grid, threshold, anchors=anchors)
    labels = (np.asarray(seg.labels) - 1).astype(np.int32)
    labels, profiles = _fold_specks(labels, attention, maps.grid)
    within = symmetric_kl(profiles)
    np.fill_diagonal(within, 0.0)
    return ImageSegments(
        image=int(image),
        labels=labels,
        profiles=profiles,
        within=within,
        descriptor=image_descriptor(maps, image),
        segment_descriptors=segment_descriptors(maps, image, labels),
        threshold=float(seg.threshold),
        gap_ratio=float(seg.gap_ratio),
        no_clear_structure=bool(seg.no_clear_structure),
    )


def match_stage(
    maps: AttentionMaps,
    image: int,
    partners: Sequence[int],
    segments: Mapping[int, ImageSegments],
) -> list[PairEvidence]:
    """Stage 2 for one image: compare its segments with those of each partner.

    Forms ``maps.cross(image, j)`` and ``maps.cross(j, image)`` for every partner ``j``
    (two cross maps per link, nothing kept).

    Parameters
    ----------
    maps : AttentionMaps
        Lazy, or dense and checked (`checked_maps`, as `cosegment` passes them),
        holding both directions of every link.
    image : int
        The image that owns the links.
    partners : sequence of int
        The other end of each link.
    segments : mapping
        ``{index: ImageSegments}`` for ``image`` and every partner (from stage 1).

    Returns
    -------
    list of PairEvidence
        One per partner, in order.
    """
    grid = maps.grid
    mine = segments[image]
    out = []
    for j in partners:
        theirs = segments[j]
        a_ij, a_ji = maps.cross(image, j), maps.cross(j, image)
        landing_ij = _profiles(_memberships(mine.labels, mine.n_segments) @ a_ij, grid)
        landing_ji = _profiles(_memberships(theirs.labels, theirs.n_segments) @ a_ji, grid)
        distances = 0.5 * (
            symmetric_kl(landing_ij, theirs.profiles) + symmetric_kl(landing_ji, mine.profiles).T
        )
        forward, backward = np.argmax(a_ij, axis=1), np.argmax(a_ji, axis=1)
        flat_i, flat_j = mine.labels.reshape(-1), theirs.labels.reshape(-1)
        s_i, s_j = mine.n_segments, theirs.n_segments
        out.append(
            PairEvidence(
                source=int(image),
                target=int(j),
                distances=distances,
                forward=round_trips(flat_i, flat_j, forward, backward, s_i, s_j),
                backward=round_trips(flat_j, flat_i, backward, forward, s_j, s_i),
            )
        )
    return out
