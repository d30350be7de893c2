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
4. **A second chance** (`napari_corrseg.collection.links.repair_links`): segments left
   alone get a few more partners among the images of the clusters they resemble, and
   the segments are clustered again.

Stages 1 and 2 (`napari_corrseg.collection.segments`) are module-level functions
``fn(maps, *small_arguments)`` run through a
``mapper(fn, list_of_argument_tuples) -> list_of_results`` (default: a loop in this
process), so a Dask driver can run them as tasks with ``maps`` opened on the worker.

numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..core.cosegmentation import Cosegmentation, RoundTrips, build_records
from ..core.maps import AttentionMaps
from ..core.segmentation import _check_threshold, widest_log_gap
from .linkage import apply_merges, sparse_average_linkage
from .links import (
    candidate_partners,
    checked_maps,
    dense_from_lists,
    repair_links,
    restrict_to_available,
)
from .neighbours import neighbour_graph, owned_edges
from .segments import ImageSegments, PairEvidence, match_stage, segment_stage

__all__ = [
    "ImageSegments",
    "PairEvidence",
    "cluster_segments",
    "cosegment",
    "match_stage",
    "segment_stage",
]

Mapper = Callable[[Callable, list], list]
Progress = Callable[[str, float], None]


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
        maps = checked_maps(maps_or_self_maps)
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
        unstructured_images=[s.image for s in segments if s.no_clear_structure],
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
