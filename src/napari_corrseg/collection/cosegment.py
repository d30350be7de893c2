"""Co-segmentation of a collection at a cost linear in the number of images.

``nc.cosegment(maps)`` gives every image a label map whose ids mean the same part in
every image of the collection. Three stages (``docs/segmentation.md``):

1. **Segment each image alone** (`segment_stage`): `napari_corrseg.core.segmentation.segment`
   with the automatic threshold and its own anchor grid (a per-image anchor budget), then
   describe each segment by its *profile*: the mean self-attention row of its tokens.
2. **Match segments between neighbours** (`match_stage`): for each link of the neighbour
   graph (`napari_corrseg.collection.neighbours`, a few per image), form the two cross
   maps, carry each segment's tokens through them and compare where they land with the
   other image's profiles by symmetric KL; also count the round trips of the inverse
   mapping per segment, for the consistency scores. Only small arrays come back.
3. **Cluster the segments** (in process): average linkage over the observed segment
   distances (within images and over links), cut in the widest log-gap of the merge
   distances, as `segment` does for anchors. A cluster is a collection-wide id; a
   cluster whose segments all come from one image is a part seen in that image only.

Stages 1 and 2 are module-level functions ``fn(maps, *small_arguments)`` run through a
``mapper(fn, list_of_argument_tuples) -> list_of_results`` (default: a loop in this
process), so a Dask driver can run them as tasks with ``maps`` opened on the worker.

numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.cosegmentation import Cosegmentation, RoundTrips, build_records, round_trips
from ..core.maps import AttentionMaps
from ..core.segmentation import (
    _check_threshold,
    pool_factor,
    pool_keys,
    segment,
    symmetric_kl,
    widest_log_gap,
)
from .linkage import apply_merges, sparse_average_linkage
from .links import candidate_partners, dense_from_lists, repair_links, restrict_to_available
from .neighbours import image_descriptor, neighbour_graph, owned_edges, segment_descriptors

__all__ = [
    "ImageSegments",
    "PairEvidence",
    "cluster_segments",
    "cosegment",
    "match_stage",
    "segment_stage",
]

#: Segment profiles keep at most this many keys (16 x 16): small enough to ship to tasks.
PROFILE_KEYS = 256

Mapper = Callable[[Callable, list], list]
Progress = Callable[[str, float], None]


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
    """

    image: int
    labels: np.ndarray
    profiles: np.ndarray
    within: np.ndarray
    descriptor: np.ndarray
    segment_descriptors: np.ndarray | None
    threshold: float
    gap_ratio: float

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
        Lazy or dense; only ``maps.self(image)`` (and, lazy, its keys) are read.
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
    seg = segment(attention, maps.grid, threshold, anchors=anchors)
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
        Lazy or dense, holding both directions of every link.
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


def cluster_segments(
    segments: Sequence[ImageSegments],
    evidence: Sequence[PairEvidence],
    threshold: float | str = "auto",
) -> tuple[list[np.ndarray], float, np.ndarray, float]:
    """Stage 3: collection-wide ids from the segments and the pair evidence.

    Returns
    -------
    ids : list of numpy.ndarray
        Per image, ``(S_i,)`` the cluster (0-based) of each local segment.
    threshold : float
        The cut (chosen in the widest log-gap with "auto").
    merge_distances : numpy.ndarray
        Running maximum of the merge distances.
    gap_ratio : float
    """
    auto = _check_threshold(threshold)
    offsets = np.cumsum([0] + [s.n_segments for s in segments])
    first, second, distances = [], [], []
    for s in segments:
        a, b = np.triu_indices(s.n_segments, 1)
        first.append(a + offsets[s.image])
        second.append(b + offsets[s.image])
        distances.append(s.within[a, b])
    for pair in evidence:
        a, b = np.indices(pair.distances.shape).reshape(2, -1)
        first.append(a + offsets[pair.source])
        second.append(b + offsets[pair.target])
        distances.append(pair.distances.reshape(-1))
    merges, heights = sparse_average_linkage(
        int(offsets[-1]), np.concatenate(first), np.concatenate(second), np.concatenate(distances)
    )
    merge_distances = np.maximum.accumulate(heights) if heights.size else heights
    if auto:
        _, threshold, gap_ratio = widest_log_gap(merge_distances)
    else:
        threshold, gap_ratio = float(threshold), float("nan")
    count = int(np.searchsorted(merge_distances, threshold, side="right"))
    clusters = apply_merges(int(offsets[-1]), merges, count)
    ids = [clusters[offsets[s.image] : offsets[s.image + 1]] for s in segments]
    return ids, float(threshold), merge_distances, float(gap_ratio)


def _match(mapper, maps, segments, links, stage, progress) -> list[PairEvidence]:
    """Stage 2 over ``links`` (per image, the partners it owns)."""
    tasks = [
        (i, tuple(int(j) for j in partners), {j: segments[j] for j in (i, *partners)})
        for i, partners in enumerate(links)
        if len(partners)
    ]
    results = _run(mapper, maps, match_stage, tasks, stage, progress)
    return [pair for result in results for pair in result]


def _run(mapper, maps, fn, arguments, stage, progress):
    if progress is not None:
        progress(stage, 0.0)
    if mapper is not None:
        results = mapper(fn, arguments)
    else:
        results = []
        for done, args in enumerate(arguments, start=1):
            results.append(fn(maps, *args))
            if progress is not None:
                progress(stage, done / len(arguments))
    if progress is not None:
        progress(stage, 1.0)
    return results


def cosegment(
    maps_or_self_maps,
    cross_maps: Mapping | None = None,
    grid=None,
    threshold: float | str = "auto",
    *,
    anchors=None,
    neighbours: Sequence[Sequence[int]] | None = None,
    mapper: Mapper | None = None,
    progress: Progress | None = None,
    image_threshold: float | str = "auto",
    k: int = 4,
    n_random: int = 2,
    seed: int = 0,
) -> Cosegmentation:
    """Segment a collection of images with ids that agree across images.

    Cost grows linearly with the number of images: one self map and about
    ``2 (k + n_random)`` cross maps per image, a fixed anchor grid per image, and a
    clustering of the segments over the links actually compared.

    Parameters
    ----------
    maps_or_self_maps : AttentionMaps or list of numpy.ndarray
        `AttentionMaps` (lazy, `AttentionMaps.from_query_key`, or dense holding the cross
        maps of the links used), or, as before, a list of ``(N, N)`` self maps with
        ``cross_maps`` and ``grid``.
    cross_maps : dict, optional
        ``{(i, j): (N, N)}`` with the list form; links use pairs given both ways.
    grid : tuple of int, optional
        ``(h, w)`` with the list form.
    threshold : "auto" or float
        Merge threshold of the segment clustering (symmetric KL, average linkage):
        "auto" cuts in the widest log-gap of the merge distances; a number cuts there.
    anchors : None, int or (int, int)
        Anchor grid of each image's own segmentation (default 16 x 16 per image).
    neighbours : list of sequences of int, optional
        Images to compare each image with; default `neighbour_graph` on
        `image_descriptor` with ``k`` nearest and ``n_random`` random links.
    mapper : callable, optional
        ``mapper(fn, [args, ...]) -> [fn(maps, *args), ...]``, the same results in the
        same order, run anywhere (e.g. Dask tasks with ``maps`` opened on the worker).
        Stage functions: `segment_stage` ``(image, anchors, image_threshold)`` and
        `match_stage` ``(image, partners, segments)``.
    progress : callable, optional
        ``progress(stage, fraction)`` with stages "segment", "match", "rematch" (when
        some segments get more partners) and "cluster". With a ``mapper``, each stage
        reports 0 and 1 only: the mapper reports the tasks in between.
    image_threshold : "auto" or float
        Threshold of each image's own segmentation.
    k, n_random, seed : int
        Neighbour graph settings (when ``neighbours`` is None).

    Returns
    -------
    Cosegmentation

    Raises
    ------
    ValueError
        On fewer than 2 images, maps that are not row-stochastic ``(N, N)`` arrays on the
        grid, or an image without cross maps to any other.
    """
    if isinstance(maps_or_self_maps, AttentionMaps):
        maps = maps_or_self_maps
    else:
        maps = dense_from_lists(maps_or_self_maps, cross_maps, grid)
    if maps.n_images < 2:
        raise ValueError(f"cosegment needs at least 2 images, got {maps.n_images}")
    _check_threshold(threshold)
    _check_threshold(image_threshold)
    n = maps.n_images

    segments = _run(
        mapper,
        maps,
        segment_stage,
        [(i, anchors, image_threshold) for i in range(n)],
        "segment",
        progress,
    )
    if neighbours is None:
        allowed = candidate_partners(maps)
        if allowed is None:
            graph = neighbour_graph(
                np.stack([s.descriptor for s in segments]), k=k, n_random=n_random, seed=seed
            )
        else:  # dense maps with some pairs only: choose among those
            graph = [p[: k + n_random] for p in allowed]
    else:
        if len(neighbours) != n:
            raise ValueError(f"neighbours has {len(neighbours)} entries for {n} images")
        graph = [np.asarray(p, dtype=np.int64).reshape(-1) for p in neighbours]
    graph = restrict_to_available(maps, graph)
    owned = owned_edges(graph)
    evidence = _match(mapper, maps, segments, owned, "match", progress)
    if progress is not None:
        progress("cluster", 0.0)
    # segments that found no counterpart get a second chance with likely partners; the
    # first pass is always cut automatically, so that a threshold passed back reproduces
    # the same links and the same result
    clustered = cluster_segments(segments, evidence, "auto")
    extra = repair_links(maps, segments, clustered[0], owned, per_image=k + n_random)
    if any(extra):
        evidence += _match(mapper, maps, segments, extra, "rematch", progress)
    if any(extra) or threshold != "auto":
        clustered = cluster_segments(segments, evidence, threshold)
    ids, cut, merge_distances, gap_ratio = clustered
    labels, lookup = _collection_labels(segments, ids)
    trips = []
    for pair in evidence:
        s_ids, t_ids = lookup[pair.source], lookup[pair.target]
        trips.append(RoundTrips(pair.source, pair.target, pair.forward, s_ids, t_ids))
        trips.append(RoundTrips(pair.target, pair.source, pair.backward, t_ids, s_ids))
    records = build_records(labels, trips)
    if progress is not None:
        progress("cluster", 1.0)
    return Cosegmentation(
        labels=labels,
        segments=records,
        unmatched=[r.id for r in records if not r.shared],
        threshold=cut,
        merge_distances=merge_distances,
        gap_ratio=gap_ratio,
    )


def _collection_labels(segments, ids):
    """Label maps with ids ``1..C`` in order of first appearance over the images in
    turn (raster order within an image), and each image's local -> id lookup."""
    renumber: dict[int, int] = {}
    labels, lookup = [], []
    for seg, cluster in zip(segments, ids, strict=True):
        order = np.unique(seg.labels.reshape(-1), return_index=True)[1]
        for local in seg.labels.reshape(-1)[np.sort(order)]:
            renumber.setdefault(int(cluster[local]), len(renumber) + 1)
        table = np.array([renumber[int(c)] for c in cluster], dtype=np.int32)
        lookup.append(table)
        labels.append(table[seg.labels])
    return labels, lookup
