"""Which pairs of images co-segmentation compares, beyond the neighbour graph.

- `dense_from_lists`: the old call ``cosegment(self_maps, cross_maps, grid)`` as
  `AttentionMaps`; `checked_maps`: every map held in memory validated, once, where it
  enters (maps formed from queries and keys are softmaxes and need no check);
- `candidate_partners` and `restrict_to_available`: with maps held in memory, only
  pairs whose two cross maps exist can be compared;
- `repair_links`: after a first clustering, a segment whose cluster holds one image only
  either is a part seen in that image alone or found no partner among the images it
  was compared with; it gets a few more partners, chosen among the images that hold the
  clusters its keys resemble most (lazy maps), or among the largest clusters (dense).

numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core._validation import check_attention, check_grid
from ..core.maps import AttentionMaps, ImageGeometry

__all__ = [
    "candidate_partners",
    "checked_maps",
    "dense_from_lists",
    "repair_links",
    "restrict_to_available",
]

#: New partners sought per lonely segment.
REPAIR_PER_SEGMENT = 2
#: Members of a cluster considered as partners (its first ones, by image index).
REPRESENTATIVES = 16


def dense_from_lists(self_maps, cross_maps, grid) -> AttentionMaps:
    """The old call ``cosegment(self_maps, cross_maps, grid)``, validated once."""
    if isinstance(self_maps, np.ndarray) or not isinstance(self_maps, Sequence):
        raise ValueError("self_maps must be a list with one (N, N) self-attention per image")
    if len(self_maps) < 2:
        raise ValueError(f"cosegment needs at least 2 images, got {len(self_maps)}")
    if not isinstance(cross_maps, Mapping):
        raise ValueError("cross_maps must be a dict {(i, j): (N, N) map} over ordered pairs")
    n_images = len(self_maps)
    maps = {(i, i): m for i, m in enumerate(self_maps)}
    for (i, j), value in cross_maps.items():
        if not (0 <= i < n_images and 0 <= j < n_images):
            raise ValueError(f"cross_maps names the pair {(i, j)}, outside 0..{n_images - 1}")
        if i != j:
            maps[(i, j)] = value
    maps = _checked(
        maps, grid, lambda i, j: f"self_maps[{i}]" if i == j else f"cross_maps[{(i, j)}]"
    )
    grid = check_grid(grid, maps[(0, 0)].shape[0])
    return AttentionMaps(grid, [ImageGeometry(grid, grid)] * n_images, maps)


def checked_maps(maps: AttentionMaps) -> AttentionMaps:
    """``maps`` with every map it holds validated by `check_attention`, once.

    Lazy maps are returned as they are: they are softmaxes of queries and keys checked
    where they entered. Maps renormalised by the check are copies; the caller's arrays
    are never changed.
    """
    if maps.is_lazy:
        return maps
    checked = _checked(
        maps.maps, maps.grid, lambda i, j: f"maps.self({i})" if i == j else f"maps.cross({i}, {j})"
    )
    return AttentionMaps(maps.grid, maps.geometries, checked, maps.settings)


def _checked(maps: Mapping, grid, name) -> dict:
    """Every map of ``{(i, j): map}`` through `check_attention`, named by ``name(i, j)``."""
    return {key: check_attention(value, grid, name=name(*key)) for key, value in maps.items()}


def restrict_to_available(maps: AttentionMaps, graph: list[np.ndarray]) -> list[np.ndarray]:
    """Dense maps: keep the links whose two cross maps exist; name what is missing."""
    if maps.is_lazy:
        return graph
    kept = []
    for i, partners in enumerate(graph):
        usable = [int(j) for j in partners if maps.has(i, j) and maps.has(j, i)]
        if not usable:
            others = [int(j) for j in partners] or [j for j in range(maps.n_images) if j != i]
            # first the pairs whose other direction exists: those are the ones to add
            half = [
                p
                for j in others
                for p, q in (((j, i), (i, j)), ((i, j), (j, i)))
                if not maps.has(*p) and maps.has(*q)
            ]
            missing = half or [(i, j) for j in others if not maps.has(i, j)]
            raise ValueError(
                f"image {i} has no partner with cross maps in both directions: the "
                f"collection lacks the ordered pairs {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''}. Extract cross maps for pairs in "
                "both directions (pairs='all'), or use AttentionMaps.from_query_key to "
                "form them on demand"
            )
        kept.append(np.asarray(usable, dtype=np.int64))
    return kept


def candidate_partners(maps: AttentionMaps) -> list[np.ndarray] | None:
    """Dense maps with few pairs: the partners each image has maps for, if not all."""
    if maps.is_lazy:
        return None
    n = maps.n_images
    partners = [
        [j for j in range(n) if j != i and maps.has(i, j) and maps.has(j, i)] for i in range(n)
    ]
    return None if all(len(p) == n - 1 for p in partners) else [np.asarray(p) for p in partners]


def repair_links(maps: AttentionMaps, segments, ids, owned, per_image: int) -> list[list[int]]:
    """More partners for the segments whose cluster holds one image only.

    Parameters
    ----------
    maps : AttentionMaps
        The maps (dense maps: only pairs held both ways are proposed).
    segments : list of ImageSegments
        Stage 1 results (their ``segment_descriptors`` guide the choice when present).
    ids : list of numpy.ndarray
        Cluster of each local segment, per image (from the first clustering).
    owned : list of list of int
        Links already compared, per owning image.
    per_image : int
        Most new links one image may own.

    Returns
    -------
    list of list of int
        Per image, the new partners it owns (never a pair already compared).
    """
    n = len(segments)
    linked = [set() for _ in range(n)]
    for i, partners in enumerate(owned):
        for j in partners:
            linked[i].add(int(j))
            linked[int(j)].add(i)
    members: dict[int, list[tuple[int, int]]] = {}
    for seg, clusters in zip(segments, ids, strict=True):
        for local, cluster in enumerate(clusters):
            members.setdefault(int(cluster), []).append((seg.image, local))
    spread = {c: len({image for image, _ in m}) for c, m in members.items()}
    shared = sorted((c for c in members if spread[c] > 1), key=lambda c: -len(members[c]))
    lonely = [m[0] for c, m in sorted(members.items()) if spread[c] == 1 and len(m) == 1]
    extra: list[list[int]] = [[] for _ in range(n)]
    if not shared or not lonely:
        return extra
    described = segments[0].segment_descriptors is not None
    if described:
        centre = np.mean(
            [seg.segment_descriptors.mean(axis=0) for seg in segments], axis=0, dtype=np.float64
        )

        def unit(vector):
            vector = vector - centre
            return vector / max(float(np.linalg.norm(vector)), 1e-12)

        cluster_vectors = np.stack(
            [
                unit(np.mean([segments[i].segment_descriptors[s] for i, s in members[c]], axis=0))
                for c in shared
            ]
        )
    for image, local in lonely:
        if len(extra[image]) >= per_image:
            continue
        if described:
            mine = unit(segments[image].segment_descriptors[local])
            order = np.argsort(-(cluster_vectors @ mine), kind="stable")
            ranked = [shared[r] for r in order]
        else:
            ranked = shared
        found = 0
        for cluster in ranked:
            options = [
                (i, s)
                for i, s in members[cluster][:REPRESENTATIVES]
                if i != image
                and i not in linked[image]
                and maps.has(image, i)
                and maps.has(i, image)
            ]
            if not options:
                continue
            if described:
                scores = [
                    float(unit(segments[i].segment_descriptors[s]) @ mine) for i, s in options
                ]
                partner = options[int(np.argmax(scores))][0]
            else:
                partner = options[0][0]
            extra[image].append(partner)
            linked[image].add(partner)
            linked[partner].add(image)
            found += 1
            if found == REPAIR_PER_SEGMENT or len(extra[image]) >= per_image:
                break
    return extra
