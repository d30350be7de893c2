"""The token store: each image's per-head queries and keys on disk, computed once, ever.

In SD2's UNet an image's self-attention queries and keys depend on that image alone, so
a collection needs one UNet pass per image and any cross map can be formed later:
``A_ij = mean over layers and heads of softmax(Q_i K_j^T / sqrt(d))``. The store keeps,
per image, the UNSCALED queries and the keys of the chosen layers, ``(L, H, N, d)``
float16, as one zarr v3 group on local disk.

Layout::

    ROOT/napari-corrseg-store.json          marks the folder as a token store
    ROOT/s-<settings digest>/settings.json  what produced the entries below
    ROOT/s-<settings digest>/<ab>/<key>/    one image: zarr group "queries", "keys"

An entry is addressed by the settings (model identity, layers, timestep, seed, encoder,
image size, format version: `store_settings`) and the image's content (`image_key`, the
SHA-256 of the prepared pixels). Writes are atomic per image: the group is written into a
hidden sibling folder ``.<key>.<host>.<pid>.<random>.partial`` and renamed into place, so
a reader never sees half an entry, a killed writer leaves only a hidden folder, and
several processes (Dask workers) may write one store at once (the first rename wins; the
others' identical entries are dropped). A SHA-256 over the stored content is kept in the
group's attributes and verified on every read: a damaged entry raises
`DamagedEntryError`; `napari_corrseg.tasks.collection.fill_store` recomputes it.

numpy and zarr only; imports neither torch nor Qt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.maps import AttentionMaps, ImageGeometry
from .store_entries import (
    ENTRY_OVERHEAD_BYTES,
    HOST,
    KEY_PATTERN,
    MARKER,
    STORE_FORMAT_VERSION,
    DamagedEntryError,
    StoreError,
    canonical_json,
    content_checksum,
    image_key,
    read_group,
    stale_partial,
    store_settings,
    tokens_for_storage,
    write_group,
    write_json_atomic,
)

__all__ = [
    "STORE_FORMAT_VERSION",
    "DamagedEntryError",
    "StoreError",
    "TokenStore",
    "image_key",
    "store_settings",
]


class TokenStore:
    """Per-image queries and keys of one extraction setting, in a folder on local disk.

    Parameters
    ----------
    path : str or Path
        The store folder (created if missing). Refused if it holds other files.
    settings : dict
        JSON-able description of what produced the entries (`store_settings`); entries
        of other settings live beside these and are never mixed.
    read_cache : int
        Entries kept in memory after a verified read (each ~8 MB at 512 px).

    Raises
    ------
    StoreError
        The folder cannot be created or is not a token store.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], *, read_cache: int = 4):
        self.path = Path(path).expanduser()
        self.settings = canonical_json(dict(settings))
        text = json.dumps(self.settings, sort_keys=True)
        self.settings_digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.root = self.path / f"s-{self.settings_digest}"
        self._read_cache: OrderedDict[str, tuple] = OrderedDict()
        self._read_cache_size = int(read_cache)
        self._lock = threading.Lock()
        self._open()

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, settings={self.settings_digest})"

    def __reduce__(self):  # picklable by path and settings (Dask sends it to workers)
        return (type(self), (str(self.path), self.settings))

    def _open(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise StoreError(f"store {path} exists and is not a folder; choose another --store")
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not (path / MARKER).is_file():
                others = [p.name for p in path.iterdir() if not p.name.startswith(".")]
                if others:
                    raise StoreError(
                        f"folder {path} is not a napari-corrseg token store (it holds "
                        f"{others[0]!r}); choose an empty or new folder for --store"
                    )
                write_json_atomic(
                    path / MARKER,
                    {"tool": "napari-corrseg", "kind": "token store", "format": 1},
                )
            self.root.mkdir(exist_ok=True)
            settings_file = self.root / "settings.json"
            if not settings_file.is_file():
                write_json_atomic(settings_file, self.settings)
        except OSError as error:
            raise StoreError(
                f"cannot use token store {path}: {error.strerror or error}; choose a "
                "writable folder for --store"
            ) from None

    # -- addressing -------------------------------------------------------------------

    image_key = staticmethod(image_key)

    def _entry(self, key: str) -> Path:
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"not a token store key: {key!r} (use TokenStore.image_key)")
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        """Whether a complete entry exists for ``key`` (not whether it is intact)."""
        return (self._entry(key) / "zarr.json").is_file()

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys without an entry, in the given order, each once."""
        seen: set[str] = set()
        out = []
        for key in keys:
            if key not in seen and not self.has(key):
                out.append(key)
            seen.add(key)
        return out

    def keys(self) -> Iterator[str]:
        """Every key with an entry (any order)."""
        if not self.root.is_dir():
            return
        for shard in self.root.iterdir():
            if shard.is_dir() and len(shard.name) == 2:
                for entry in shard.iterdir():
                    if KEY_PATTERN.fullmatch(entry.name) and (entry / "zarr.json").is_file():
                        yield entry.name

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    # -- size -------------------------------------------------------------------------

    @staticmethod
    def estimate_bytes(n_images: int, shape: Sequence[int], itemsize: int = 2) -> int:
        """Bytes ``n_images`` new entries of ``(L, H, N, d)`` queries and keys take.

        Parameters
        ----------
        n_images : int
            Entries to add.
        shape : sequence of int
            ``(L, H, N, d)`` of one image's queries (keys have the same shape).
        itemsize : int
            Bytes per value (2: float16).

        Returns
        -------
        int
            Apparent size on disk (raw chunks plus metadata), bytes.
        """
        per_image = 2 * int(np.prod([int(s) for s in shape])) * itemsize + ENTRY_OVERHEAD_BYTES
        return int(n_images) * per_image

    def size_bytes(self, keys: Iterable[str] | None = None) -> int:
        """Apparent bytes on disk of the given entries (default: all of these settings)."""
        total = 0
        for key in self.keys() if keys is None else keys:
            for root, _, files in os.walk(self._entry(key)):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    # -- writing ----------------------------------------------------------------------

    def write(
        self,
        key: str,
        queries: np.ndarray,
        keys: np.ndarray,
        geometry: ImageGeometry,
        *,
        name: str | None = None,
    ) -> bool:
        """Store one image's queries and keys, atomically.

        Parameters
        ----------
        key : str
            The image's content key (`image_key`).
        queries, keys : numpy.ndarray
            ``(L, H, N, d)`` (or ``(H, N, d)``: one layer) UNSCALED queries and keys;
            stored as float16.
        geometry : ImageGeometry
            The image's size and token grid (``N = h * w``).
        name : str, optional
            What to call the image (kept for people looking into the store).

        Returns
        -------
        bool
            True if this call created the entry; False if an entry already existed
            (written meanwhile by another process: same content, so nothing is lost).
        """
        target = self._entry(key)
        queries16, keys16 = tokens_for_storage(queries, keys, geometry)
        geometry_dict = canonical_json(geometry.to_dict())
        attrs = {
            "napari_corrseg": {
                "geometry": geometry_dict,
                "name": None if name is None else str(name),
                "shape": list(queries16.shape),
                "dtype": "float16",
                "checksum": content_checksum(queries16, keys16, geometry_dict),
                "settings_digest": self.settings_digest,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "store_format_version": STORE_FORMAT_VERSION,
            }
        }
        if self.has(key):
            return False
        target.parent.mkdir(exist_ok=True)
        partial = target.parent / f".{key}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        try:
            write_group(partial, queries16, keys16, attrs)
            try:
                os.rename(partial, target)
            except OSError:
                if self.has(key):  # another writer won the race: same content
                    return False
                raise
        except OSError as error:
            raise StoreError(
                f"cannot write to token store {self.path}: {error.strerror or error}"
            ) from None
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return True

    def discard(self, key: str) -> None:
        """Remove an entry (atomically: renamed aside first, then deleted)."""
        target = self._entry(key)
        if not target.exists():
            return
        aside = target.parent / f".{key}.{uuid.uuid4().hex[:8]}.removed"
        try:
            os.rename(target, aside)
        except OSError:
            return  # removed meanwhile by another process
        shutil.rmtree(aside, ignore_errors=True)
        with self._lock:
            self._read_cache.pop(key, None)

    def remove_stale_partials(self, max_age_s: float = 6 * 3600) -> int:
        """Delete hidden folders left by killed writers; returns how many.

        A folder is stale when its writer ran on this host and is gone, or when it is
        older than ``max_age_s`` (writers on other hosts of a shared store).
        """
        removed = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if stale_partial(entry, now, max_age_s):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed

    # -- reading ----------------------------------------------------------------------

    def _attrs(self, key: str) -> dict[str, Any]:
        path = self._entry(key) / "zarr.json"
        try:
            meta = json.loads(path.read_text())
            return meta["attributes"]["napari_corrseg"]
        except FileNotFoundError:
            raise KeyError(f"no token store entry for image {key[:12]}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DamagedEntryError(key, f"unreadable metadata: {error}") from None

    def geometry(self, key: str) -> ImageGeometry:
        """The stored image geometry (metadata only; the content is checked by `read`)."""
        try:
            return ImageGeometry.from_dict(self._attrs(key)["geometry"])
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, KeyError) and "no token store entry" in str(error):
                raise
            raise DamagedEntryError(key, f"bad geometry: {error}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        """``(L, H, N, d)`` of the stored queries (metadata only)."""
        try:
            return tuple(int(v) for v in self._attrs(key)["shape"])
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, KeyError) and "no token store entry" in str(error):
                raise
            raise DamagedEntryError(key, f"bad shape: {error}") from None

    def name(self, key: str) -> str | None:
        """The name the image was stored under, if any."""
        return self._attrs(key).get("name")

    def read(self, key: str) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
        """One image's ``(queries, keys, geometry)``, checksum verified.

        Returns
        -------
        queries, keys : numpy.ndarray
            ``(L, H, N, d)`` float16, queries unscaled (read-only arrays).
        geometry : ImageGeometry

        Raises
        ------
        KeyError
            No entry for ``key``.
        DamagedEntryError
            The entry cannot be read or fails its checksum.
        """
        with self._lock:
            hit = self._read_cache.get(key)
            if hit is not None:
                self._read_cache.move_to_end(key)
                return hit
        attrs = self._attrs(key)
        try:
            queries, keys = read_group(self._entry(key))
            geometry_dict = attrs["geometry"]
            expected = attrs["checksum"]
        except Exception as error:  # any decoder/IO failure means a damaged entry
            raise DamagedEntryError(key, f"{type(error).__name__}: {error}") from None
        if queries.dtype != np.float16 or list(queries.shape) != attrs.get("shape"):
            raise DamagedEntryError(key, f"unexpected array {queries.dtype} {queries.shape}")
        if content_checksum(queries, keys, geometry_dict) != expected:
            raise DamagedEntryError(key, "checksum mismatch")
        queries.flags.writeable = False
        keys.flags.writeable = False
        result = (queries, keys, ImageGeometry.from_dict(geometry_dict))
        with self._lock:
            self._read_cache[key] = result
            while len(self._read_cache) > self._read_cache_size:
                self._read_cache.popitem(last=False)
        return result

    def verify(self, key: str) -> bool:
        """True if the entry reads back and matches its checksum (nothing is cached)."""
        with self._lock:
            self._read_cache.pop(key, None)
        try:
            self.read(key)
        except DamagedEntryError:
            return False
        finally:
            with self._lock:
                self._read_cache.pop(key, None)
        return True

    def maps(
        self, keys: Sequence[str], backend: Any = None, *, cache_items: int = 16
    ) -> AttentionMaps:
        """Lazy `AttentionMaps` of these images, formed on demand from the stored tokens.

        Parameters
        ----------
        keys : sequence of str
            The images, in the order their indices should have.
        backend : callable, optional
            ``backend(queries_i, keys_j) -> (N, N)`` float32 (e.g.
            ``Engine.attention_backend``); default numpy.
        cache_items : int
            Maps kept in the maps' LRU.

        Returns
        -------
        AttentionMaps
            The lazy form (`AttentionMaps.from_query_key`); ``settings`` are the store's.
        """
        keys = list(keys)
        if not keys:
            raise ValueError("no images: pass at least one key")
        absent = [key for key in keys if not self.has(key)]
        if absent:
            raise KeyError(
                f"{len(absent)} image(s) are not in the token store (first {absent[0][:12]}); "
                "fill it first (napari-corrseg extract)"
            )
        geometries = [self.geometry(key) for key in keys]
        grids = {tuple(g.grid) for g in geometries}
        if len(grids) != 1:
            raise StoreError(f"entries of one setting have different grids: {sorted(grids)}")
        reader = _EntryReader(self, keys)
        return AttentionMaps.from_query_key(
            reader,
            None,
            geometries[0].grid,
            geometries=geometries,
            settings={**self.settings, "store": str(self.path)},
            backend=backend,
            cache_items=cache_items,
        )


class _EntryReader:
    """``index -> (queries, keys)`` from the store: the lazy maps' callable source."""

    def __init__(self, store: TokenStore, keys: Sequence[str]):
        self.store = store
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        queries, keys, _ = self.store.read(self.keys[int(index)])
        return queries, keys
