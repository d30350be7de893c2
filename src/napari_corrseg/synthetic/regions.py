"""Synthetic self and cross self-attention built from known label maps.

The maps imitate what diffusion self-attention looks like on segmentable content: a
query attends mostly to keys of its own region, the attention decays with distance, and
every map carries multiplicative noise. Because the label maps are known, segmentation,
co-segmentation and label propagation can be scored against the truth.

Two kinds of data:

- `region_scene`: one image with blocks, Voronoi cells of different sizes, or a region
  split into two disconnected parts; returns its truth labels and self-attention.
- `moving_collection`: 2 or more images of a background and rectangular objects that
  move from image to image, plus one object present in the first image only; returns
  the truth label maps (ids shared across images), every self and cross map, and the
  id of the object found in one image only.

numpy only. Coordinates are ``(row, col)`` on the token grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.maps import token_coordinates

__all__ = [
    "SyntheticCollection",
    "SyntheticScene",
    "attention_from_labels",
    "block_labels",
    "moving_collection",
    "region_scene",
    "split_region_labels",
    "voronoi_labels",
]

#: Logit bonus for a key in the query's own region (e^3 ~ 20x more attention).
REGION_AFFINITY = 3.0
#: Attention decays as exp(-distance / (DECAY * grid side)): same look on any grid size.
DISTANCE_DECAY = 0.4
#: Standard deviation of the Gaussian noise added to every logit.
LOGIT_NOISE = 1.0


def block_labels(grid: tuple[int, int], blocks: tuple[int, int] = (2, 3)) -> np.ndarray:
    """Label map of ``blocks[0] x blocks[1]`` rectangles tiling the grid, ids from 1."""
    h, w = grid
    rows = np.minimum(np.arange(h) * blocks[0] // h, blocks[0] - 1)
    cols = np.minimum(np.arange(w) * blocks[1] // w, blocks[1] - 1)
    return (rows[:, None] * blocks[1] + cols[None, :] + 1).astype(np.int32)


def voronoi_labels(grid: tuple[int, int], n_cells: int = 6, seed: int = 0) -> np.ndarray:
    """Multiplicatively weighted Voronoi cells: random seeds with random weights give
    cells of clearly different sizes. Ids from 1; every id is present."""
    h, w = grid
    rng = np.random.default_rng(seed)
    coords = token_coordinates(grid)
    for _ in range(100):
        # keep seeds apart so that no cell is smaller than a few anchor spacings
        centres = rng.uniform([0, 0], [h - 1, w - 1], size=(n_cells, 2))
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        if gaps.min() > 0.2 * min(h, w):
            break
    weights = rng.uniform(0.6, 1.6, size=n_cells)
    distance = np.linalg.norm(coords[:, None, :] - centres[None], axis=-1) / weights
    labels = np.argmin(distance, axis=1).reshape(h, w)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(h, w).astype(np.int32) + 1


def split_region_labels(grid: tuple[int, int]) -> np.ndarray:
    """Three regions: id 1 made of two disconnected parts (left and right bands) with
    id 2 between them, and id 3 along the bottom."""
    h, w = grid
    labels = np.full((h, w), 2, dtype=np.int32)
    labels[:, : w // 3] = 1
    labels[:, w - w // 4 :] = 1
    labels[h - h // 3 :, :] = 3
    return labels


def attention_from_labels(
    query_labels: np.ndarray,
    key_labels: np.ndarray | None = None,
    query_positions: np.ndarray | None = None,
    *,
    affinity: float = REGION_AFFINITY,
    decay: float = DISTANCE_DECAY,
    noise: float = LOGIT_NOISE,
    seed: int = 0,
) -> np.ndarray:
    """Row-stochastic attention of the query image's tokens over the key image's tokens.

    ``logit(q, k) = affinity * [label(q) == label(k)] - |pos(q) - pos(k)| / (decay * side)
    + noise``, then softmax over keys.

    Parameters
    ----------
    query_labels, key_labels : numpy.ndarray
        ``(h, w)`` int label maps on the same grid; ``key_labels`` defaults to
        ``query_labels`` (self-attention). Equal ids mean the same part.
    query_positions : numpy.ndarray, optional
        ``(N, 2)`` where each query token lies in the key image (its correspondence);
        defaults to the token's own position.
    affinity, decay, noise : float
        Region bonus, distance decay as a fraction of the grid side, logit noise.
    seed : int
        Seed of the noise.

    Returns
    -------
    numpy.ndarray
        ``(N, N)`` float32, rows sum to 1.
    """
    query_labels = np.asarray(query_labels)
    key_labels = query_labels if key_labels is None else np.asarray(key_labels)
    grid = query_labels.shape
    coords = token_coordinates(grid)
    if query_positions is None:
        query_positions = coords
    rng = np.random.default_rng(seed)
    same = query_labels.reshape(-1, 1) == key_labels.reshape(1, -1)
    query_positions = np.asarray(query_positions, dtype=np.float32)
    coords = coords.astype(np.float32)
    distance = np.hypot(
        query_positions[:, None, 0] - coords[None, :, 0],
        query_positions[:, None, 1] - coords[None, :, 1],
    )
    logits = affinity * same - distance / np.float32(decay * max(grid))
    logits += rng.normal(0.0, noise, size=logits.shape).astype(np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    attention = np.exp(logits, dtype=np.float32)
    attention /= attention.sum(axis=1, keepdims=True)
    return attention.astype(np.float32)


@dataclass
class SyntheticScene:
    """One synthetic image: truth labels ``(h, w)`` (ids from 1) and its self-attention."""

    labels: np.ndarray
    attention: np.ndarray

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.labels.shape)


def region_scene(kind: str, grid: tuple[int, int], seed: int = 0) -> SyntheticScene:
    """A scene of ``kind`` "blocks", "voronoi" or "split" on ``grid`` with its attention."""
    if kind == "blocks":
        labels = block_labels(grid)
    elif kind == "voronoi":
        labels = voronoi_labels(grid, n_cells=6, seed=seed)
    elif kind == "split":
        labels = split_region_labels(grid)
    else:
        raise ValueError(f"unknown scene kind {kind!r}; use 'blocks', 'voronoi' or 'split'")
    return SyntheticScene(labels, attention_from_labels(labels, seed=seed + 1))


@dataclass
class SyntheticCollection:
    """Images whose objects move, with the truth.

    Attributes
    ----------
    labels : list of numpy.ndarray
        ``(h, w)`` truth per image; id 1 is the background, equal ids are the same
        object in every image.
    self_maps : list of numpy.ndarray
        ``(N, N)`` self-attention per image.
    cross_maps : dict
        ``{(i, j): (N, N)}`` for every ordered pair, queries of ``i`` over keys of ``j``.
    unique_id : int
        Id of the object present in image 0 only.
    offsets : list of dict
        Per image, ``{id: (row, col)}`` top-left corner of every object.
    """

    labels: list[np.ndarray]
    self_maps: list[np.ndarray]
    cross_maps: dict[tuple[int, int], np.ndarray]
    unique_id: int
    offsets: list[dict[int, tuple[int, int]]] = field(default_factory=list)

    def positions(self, i: int, j: int) -> np.ndarray:
        """Where each token of image ``i`` lies in image ``j`` (``(N, 2)``): objects move
        with their offset, the background and unmatched objects stay in place."""
        return _corresponding_positions(self.labels[i], self.offsets[i], self.offsets[j])


def _corresponding_positions(labels, offsets_src, offsets_tgt) -> np.ndarray:
    coords = token_coordinates(labels.shape)
    flat = labels.reshape(-1)
    positions = coords.copy()
    for obj, corner in offsets_src.items():
        if obj in offsets_tgt:
            shift = np.subtract(offsets_tgt[obj], corner)
            positions[flat == obj] += shift
    return positions


def _place_objects(grid, sizes, rng) -> dict[int, tuple[int, int]] | None:
    h, w = grid
    occupied = np.zeros(grid, dtype=bool)
    corners = {}
    for obj, (sh, sw) in sizes.items():
        for _ in range(200):
            r, c = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
            # one free token around every object keeps objects separate
            r0, c0 = max(r - 1, 0), max(c - 1, 0)
            if not occupied[r0 : r + sh + 1, c0 : c + sw + 1].any():
                occupied[r : r + sh, c : c + sw] = True
                corners[obj] = (r, c)
                break
        else:
            return None
    return corners


def moving_collection(
    n_images: int = 2, grid: tuple[int, int] = (24, 24), n_objects: int = 3, seed: int = 0
) -> SyntheticCollection:
    """Background (id 1) and ``n_objects`` rectangles (ids 2..) that move between images,
    plus one more rectangle (the last id) in image 0 only.

    Every image gets its own self-attention and every ordered pair a cross map built by
    `attention_from_labels` with the true correspondence.
    """
    h, w = grid
    rng = np.random.default_rng(seed)
    unique_id = n_objects + 2
    sizes = {
        obj: (int(rng.integers(h // 5, h // 3 + 1)), int(rng.integers(w // 5, w // 3 + 1)))
        for obj in range(2, unique_id + 1)
    }
    offsets: list[dict[int, tuple[int, int]]] = []
    while len(offsets) < n_images:
        present = sizes if not offsets else {k: v for k, v in sizes.items() if k != unique_id}
        corners = _place_objects(grid, present, rng)
        if corners is not None:
            offsets.append(corners)
    labels = []
    for corners in offsets:
        image = np.ones(grid, dtype=np.int32)
        for obj, (r, c) in corners.items():
            sh, sw = sizes[obj]
            image[r : r + sh, c : c + sw] = obj
        labels.append(image)
    self_maps = [attention_from_labels(lab, seed=seed * 100 + i) for i, lab in enumerate(labels)]
    cross_maps = {}
    for i in range(n_images):
        for j in range(n_images):
            if i != j:
                positions = _corresponding_positions(labels[i], offsets[i], offsets[j])
                cross_maps[(i, j)] = attention_from_labels(
                    labels[i], labels[j], positions, seed=seed * 100 + 10 * i + j + 50
                )
    return SyntheticCollection(labels, self_maps, cross_maps, unique_id, offsets)
