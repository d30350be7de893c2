"""Attention maps as plain numpy, with the geometry that ties tokens to image pixels.

`AttentionMaps` is what the engine returns and what every core algorithm, the CLI and
the widgets consume. It holds, on one token grid of ``h x w`` (``N = h * w``) tokens,
the head-averaged self-attention ``A_ii`` of every image and the cross self-attention
``A_ij = softmax(Q_i K_j^T * scale)`` for the ordered pairs that were computed. Every
map is an ``(N, N)`` float32 array whose rows sum to 1.

Coordinates are ``(row, col)`` everywhere. A *grid coordinate* names a position on the
token grid with token ``(r, c)`` centred at ``(r, c)``; it converts to image pixels (also
pixel-centred) through `ImageGeometry`.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AttentionMaps", "ImageGeometry", "token_coordinates"]

FORMAT_VERSION = 1


def token_coordinates(grid: tuple[int, int]) -> np.ndarray:
    """Return the ``(row, col)`` grid coordinate of every token, in token order.

    Parameters
    ----------
    grid : tuple of int
        ``(h, w)`` of the token grid.

    Returns
    -------
    numpy.ndarray
        ``(h * w, 2)`` float64 array; token ``k`` sits at ``(k // w, k % w)``.
    """
    h, w = (int(v) for v in grid)
    rows, cols = np.divmod(np.arange(h * w), w)
    return np.stack([rows, cols], axis=1).astype(np.float64)


@dataclass(frozen=True)
class ImageGeometry:
    """How one image's pixels relate to the token grid.

    The engine resizes every image to the model's square input (no padding, so every
    token covers image content); each axis therefore has its own scale. Both grid and
    pixel coordinates are centre-based: token ``(r, c)`` covers the pixel rectangle
    centred at ``((r + 0.5) * sy - 0.5, (c + 0.5) * sx - 0.5)`` with ``sy = H / h``.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` of the original image, in pixels.
    grid : tuple of int
        ``(h, w)`` of the token grid.
    """

    image_shape: tuple[int, int]
    grid: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Pixels per token along ``(row, col)``: the napari layer ``scale`` of a grid map."""
        return (
            self.image_shape[0] / self.grid[0],
            self.image_shape[1] / self.grid[1],
        )

    @property
    def translate(self) -> tuple[float, float]:
        """The napari layer ``translate`` that puts a grid-sized map exactly on its image."""
        sy, sx = self.scale
        return (0.5 * sy - 0.5, 0.5 * sx - 0.5)

    def grid_to_pixel(self, points: np.ndarray) -> np.ndarray:
        """Convert ``(..., 2)`` grid coordinates to image pixel coordinates."""
        points = np.asarray(points, dtype=np.float64)
        return points * np.asarray(self.scale) + np.asarray(self.translate)

    def pixel_to_grid(self, points: np.ndarray) -> np.ndarray:
        """Convert ``(..., 2)`` image pixel coordinates to grid coordinates."""
        points = np.asarray(points, dtype=np.float64)
        return (points - np.asarray(self.translate)) / np.asarray(self.scale)

    def to_dict(self) -> dict[str, list[int]]:
        return {"image_shape": list(self.image_shape), "grid": list(self.grid)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageGeometry:
        return cls(tuple(data["image_shape"]), tuple(data["grid"]))


@dataclass
class AttentionMaps:
    """Head-averaged self and cross self-attention of a set of images on one grid.

    Parameters
    ----------
    grid : tuple of int
        ``(h, w)`` of the token grid shared by all maps.
    geometries : list of ImageGeometry
        One per image, in the order the images were given.
    maps : dict
        ``{(i, j): (N, N) float32}``; ``(i, i)`` is the self-attention of image ``i``,
        ``(i, j)`` the cross self-attention with image ``i``'s queries over image ``j``'s
        keys.
    settings : dict
        JSON-serialisable description of what produced the maps (model, timestep,
        layers, seed, ...), kept for provenance and cache keys.
    """

    grid: tuple[int, int]
    geometries: list[ImageGeometry]
    maps: dict[tuple[int, int], np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        n_tokens = self.grid[0] * self.grid[1]
        for key, value in self.maps.items():
            i, j = key
            if not (0 <= i < self.n_images and 0 <= j < self.n_images):
                raise ValueError(f"map {key} names an image outside 0..{self.n_images - 1}")
            if value.shape != (n_tokens, n_tokens):
                raise ValueError(
                    f"map {key} has shape {value.shape}; the grid {self.grid} needs "
                    f"({n_tokens}, {n_tokens})"
                )

    @property
    def n_images(self) -> int:
        """Number of images the maps describe."""
        return len(self.geometries)

    @property
    def n_tokens(self) -> int:
        """``N = h * w``."""
        return self.grid[0] * self.grid[1]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The ordered cross pairs ``(i, j)``, ``i != j``, that are available."""
        return sorted(k for k in self.maps if k[0] != k[1])

    def self(self, i: int) -> np.ndarray:
        """Self-attention ``A_ii`` of image ``i``, ``(N, N)`` float32, rows sum to 1."""
        return self._get(i, i)

    def cross(self, i: int, j: int) -> np.ndarray:
        """Cross self-attention ``A_ij`` (queries of ``i`` over keys of ``j``), ``(N, N)``."""
        if i == j:
            return self.self(i)
        return self._get(i, j)

    def has(self, i: int, j: int) -> bool:
        """Whether the map ``(i, j)`` was computed."""
        return (i, j) in self.maps

    @property
    def is_lazy(self) -> bool:
        """False: every map is held in memory (see `from_query_key` for the lazy form)."""
        return False

    def query_key(self, i: int):
        """Queries and keys of image ``i``: only the lazy form (`from_query_key`) has them."""
        raise ValueError(
            "these attention maps hold maps, not queries and keys; build them with "
            "AttentionMaps.from_query_key to form maps on demand"
        )

    def to_dense(self, pairs="all") -> AttentionMaps:
        """The maps held in memory: this object itself (the lazy form computes them)."""
        return self

    @classmethod
    def from_query_key(
        cls,
        queries,
        keys=None,
        grid=None,
        *,
        geometries: Sequence[ImageGeometry] | None = None,
        settings: Mapping[str, Any] | None = None,
        backend=None,
        cache_items: int = 16,
        n_images: int | None = None,
    ) -> AttentionMaps:
        """Maps formed on demand from each image's per-head queries and keys.

        ``maps.self(i)`` and ``maps.cross(i, j)`` compute
        ``A_ij = mean over layers and heads of softmax(Q_i K_j^T / sqrt(d))`` when asked
        (the engine's arithmetic, in float32, rows renormalised) and keep the last
        ``cache_items`` maps in a thread-safe LRU cache. Every function that takes
        `AttentionMaps` works on the result; nothing of size ``n^2`` is ever built.

        Parameters
        ----------
        queries : sequence or callable
            ``queries[i]``: ``(H, N, d)`` (one layer) or ``(L, H, N, d)`` unscaled queries
            of image ``i``, numpy or zarr (anything ``np.asarray`` takes), float16
            accepted. Or a callable ``image index -> (queries, keys)`` that serves them
            lazily (then ``keys`` is None and ``n_images`` or ``geometries`` gives the
            number of images).
        keys : sequence, optional
            ``keys[i]``, the same shape as ``queries[i]``.
        grid : tuple of int
            ``(h, w)`` with ``h * w == N``.
        geometries : list of ImageGeometry, optional
            One per image; default: images the size of the grid.
        settings : dict, optional
            JSON-able provenance (model, layers, timestep, seed, ...).
        backend : callable, optional
            ``backend(queries_i, keys_j) -> (N, N)`` float32 numpy array computing the same
            formula (for example ``Engine.attention_backend`` on a GPU); default
            `napari_corrseg.core.lazy_maps.numpy_attention`, chunked to bound memory.
        cache_items : int
            Maps kept in the LRU cache (each ``4 N^2`` bytes; 4 MiB at 32 x 32).
        n_images : int, optional
            Number of images when ``queries`` is a callable and no geometries are given.

        Returns
        -------
        LazyAttentionMaps

        Raises
        ------
        ValueError
            On a missing grid, sequences of different lengths, or queries and keys whose
            shapes do not fit the grid or each other.
        """
        from . import lazy_maps

        if grid is None:
            raise ValueError("from_query_key needs the token grid (h, w) of the queries")
        grid = (int(grid[0]), int(grid[1]))
        if callable(queries):
            if keys is not None:
                raise ValueError("with a callable image -> (queries, keys), leave keys as None")
            if n_images is None:
                if geometries is None:
                    raise ValueError(
                        "with a callable, pass n_images (or geometries, one per image)"
                    )
                n_images = len(geometries)
            provider, checked = queries, False
        else:
            if keys is None or len(queries) != len(keys):
                raise ValueError(
                    "queries and keys must be two sequences with one entry per image, of "
                    f"equal length (got {len(queries)} and "
                    f"{'none' if keys is None else len(keys)})"
                )
            n_images = len(queries)
            shapes = {
                lazy_maps._check_tokens(queries[i], keys[i], i, grid[0] * grid[1])
                for i in range(n_images)
            }
            if len(shapes) > 1:
                raise ValueError(
                    f"queries and keys differ in shape between images ({sorted(shapes)}); "
                    "every image needs the same layers and heads"
                )
            provider, checked = (lambda i: (queries[i], keys[i])), True
        if n_images < 1:
            raise ValueError("from_query_key needs at least one image")
        return lazy_maps.LazyAttentionMaps(
            provider,
            int(n_images),
            grid,
            geometries,
            dict(settings or {}),
            backend,
            cache_items,
            checked=checked,
        )

    def _get(self, i: int, j: int) -> np.ndarray:
        try:
            return self.maps[(i, j)]
        except KeyError:
            available = ", ".join(str(k) for k in sorted(self.maps)) or "none"
            raise KeyError(
                f"no attention map for images ({i}, {j}); computed: {available}. "
                "Extract with pairs that include it."
            ) from None

    def subset(self, indices: Iterable[int]) -> AttentionMaps:
        """The maps of a subset of images, renumbered ``0..k-1`` in the given order."""
        indices = list(indices)
        position = {old: new for new, old in enumerate(indices)}
        maps = {
            (position[i], position[j]): value
            for (i, j), value in self.maps.items()
            if i in position and j in position
        }
        return AttentionMaps(
            self.grid, [self.geometries[i] for i in indices], maps, dict(self.settings)
        )

    # -- persistence (numpy only, never pickled) -------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the maps to an ``.npz`` file readable with ``allow_pickle=False``."""
        arrays = {f"map_{i}_{j}": value for (i, j), value in self.maps.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "grid": list(self.grid),
            "geometries": [g.to_dict() for g in self.geometries],
            "settings": self.settings,
        }
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> AttentionMaps:
        """Read maps written by `save`; raises ValueError on a malformed file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta_json"]).decode())
                if meta.get("format_version") != FORMAT_VERSION:
                    raise ValueError(f"unsupported format version {meta.get('format_version')}")
                maps = {}
                for name in data.files:
                    if name.startswith("map_"):
                        _, i, j = name.split("_")
                        maps[(int(i), int(j))] = np.asarray(data[name], dtype=np.float32)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a valid attention-map file: {error}") from error
        return cls(
            tuple(meta["grid"]),
            [ImageGeometry.from_dict(g) for g in meta["geometries"]],
            maps,
            meta["settings"],
        )
