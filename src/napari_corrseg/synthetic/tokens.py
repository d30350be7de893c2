"""Synthetic per-image queries and keys with known parts and known correspondences.

`TokenCollection` imitates what a collection leaves in the token store: for every image,
per-head queries and keys ``(H, N, d)`` (or ``(L, H, N, d)``) such that
``softmax(Q_i K_j^T / sqrt(d))`` behaves like diffusion self-attention:

- a query attends most to keys of its own part (a part embedding, slightly different in
  every image, so attention across images is a little weaker than within one);
- attention decays with distance, as a Gaussian in each part's *canonical* frame (an
  object's own centred, unscaled coordinates; the background's are its positions), so
  that the attention of image ``i`` over image ``j`` lands on the corresponding point of
  the same part. Heads differ: the first are local (a fall-off one token wide, weak part
  identity), the last semantic (the fall-off over 0.6 of the grid, strong identity);
- every key carries a random bias and every logit noise.

Images hold a background
(id 1), shared objects of different sizes (ids ``2..n_parts + 1``; each present with
probability ``presence``, scaled by 0.8-1.25 and placed at random in each image) and,
in the images of ``lone_images``, one object seen nowhere else (one id each).

Everything is generated per image on demand from ``(seed, image)``: a collection of a
million images costs nothing until an image is asked for, and nothing of size ``n^2``
is ever built. numpy only. Coordinates are ``(row, col)`` on the token grid.

Example
-------
>>> from napari_corrseg.synthetic.tokens import TokenCollection
>>> collection = TokenCollection(1000, grid=(16, 16))
>>> queries, keys = collection.query_key(7)
>>> queries.shape, collection.labels(7).shape
((10, 256, 64), (16, 16))
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..core.maps import AttentionMaps, token_coordinates

__all__ = ["ImageLayout", "TokenCollection"]

#: Dimensions of each head given to part identity; ``2 * BUMP_FREQUENCIES`` more carry
#: the local bump, 3 the broad fall-off, one the key bias, and the rest noise.
PART_DIMS = 16
BUMP_FREQUENCIES = 12
#: The first fifth of the heads are local: a bump of this logit height and width
#: (grid cells).
LOCAL_FRACTION = 0.2
BUMP = 6.0
BUMP_WIDTH = 0.8
#: Smallest and largest canonical object side, as a fraction of the grid side.
OBJECT_SIDES = (0.2, 0.38)
#: Per-image scale range of every object.
OBJECT_SCALES = (0.8, 1.25)
#: Side of the object seen in one image only, as a fraction of the grid side.
LONE_SIDE = 0.25
#: How much a part's embedding changes from image to image (0 = identical).
APPEARANCE_CHANGE = 0.3


@dataclass(frozen=True)
class ImageLayout:
    """Where the parts of one image are.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(h, w)`` int32 truth; 1 is the background, equal ids are the same part in
        every image.
    boxes : dict
        ``{id: (row, col, height, width)}`` of every object present (not the background).
    scales : dict
        ``{id: scale}``: object size in this image over its canonical size.
    """

    labels: np.ndarray
    boxes: dict[int, tuple[int, int, int, int]]
    scales: dict[int, float]


def _head_parameters(heads: int, side: int) -> dict[str, np.ndarray]:
    """Per head: part strength, width of the broad distance fall-off (grid cells),
    strength of the sharp local bump, logit noise and key-bias spread. Local heads first
    (a bump under a token wide on a narrow fall-off, little noise), semantic heads last
    (a fall-off over 0.6 of the grid side, strong identity)."""
    t = np.linspace(0.0, 1.0, heads)
    return {
        "part": 2.5 + 2.5 * t,
        "width": (0.15 + 0.45 * t) * side,
        "bump": np.where(np.arange(heads) < max(1, round(LOCAL_FRACTION * heads)), BUMP, 0.0),
        "noise": 0.3 + 0.4 * t,
        "key_bias": np.full(heads, 0.2),
    }


class TokenCollection:
    """Queries and keys of ``n_images`` synthetic images, generated on demand.

    Parameters
    ----------
    n_images : int
        Number of images (any number: nothing is generated until asked for).
    grid : tuple of int
        ``(h, w)`` token grid; ``(32, 32)`` is SD2's at 512 px.
    heads, head_dim : int
        Heads per layer and their size (SD2: 10 heads of 64 at 32 x 32).
    layers : int, optional
        None gives ``(H, N, d)`` per image; an int ``L`` gives ``(L, H, N, d)`` (layers
        differ in noise).
    n_parts : int
        Shared objects besides the background.
    presence : float
        Probability that a shared object appears in an image (image 0 shows them all).
    lone_images : tuple of int
        Images that hold one object of their own, seen in no other image.
    seed : int
        Everything follows from it and the image index.
    dtype : numpy dtype
        float32 or float16 (as the token store keeps them).
    cache_items : int
        Images whose queries and keys are kept once generated (read-only); 0 keeps none.
    """

    def __init__(
        self,
        n_images: int,
        grid: tuple[int, int] = (32, 32),
        *,
        heads: int = 10,
        head_dim: int = 64,
        layers: int | None = None,
        n_parts: int = 4,
        presence: float = 0.8,
        lone_images: tuple[int, ...] = (0,),
        seed: int = 0,
        dtype=np.float32,
        cache_items: int = 0,
    ) -> None:
        extra = PART_DIMS + 2 * BUMP_FREQUENCIES + 4
        if head_dim < extra + 4:
            raise ValueError(f"head_dim must be at least {extra + 4}, got {head_dim}")
        self.n_images = int(n_images)
        self.grid = (int(grid[0]), int(grid[1]))
        self.heads, self.head_dim = int(heads), int(head_dim)
        self.layers = layers
        self.n_parts = int(n_parts)
        self.presence = float(presence)
        self.lone_images = tuple(int(i) for i in lone_images if 0 <= int(i) < self.n_images)
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        side = max(self.grid)
        rng = np.random.default_rng([self.seed, 1 << 20])
        # canonical object sizes spread over the range: objects clearly differ in size
        sides = np.linspace(*OBJECT_SIDES, max(self.n_parts, 1))[::-1][: self.n_parts]
        aspect = rng.uniform(0.8, 1.25, size=self.n_parts)
        self.sizes = {
            2 + k: (sides[k] * side * aspect[k], sides[k] * side / aspect[k])
            for k in range(self.n_parts)
        }
        self.unique_ids = {image: 2 + self.n_parts + k for k, image in enumerate(self.lone_images)}
        n_ids = 2 + self.n_parts + len(self.lone_images)
        self._embeddings = _part_embeddings(n_ids, rng)
        n_layers = 1 if layers is None else int(layers)
        self._rotations = [
            [
                np.linalg.qr(rng.normal(size=(head_dim, head_dim)))[0].astype(np.float32)
                for _ in range(heads)
            ]
            for _ in range(n_layers)
        ]
        self._params = _head_parameters(heads, max(self.grid))
        self._frequencies = rng.normal(size=(n_layers, heads, BUMP_FREQUENCIES, 2)) / BUMP_WIDTH
        self._layout = lru_cache(maxsize=64)(self._make_layout)
        self._tokens = lru_cache(maxsize=max(int(cache_items), 0))(self._make_tokens)

    def __len__(self) -> int:
        return self.n_images

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    # -- truth ---------------------------------------------------------------------------

    def _rng(self, image: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(image), stream])

    def _make_layout(self, image: int) -> ImageLayout:
        if not 0 <= image < self.n_images:
            raise IndexError(f"no image {image}; the collection holds 0..{self.n_images - 1}")
        rng = self._rng(image, 0)
        h, w = self.grid
        wanted = [p for p in self.sizes if image == 0 or rng.random() < self.presence]
        if not wanted:
            wanted = [int(rng.choice(list(self.sizes)))]
        scales = {p: float(rng.uniform(*OBJECT_SCALES)) for p in wanted}
        sizes = {
            p: (
                max(2, min(h - 2, round(self.sizes[p][0] * scales[p]))),
                max(2, min(w - 2, round(self.sizes[p][1] * scales[p]))),
            )
            for p in wanted
        }
        if image in self.unique_ids:
            lone = self.unique_ids[image]
            sizes[lone] = (max(2, round(LONE_SIDE * h)), max(2, round(LONE_SIDE * w)))
            scales[lone] = 1.0
        boxes = _place(self.grid, sizes, rng, first=tuple(self.unique_ids.values()))
        labels = np.ones(self.grid, dtype=np.int32)
        for part, (r, c, sh, sw) in boxes.items():
            labels[r : r + sh, c : c + sw] = part
        return ImageLayout(labels, boxes, {p: scales[p] for p in boxes})

    def layout(self, image: int) -> ImageLayout:
        """The parts of ``image``: truth labels, boxes and scales."""
        return self._layout(int(image))

    def labels(self, image: int) -> np.ndarray:
        """``(h, w)`` truth labels of ``image`` (1 = background, shared ids across images)."""
        return self.layout(image).labels.copy()

    def canonical(self, image: int, points) -> np.ndarray:
        """Canonical coordinates of ``(P, 2)`` grid points of ``image``: a point on an
        object is expressed in that object's own frame (centred, unscaled); background
        points keep their position. Equal canonical coordinates of the same part in two
        images are corresponding points."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        layout = self.layout(image)
        h, w = self.grid
        rows = np.clip(np.round(points[:, 0]).astype(int), 0, h - 1)
        cols = np.clip(np.round(points[:, 1]).astype(int), 0, w - 1)
        part = layout.labels[rows, cols]
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        out = points - centre
        for obj, (r, c, sh, sw) in layout.boxes.items():
            mine = part == obj
            box_centre = np.array([r + (sh - 1) / 2, c + (sw - 1) / 2])
            out[mine] = (points[mine] - box_centre) / layout.scales[obj]
        return out

    def corresponding(self, source: int, target: int, points) -> np.ndarray:
        """Where ``(P, 2)`` grid points of ``source`` lie in ``target``; NaN rows where the
        part under a point is missing from the target."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        src, tgt = self.layout(source), self.layout(target)
        h, w = self.grid
        rows = np.clip(np.round(points[:, 0]).astype(int), 0, h - 1)
        cols = np.clip(np.round(points[:, 1]).astype(int), 0, w - 1)
        part = src.labels[rows, cols]
        canonical = self.canonical(source, points)
        out = np.full_like(points, np.nan)
        background = part == 1
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        out[background] = canonical[background] + centre
        # background hidden behind an object of the target has no counterpart
        landed = np.round(out[background]).astype(int)
        hidden = tgt.labels[landed[:, 0], landed[:, 1]] != 1
        out[np.flatnonzero(background)[hidden]] = np.nan
        for obj, (r, c, sh, sw) in tgt.boxes.items():
            mine = part == obj
            box_centre = np.array([r + (sh - 1) / 2, c + (sw - 1) / 2])
            out[mine] = canonical[mine] * tgt.scales[obj] + box_centre
        return out

    # -- queries and keys ----------------------------------------------------------------

    def query_key(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """``(queries, keys)`` of ``image``: ``(H, N, d)`` each, or ``(L, H, N, d)``.

        Queries are unscaled: ``softmax(Q K^T / sqrt(d))`` is the attention.
        """
        return self._tokens(int(image))

    def _make_tokens(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout(image)
        coords = token_coordinates(self.grid)
        canonical = self.canonical(image, coords)
        flat = layout.labels.reshape(-1)
        rng = self._rng(image, 1)
        # each image sees every part a little differently
        appearance = self._embeddings + APPEARANCE_CHANGE * rng.normal(
            size=self._embeddings.shape
        ) / np.sqrt(PART_DIMS)
        appearance /= np.linalg.norm(appearance, axis=1, keepdims=True)
        part = appearance[flat]  # (N, PART_DIMS)
        n_layers = len(self._rotations)
        shape = (n_layers, self.heads, self.n_tokens, self.head_dim)
        queries = np.empty(shape, dtype=self.dtype)
        keys = np.empty(shape, dtype=self.dtype)
        for layer in range(n_layers):
            q, k = _head_features(
                part, canonical, self._params, self._frequencies[layer], self.head_dim, rng
            )
            for head in range(self.heads):
                rotation = self._rotations[layer][head]
                queries[layer, head] = q[head] @ rotation
                keys[layer, head] = k[head] @ rotation
        if self.layers is None:
            queries, keys = queries[0], keys[0]
        queries.setflags(write=False)
        keys.setflags(write=False)
        return queries, keys

    def maps(self, backend=None, cache_items: int = 16) -> AttentionMaps:
        """Lazy `AttentionMaps` over the collection (`AttentionMaps.from_query_key`)."""
        return AttentionMaps.from_query_key(
            self.query_key,
            grid=self.grid,
            n_images=self.n_images,
            backend=backend,
            cache_items=cache_items,
            settings={"synthetic": "TokenCollection", "seed": self.seed},
        )


def _part_embeddings(n_ids: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors, one per id (row 0 unused): orthonormal while they fit."""
    vectors = rng.normal(size=(max(n_ids, PART_DIMS), PART_DIMS))
    head = np.linalg.qr(vectors[:PART_DIMS].T)[0].T  # PART_DIMS orthonormal rows
    vectors[:PART_DIMS] = head
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[:n_ids]


def _head_features(part, canonical, params, frequencies, head_dim, rng):
    """``(H, N, d)`` query and key features whose dot products, divided by ``sqrt(d)``,
    are the logits of every head (before the head's rotation):
    ``part [same part] + bump K(c_q - c_k) - |c_q - c_k|^2 / (2 width^2) + bias_k + noise``
    with ``c`` the canonical coordinates and ``K`` a Gaussian kernel of width
    `BUMP_WIDTH` (random Fourier features: bounded values, fine in float16)."""
    heads, n_tokens = params["part"].size, canonical.shape[0]
    n_part, n_bump = part.shape[1], 2 * frequencies.shape[1]
    q = np.zeros((heads, n_tokens, head_dim), dtype=np.float32)
    k = np.zeros_like(q)
    strength = np.sqrt(params["part"])[:, None, None]
    q[:, :, :n_part] = strength * part
    k[:, :, :n_part] = strength * part
    at = n_part
    phase = np.einsum("nc,hfc->hnf", canonical, frequencies)  # (H, N, F)
    bump = np.sqrt(params["bump"] / frequencies.shape[1])[:, None, None]
    waves = np.concatenate([np.cos(phase), np.sin(phase)], axis=2) * bump
    q[:, :, at : at + n_bump] = waves
    k[:, :, at : at + n_bump] = waves
    at += n_bump
    # q.k = c_q.c_k / T^2 - |c_k|^2 / (2 T^2) = -|c_q - c_k|^2 / (2 T^2) + const(q)
    inverse_square = (1.0 / params["width"] ** 2)[:, None, None]
    q[:, :, at : at + 2] = canonical * inverse_square
    k[:, :, at : at + 2] = canonical
    q[:, :, at + 2] = 1.0
    k[:, :, at + 2] = -0.5 * (canonical**2).sum(axis=1) * inverse_square[:, :, 0]
    q[:, :, at + 3] = 1.0
    k[:, :, at + 3] = params["key_bias"][:, None] * rng.standard_normal((heads, n_tokens))
    at += 4
    n_noise = head_dim - at
    spread = np.sqrt(params["noise"] / np.sqrt(n_noise))[:, None, None]
    q[:, :, at:] = spread * rng.standard_normal((heads, n_tokens, n_noise))
    k[:, :, at:] = spread * rng.standard_normal((heads, n_tokens, n_noise))
    q *= np.sqrt(head_dim)  # the formula divides by sqrt(d): scale the queries to cancel it
    return q, k


def _place(grid, sizes, rng, first=()) -> dict[int, tuple[int, int, int, int]]:
    """Non-overlapping boxes (one free token around each): the parts of ``first``, then
    the others largest first; an object that does not fit after many tries is left out."""
    h, w = grid
    occupied = np.zeros(grid, dtype=bool)
    boxes = {}
    for part in sorted(sizes, key=lambda p: (p not in first, -sizes[p][0] * sizes[p][1])):
        sh, sw = sizes[part]
        for _ in range(200):
            r, c = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
            if not occupied[max(r - 1, 0) : r + sh + 1, max(c - 1, 0) : c + sw + 1].any():
                occupied[r : r + sh, c : c + sw] = True
                boxes[part] = (r, c, sh, sw)
                break
    return boxes
