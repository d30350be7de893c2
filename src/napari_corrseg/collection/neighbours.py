"""Which images to compare: a cheap global descriptor per image and a neighbour graph.

Co-segmentation and transfer over a collection compare each image with a few others
only. `image_descriptor` describes one image from its own queries and keys (or, for maps
held in memory, from its self-attention), without any cross map; `neighbour_graph` links
every image to its ``k`` most similar images plus ``n_random`` random ones, so that ids
can travel across the whole collection in a few hops (a random graph of degree >= 3 is
connected and has a small diameter). Nothing here holds ``n^2`` of anything: the exact
nearest-neighbour search goes in blocks of rows, and above `EXACT_LIMIT` images an
NN-descent search (neighbours of neighbours, Dong et al. 2011) keeps it linear.

numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..core.maps import AttentionMaps
from ..core.segmentation import pool_factor, pool_keys

__all__ = [
    "image_descriptor",
    "image_descriptors",
    "neighbour_graph",
    "owned_edges",
    "segment_descriptors",
]

#: Up to this many images the k nearest neighbours are found exactly (in row blocks).
EXACT_LIMIT = 4096
#: Rows of the similarity matrix formed at once by the exact search.
BLOCK_ROWS = 256
#: A self-attention descriptor pools the attended mass to at most this many cells.
LAYOUT_CELLS = 64

Mapper = Callable[[Callable, list], list]


def _key_directions(maps: AttentionMaps, image: int) -> np.ndarray:
    """``(L * H, N, d)`` float32 keys of one image, each token's key scaled to length 1."""
    keys = np.asarray(maps.query_key(image)[1], dtype=np.float32)
    keys = keys.reshape(-1, *keys.shape[-2:])
    norms = np.linalg.norm(keys, axis=2, keepdims=True)
    return keys / np.where(norms > 0, norms, 1.0)


def _per_head_unit(means: np.ndarray) -> np.ndarray:
    """``(..., L * H, d)`` -> ``(..., L * H * d)`` with every head's vector of length 1,
    so that each head counts the same whatever the scale of its keys."""
    norms = np.linalg.norm(means, axis=-1, keepdims=True)
    unit = means / np.where(norms > 0, norms, 1.0)
    return unit.reshape(*means.shape[:-2], -1).astype(np.float32)


def image_descriptor(maps: AttentionMaps, image: int) -> np.ndarray:
    """A global descriptor of one image, from that image alone.

    With queries and keys (the lazy form): for every head and layer, the mean direction
    of the image's keys (each token's key scaled to length 1, so that a few large keys do
    not dominate); it reflects which parts the image holds and how much of it each
    covers. With maps held in memory: where attention goes in the image (the column sums
    of its self-attention, pooled to at most 8 x 8 cells).

    Parameters
    ----------
    maps : AttentionMaps
        Lazy or dense.
    image : int
        Image index.

    Returns
    -------
    numpy.ndarray
        ``(D,)`` float32.
    """
    if maps.is_lazy:
        return _per_head_unit(_key_directions(maps, image).mean(axis=1))
    attended = maps.self(image).sum(axis=0, dtype=np.float64)[None]
    factor = pool_factor(maps.grid, LAYOUT_CELLS)
    return pool_keys(attended, maps.grid, factor)[0].astype(np.float32)


def segment_descriptors(maps: AttentionMaps, image: int, labels: np.ndarray):
    """Per segment of one image, the mean key direction of its tokens (lazy form only).

    Parameters
    ----------
    maps : AttentionMaps
        The lazy form (with queries and keys); dense maps give None.
    image : int
        Image index.
    labels : numpy.ndarray
        ``(h, w)`` local segment ids ``0..S-1``.

    Returns
    -------
    numpy.ndarray or None
        ``(S, D)`` float32, comparable between images (keys share one space).
    """
    if not maps.is_lazy:
        return None
    flat = np.asarray(labels).reshape(-1)
    n_segments = int(flat.max()) + 1
    members = (flat[None, :] == np.arange(n_segments)[:, None]).astype(np.float32)
    members /= np.maximum(members.sum(axis=1, keepdims=True), 1.0)
    directions = _key_directions(maps, image)  # (LH, N, d)
    means = np.einsum("sn,hnd->shd", members, directions)
    return _per_head_unit(means)


def image_descriptors(maps: AttentionMaps, *, mapper: Mapper | None = None) -> np.ndarray:
    """`image_descriptor` of every image, ``(n, D)`` float32.

    ``mapper(fn, [(image,), ...])`` runs ``fn(maps, image)`` for each (default: a loop
    in this process); see `napari_corrseg.collection.cosegment.cosegment`.
    """
    arguments = [(i,) for i in range(maps.n_images)]
    if mapper is None:
        rows = [image_descriptor(maps, *args) for args in arguments]
    else:
        rows = mapper(image_descriptor, arguments)
    return np.stack(rows).astype(np.float32)


def _normalised(descriptors: np.ndarray) -> np.ndarray:
    x = np.asarray(descriptors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)  # what images share says nothing about which
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _exact_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        similarity = x[start:stop] @ x.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(best, order, axis=1)
    return out


def _descent_neighbours(x: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 10):
    """Approximate k nearest neighbours by NN-descent: candidates are the neighbours of
    neighbours, the reverse neighbours and a few random images; O(n k^2) per round."""
    n = x.shape[0]
    current = _random_others(n, k, rng)
    for _ in range(rounds):
        reverse = np.full((n, k), -1, dtype=np.int64)
        sources = np.repeat(np.arange(n), k)
        order = np.argsort(current.reshape(-1), kind="stable")
        targets, sources = current.reshape(-1)[order], sources[order]
        starts = np.searchsorted(targets, np.arange(n))
        rank = np.arange(targets.size) - starts[targets]
        keep = rank < k
        reverse[targets[keep], rank[keep]] = sources[keep]
        candidates = np.concatenate(
            [current, current[current].reshape(n, -1), reverse, _random_others(n, k, rng)],
            axis=1,
        )
        updated = np.empty_like(current)
        for start in range(0, n, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n)
            block = np.sort(candidates[start:stop], axis=1)
            valid = (block >= 0) & (block != np.arange(start, stop)[:, None])
            valid[:, 1:] &= block[:, 1:] != block[:, :-1]  # each candidate once
            similarity = np.einsum("rd,rcd->rc", x[start:stop], x[np.maximum(block, 0)])
            similarity[~valid] = -np.inf
            best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            updated[start:stop] = np.take_along_axis(block, best, axis=1)
        if np.array_equal(updated, current):
            break
        current = updated
    return current


def _random_others(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, count)`` random images other than each row's own (repeats possible)."""
    offsets = rng.integers(1, n, size=(n, count))
    return (np.arange(n)[:, None] + offsets) % n


def neighbour_graph(descriptors, k: int = 4, n_random: int = 2, seed: int = 0) -> list[np.ndarray]:
    """For every image, the images to compare it with.

    Parameters
    ----------
    descriptors : array_like
        ``(n, D)`` from `image_descriptors` (centred and compared by cosine similarity).
    k : int
        Nearest images per image.
    n_random : int
        Random other images per image, so that ids propagate over the whole collection.
    seed : int
        Seed of the random links.

    Returns
    -------
    list of numpy.ndarray
        Per image, int64 indices of other images: its ``k`` nearest first (most similar
        first), then its random links; all distinct. With ``n <= k + n_random + 1`` every
        image lists every other. The graph is made connected (one extra link per
        component beyond the first).
    """
    x = np.asarray(descriptors)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"descriptors must be (n_images, D), got shape {x.shape}")
    if k < 0 or n_random < 0:
        raise ValueError(f"k and n_random must be >= 0, got {k} and {n_random}")
    n = x.shape[0]
    if n <= 1:
        return [np.zeros(0, dtype=np.int64) for _ in range(n)]
    if n - 1 <= k + n_random:
        return [np.array([j for j in range(n) if j != i], dtype=np.int64) for i in range(n)]
    rng = np.random.default_rng(seed)
    x = _normalised(x)
    if k == 0:
        nearest = np.zeros((n, 0), dtype=np.int64)
    elif n <= EXACT_LIMIT:
        nearest = _exact_neighbours(x, k)
    else:
        nearest = _descent_neighbours(x, k, rng)
    graph = []
    for i in range(n):
        chosen = [int(j) for j in nearest[i]]
        while len(chosen) < k + n_random:
            j = int((i + rng.integers(1, n)) % n)
            if j not in chosen:
                chosen.append(j)
        graph.append(np.array(chosen, dtype=np.int64))
    return _connected(graph)


def _connected(graph: list[np.ndarray]) -> list[np.ndarray]:
    """Add one link from each component beyond the first to the first component."""
    n = len(graph)
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, partners in enumerate(graph):
        for j in partners:
            ri, rj = root(i), root(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = sorted({root(i) for i in range(n)})
    for other in roots[1:]:
        graph[other] = np.append(graph[other], roots[0]).astype(np.int64)
    return graph


def owned_edges(graph: Sequence[np.ndarray]) -> list[list[int]]:
    """Each undirected link of ``graph`` once, given to the image that chose it.

    A link chosen by both of its images goes to the lower index. Every image therefore
    owns at most as many links as it chose, which bounds the work of one task.
    """
    n = len(graph)
    chosen = [set(int(j) for j in partners) for partners in graph]
    owned: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in graph[i]:
            j = int(j)
            if j == i or not 0 <= j < n:
                continue
            if i in chosen[j] and j < i:
                continue  # j chose i too and owns it
            owned[i].append(j)
    return owned
