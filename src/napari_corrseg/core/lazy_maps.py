"""Attention maps formed on demand from per-image queries and keys.

In SD2's UNet an image's self-attention queries and keys depend on that image alone, so
the map of any pair can be formed later from what each image left behind:

``A_ij = mean over layers and heads of softmax(Q_i K_j^T / sqrt(d))``

with ``Q_i`` the (unscaled) queries of image ``i`` and ``K_j`` the keys of image ``j``,
``(H, N, d)`` for one layer or ``(L, H, N, d)`` for ``L`` layers of one grid. This is the
arithmetic of the engine (`napari_corrseg.engine.capture.accumulate_attention` followed by
``finish_sums``), done in float32 whatever the storage dtype, with rows renormalised.

`LazyAttentionMaps` (built by `napari_corrseg.core.maps.AttentionMaps.from_query_key`) is an
`AttentionMaps` whose ``self(i)`` and ``cross(i, j)`` compute that formula when asked, keep
the last few maps in a bounded, thread-safe LRU cache, and never hold more. Every function
that takes `AttentionMaps` works on it.

numpy only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .maps import AttentionMaps, ImageGeometry

__all__ = ["LazyAttentionMaps", "numpy_attention"]

#: Score elements held at once by `numpy_attention` (float32): 16 MiB of scores.
CHUNK_ELEMENTS = 1 << 22
#: Images whose queries and keys stay in memory after use (a partner is usually reused).
TOKEN_CACHE_ITEMS = 4

Backend = Callable[[Any, Any], np.ndarray]
Provider = Callable[[int], tuple[Any, Any]]


def _as_layers(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 3 else array


def numpy_attention(queries, keys, *, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """``mean over layers and heads of softmax(Q K^T / sqrt(d))`` in float32.

    Parameters
    ----------
    queries : array_like
        ``(H, N, d)`` or ``(L, H, N, d)`` unscaled queries of one image (any float dtype,
        numpy, zarr or anything ``np.asarray`` takes).
    keys : array_like
        The keys of the other (or the same) image, same shape as ``queries``.
    chunk_elements : int
        Score elements computed at once; memory holds one ``H x rows x N`` chunk.

    Returns
    -------
    numpy.ndarray
        ``(N, N)`` float32, rows sum to 1 (renormalised as the engine does).
    """
    q_all = _as_layers(np.asarray(queries))
    k_all = _as_layers(np.asarray(keys))
    n_layers, heads, n_queries, dim = q_all.shape
    n_keys = k_all.shape[2]
    scale = np.float32(1.0 / np.sqrt(dim))
    rows = max(1, min(n_queries, chunk_elements // (heads * n_keys)))
    buffer = np.empty(heads * rows * n_keys, dtype=np.float32)
    total = np.zeros((n_queries, n_keys), dtype=np.float32)
    for layer in range(n_layers):
        q = np.asarray(q_all[layer], dtype=np.float32) * scale  # as the engine scales
        k_t = np.ascontiguousarray(np.asarray(k_all[layer], dtype=np.float32).transpose(0, 2, 1))
        for start in range(0, n_queries, rows):
            stop = min(start + rows, n_queries)
            scores = buffer[: heads * (stop - start) * n_keys].reshape(heads, -1, n_keys)
            np.matmul(q[:, start:stop], k_t, out=scores)
            scores -= scores.max(axis=2, keepdims=True)
            np.exp(scores, out=scores)
            # softmax normalisation and the head mean in one weighted sum over heads
            weights = 1.0 / (scores.sum(axis=2) * (heads * n_layers))
            total[start:stop] += np.einsum("hrk,hr->rk", scores, weights.astype(np.float32))
    total /= total.sum(axis=1, keepdims=True)
    return total


class _BoundedCache:
    """A thread-safe LRU of at most ``capacity`` values; each key is computed once even
    when several threads ask for it at the same time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if self.capacity <= 0:
            with self._lock:
                self.misses += 1
            return compute()
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                event = self._pending.get(key)
                owner = event is None
                if owner:
                    event = self._pending[key] = threading.Event()
                    self.misses += 1
            if not owner:
                event.wait()  # then look again: usually a hit now
                continue
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    del self._pending[key]
                event.set()
                raise
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                del self._pending[key]
            event.set()
            return value


class _AllPairs(Sequence):
    """Every ordered pair ``(i, j)``, ``i != j``, of ``n`` images, in sorted order,
    without building the list."""

    def __init__(self, n_images: int) -> None:
        self.n_images = n_images

    def __len__(self) -> int:
        return self.n_images * (self.n_images - 1)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("pair index out of range")
        i, rest = divmod(index, self.n_images - 1)
        return (i, rest + (rest >= i))

    def __contains__(self, pair) -> bool:
        try:
            i, j = (int(v) for v in pair)
        except (TypeError, ValueError):
            return False
        return i != j and 0 <= i < self.n_images and 0 <= j < self.n_images

    def __eq__(self, other) -> bool:
        if isinstance(other, _AllPairs):
            return other.n_images == self.n_images
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"<all {len(self)} ordered pairs of {self.n_images} images>"


class _MapView(Mapping):
    """``{(i, j): map}`` over every pair (self maps included), computed on access."""

    def __init__(self, owner: LazyAttentionMaps) -> None:
        self._owner = owner

    def __getitem__(self, pair) -> np.ndarray:
        if pair not in self:
            raise KeyError(pair)
        return self._owner.cross(*pair)

    def __contains__(self, pair) -> bool:
        n = self._owner.n_images
        try:
            i, j = (int(v) for v in pair)
        except (TypeError, ValueError):
            return False
        return 0 <= i < n and 0 <= j < n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = self._owner.n_images
        return ((i, j) for i in range(n) for j in range(n))

    def __len__(self) -> int:
        return self._owner.n_images**2

    def __repr__(self) -> str:
        return f"<{len(self)} maps formed on demand>"


def _check_tokens(queries, keys, image: int, n_tokens: int) -> tuple[int, ...]:
    """Shapes and dtypes of one image's queries and keys, read without loading data;
    returns their shape."""
    for name, array in (("queries", queries), ("keys", keys)):
        shape = tuple(np.shape(array))
        dtype = np.dtype(getattr(array, "dtype", None) or np.asarray(array).dtype)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"{name} of image {image} have shape {shape}; expected (heads, tokens, dim) "
                "for one layer or (layers, heads, tokens, dim)"
            )
        if dtype.kind != "f":
            raise ValueError(f"{name} of image {image} must be floating point, got {dtype}")
        if shape[-2] != n_tokens:
            raise ValueError(
                f"{name} of image {image} hold {shape[-2]} tokens but the grid holds "
                f"{n_tokens}; pass the grid the queries and keys were taken on"
            )
    q_shape, k_shape = tuple(np.shape(queries)), tuple(np.shape(keys))
    if q_shape != k_shape:
        raise ValueError(
            f"queries {q_shape} and keys {k_shape} of image {image} differ in shape; "
            "store both from the same layers"
        )
    return q_shape


class LazyAttentionMaps(AttentionMaps):
    """`AttentionMaps` whose maps are computed from queries and keys when asked.

    Build it with `napari_corrseg.core.maps.AttentionMaps.from_query_key`. ``self(i)``
    and ``cross(i, j)`` return read-only ``(N, N)`` float32 maps; ``has(i, j)`` is true
    for every pair; ``pairs`` lists every ordered pair without building the list;
    ``maps`` is a read-only mapping that computes on access (iterating it forms all
    ``n^2`` maps: use ``cross`` for the ones you need).
    """

    def __init__(
        self,
        provider: Provider,
        n_images: int,
        grid: tuple[int, int],
        geometries: Sequence[ImageGeometry] | None = None,
        settings: dict[str, Any] | None = None,
        backend: Backend | None = None,
        cache_items: int = 16,
        *,
        checked: bool = False,
    ) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        if geometries is None:
            geometries = [ImageGeometry(self.grid, self.grid)] * n_images
        self.geometries = list(geometries)
        if len(self.geometries) != n_images:
            raise ValueError(
                f"got {len(self.geometries)} geometries for {n_images} images; give one per image"
            )
        self.settings = dict(settings or {})
        self.backend = numpy_attention if backend is None else backend
        self.maps = _MapView(self)
        self._provider = provider
        self._checked: set[int] = set()
        self._all_checked = checked
        self._token_shape: tuple[int, ...] | None = None
        self._map_cache = _BoundedCache(cache_items)
        self._token_cache = _BoundedCache(TOKEN_CACHE_ITEMS)

    def __repr__(self) -> str:
        return (
            f"LazyAttentionMaps(n_images={self.n_images}, grid={self.grid}, "
            f"cache_items={self._map_cache.capacity})"
        )

    def __eq__(self, other) -> bool:  # maps are never compared wholesale
        return self is other

    __hash__ = object.__hash__

    @property
    def is_lazy(self) -> bool:
        """True: maps are formed on demand from queries and keys."""
        return True

    @property
    def pairs(self) -> Sequence[tuple[int, int]]:
        """Every ordered pair ``(i, j)``, ``i != j``: any can be formed."""
        return _AllPairs(self.n_images)

    def has(self, i: int, j: int) -> bool:
        """True for any two images of the collection."""
        return 0 <= int(i) < self.n_images and 0 <= int(j) < self.n_images

    def _check_image(self, i) -> int:
        if not 0 <= int(i) < self.n_images:
            raise KeyError(f"no image {i}; the maps hold images 0..{self.n_images - 1}")
        return int(i)

    def query_key(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(queries, keys)`` of image ``i`` as numpy arrays in the dtype given.

        The last few images asked for stay in memory (a zarr entry is read once).
        """
        i = self._check_image(i)
        return self._token_cache.get(i, lambda: self._load(i))

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        queries, keys = self._provider(i)
        if not self._all_checked and i not in self._checked:
            shape = _check_tokens(queries, keys, i, self.n_tokens)
            if self._token_shape is None:
                self._token_shape = shape
            elif shape != self._token_shape:
                raise ValueError(
                    f"queries and keys of image {i} have shape {shape}, those of the other "
                    f"images {self._token_shape}; every image needs the same layers and heads"
                )
            self._checked.add(i)
        return np.asarray(queries), np.asarray(keys)

    def self(self, i: int) -> np.ndarray:
        """Self-attention ``A_ii`` of image ``i``, ``(N, N)`` float32, rows sum to 1."""
        return self.cross(i, i)

    def cross(self, i: int, j: int) -> np.ndarray:
        """``A_ij``: queries of image ``i`` over keys of image ``j``, ``(N, N)`` float32."""
        i, j = self._check_image(i), self._check_image(j)
        return self._map_cache.get((i, j), lambda: self._compute(i, j))

    def _compute(self, i: int, j: int) -> np.ndarray:
        queries = self.query_key(i)[0]
        keys = self.query_key(j)[1]
        result = np.asarray(self.backend(queries, keys), dtype=np.float32)
        if result.shape != (self.n_tokens, self.n_tokens):
            raise ValueError(
                f"the attention backend returned shape {result.shape} for images ({i}, {j}); "
                f"expected ({self.n_tokens}, {self.n_tokens})"
            )
        result.setflags(write=False)  # shared through the cache: nobody may change it
        return result

    def cache_info(self) -> dict[str, int]:
        """``{"maps": held, "capacity": most held, "hits": .., "misses": ..}``."""
        cache = self._map_cache
        return {
            "maps": len(cache),
            "capacity": cache.capacity,
            "hits": cache.hits,
            "misses": cache.misses,
        }

    def subset(self, indices) -> LazyAttentionMaps:
        """The images ``indices``, renumbered ``0..k-1``, still formed on demand."""
        indices = [self._check_image(i) for i in indices]
        return LazyAttentionMaps(
            lambda k: self.query_key(indices[k]),
            len(indices),
            self.grid,
            [self.geometries[i] for i in indices],
            self.settings,
            self.backend,
            self._map_cache.capacity,
        )

    def to_dense(self, pairs="all") -> AttentionMaps:
        """Form the self maps and the cross maps of ``pairs`` ("all" or a list) now."""
        wanted = list(self.pairs) if pairs == "all" else [tuple(p) for p in pairs]
        maps = {(i, i): np.array(self.self(i)) for i in range(self.n_images)}
        maps.update({(i, j): np.array(self.cross(i, j)) for i, j in wanted if i != j})
        return AttentionMaps(self.grid, list(self.geometries), maps, dict(self.settings))

    def save(self, path) -> None:
        """Not available: a lazy form holds queries and keys, not maps."""
        raise ValueError(
            "these attention maps are formed on demand from queries and keys; keep the "
            "queries and keys in the token store (napari_corrseg.collection.store), or "
            "call to_dense() first to save the maps themselves"
        )
