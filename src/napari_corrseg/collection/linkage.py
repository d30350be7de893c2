"""Average-linkage clustering on a sparse graph of observed distances.

`scipy.cluster.hierarchy.linkage` needs every pairwise distance: ``n^2`` of them. Over a
collection only some pairs of segments are ever compared (those of one image, and those
of images linked in the neighbour graph), so the clustering here works on the observed
pairs alone: the linkage of two clusters is the mean of the distances observed between
their members (UPGMA over observed pairs). Pairs never compared say nothing, so
clusters with no observed pair between them are never merged.

Cost: ``O(E log E)`` for ``E`` observed pairs; memory ``O(E)``. The merge order is
deterministic (ties broken by cluster index).

numpy only.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["apply_merges", "sparse_average_linkage"]


def sparse_average_linkage(
    n_nodes: int, first: np.ndarray, second: np.ndarray, distances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge clusters in order of smallest mean observed distance.

    Parameters
    ----------
    n_nodes : int
        Number of items (segments).
    first, second : numpy.ndarray
        ``(E,)`` int item indices of each observed pair (``first != second``).
    distances : numpy.ndarray
        ``(E,)`` non-negative distances; a pair given twice counts twice.

    Returns
    -------
    merges : numpy.ndarray
        ``(M, 2)`` int64: the two clusters joined at each step, each named by one of its
        items (its representative). Replay with `apply_merges`.
    heights : numpy.ndarray
        ``(M,)`` float64 linkage at each merge (not necessarily monotone).
    """
    # links[a][b] = [sum of distances, count] between the clusters represented by a, b
    links: list[dict[int, list[float]]] = [{} for _ in range(n_nodes)]
    pairs = zip(
        np.asarray(first).tolist(),
        np.asarray(second).tolist(),
        np.asarray(distances).tolist(),
        strict=True,
    )
    for a, b, d in pairs:
        if a == b:
            continue
        entry = links[a].get(b)
        if entry is None:
            entry = [0.0, 0]
            links[a][b] = entry
            links[b][a] = entry
        entry[0] += d
        entry[1] += 1
    size = [1] * n_nodes
    alive = [True] * n_nodes
    heap = [
        (entry[0] / entry[1], a, b)
        for a in range(n_nodes)
        for b, entry in links[a].items()
        if a < b
    ]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    heights: list[float] = []
    while heap:
        value, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        entry = links[a].get(b)
        if entry is None or entry[0] / entry[1] != value:
            continue  # stale: the link changed since this entry was pushed
        # keep the cluster with more links; fold the other one into it
        keep, gone = (a, b) if len(links[a]) >= len(links[b]) else (b, a)
        merges.append((keep, gone))
        heights.append(value)
        alive[gone] = False
        size[keep] += size[gone]
        del links[keep][gone]
        for other, moved in links[gone].items():
            if other == keep:
                continue
            del links[other][gone]
            entry = links[keep].get(other)
            if entry is None:
                links[keep][other] = moved
                links[other][keep] = moved
            else:
                entry[0] += moved[0]
                entry[1] += moved[1]
                moved = entry
            lo, hi = (keep, other) if keep < other else (other, keep)
            heapq.heappush(heap, (moved[0] / moved[1], lo, hi))
        links[gone] = {}
    return np.asarray(merges, dtype=np.int64).reshape(-1, 2), np.asarray(heights, float)


def apply_merges(n_nodes: int, merges: np.ndarray, count: int) -> np.ndarray:
    """Cluster index ``0..C-1`` of every item after the first ``count`` merges.

    Clusters are numbered in order of their smallest item.
    """
    parent = np.arange(n_nodes)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for keep, gone in np.asarray(merges)[:count].tolist():
        parent[root(gone)] = root(keep)
    roots = np.array([root(a) for a in range(n_nodes)], dtype=np.int64)
    _, first_item, clusters = np.unique(roots, return_index=True, return_inverse=True)
    # renumber by smallest member
    order = np.argsort(first_item, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[clusters].reshape(-1)
