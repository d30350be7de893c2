"""Disk cache of attention maps, shared by the command line and the widgets.

An entry is one `AttentionMaps` ``.npz`` file (written with ``allow_pickle=False``)
named by the SHA-256 of its key. The key is built from the content hash of every image
(in order), the engine's identity (model id and revision or file hash, dtype, size),
the layers, timestep, seed, pairs, the package version and the maps' format version.
The full key is stored inside the entry too, and a SHA-256 over its content (grid,
geometries, every map's shape, type and bytes): a hash collision, an entry written by
another version, a file edited by hand with its key intact, or one damaged on disk is
detected on read, deleted with one warning and recomputed, never returned.

Where it lives: ``$NAPARI_CORRSEG_CACHE_DIR`` if set, else the platform's user cache
directory (``platformdirs.user_cache_dir("napari-corrseg")``). Size limit:
``$NAPARI_CORRSEG_CACHE_MAX_MB`` (default 2048 MiB); the least recently used entries
are evicted first (a hit refreshes an entry's modification time).

numpy only; imports neither torch nor Qt.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..core.maps import FORMAT_VERSION, AttentionMaps
from .io import atomic_path

__all__ = [
    "DEFAULT_MAX_MB",
    "CacheInfo",
    "MapCache",
    "cache_key",
    "content_digest",
    "default_cache_dir",
    "image_hash",
]

DEFAULT_MAX_MB = 2048
_ENTRY_SUFFIX = ".npz"
_KEY_SETTING = "cache_key"
_CHECKSUM_SETTING = "content_sha256"


def default_cache_dir() -> Path:
    """The cache directory: ``$NAPARI_CORRSEG_CACHE_DIR`` or the user cache directory."""
    override = os.environ.get("NAPARI_CORRSEG_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-corrseg"))


def _default_max_bytes() -> int:
    raw = os.environ.get("NAPARI_CORRSEG_CACHE_MAX_MB", "")
    try:
        megabytes = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        warnings.warn(
            f"NAPARI_CORRSEG_CACHE_MAX_MB={raw!r} is not a number; using {DEFAULT_MAX_MB}",
            stacklevel=3,
        )
        megabytes = DEFAULT_MAX_MB
    return int(megabytes * 2**20)


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's pixels, shape and dtype (not of its file)."""
    array = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Make a key value JSON-stable: tuples to lists, numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def cache_key(
    images: Sequence[np.ndarray],
    identity: dict[str, Any],
    *,
    layers: Any = "auto",
    timestep: int = 261,
    seed: int = 0,
    pairs: Any = "all",
) -> dict[str, Any]:
    """Everything that determines the attention maps, as a JSON-able dict.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        The images, in order.
    identity : dict
        ``engine.identity``.
    layers, timestep, seed, pairs
        The extraction settings.

    Returns
    -------
    dict
    """
    if not isinstance(pairs, str):
        pairs = sorted([int(i), int(j)] for i, j in pairs)
    return _plain(
        {
            "images": [image_hash(image) for image in images],
            "model": dict(identity),
            "layers": layers,
            "timestep": int(timestep),
            "seed": int(seed),
            "pairs": pairs,
            "package_version": __version__,
            "format_version": FORMAT_VERSION,
        }
    )


def content_digest(maps: AttentionMaps) -> str:
    """SHA-256 over what an entry holds: grid, geometries, settings (without the key and
    this checksum) and every map as float32 (shape and bytes), pairs in sorted order."""
    settings = {
        k: v for k, v in maps.settings.items() if k not in (_KEY_SETTING, _CHECKSUM_SETTING)
    }
    head = {
        "grid": list(maps.grid),
        "geometries": [g.to_dict() for g in maps.geometries],
        "settings": json.loads(json.dumps(settings, default=str)),  # as stored and read
    }
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for pair in sorted(maps.maps):
        array = np.ascontiguousarray(maps.maps[pair], dtype=np.float32)
        digest.update(f"{pair}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheInfo:
    """What `MapCache.info` reports."""

    directory: Path
    entries: int
    total_bytes: int
    max_bytes: int


class MapCache:
    """Attention maps on disk, least-recently-used eviction above a size limit.

    Parameters
    ----------
    directory : str or Path, optional
        Where entries live (default: `default_cache_dir`). Created on first write.
    max_bytes : int, optional
        Size limit (default: ``$NAPARI_CORRSEG_CACHE_MAX_MB`` or 2048 MiB).
    """

    def __init__(self, directory: str | Path | None = None, max_bytes: int | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else _default_max_bytes()

    def path_for(self, key: dict[str, Any]) -> Path:
        """The file an entry with this key lives in."""
        return self.directory / f"{_key_digest(key)}{_ENTRY_SUFFIX}"

    def get(self, key: dict[str, Any]) -> AttentionMaps | None:
        """Return the cached maps for ``key``, or None on a miss.

        A corrupt entry or one whose stored key differs from ``key`` is deleted and
        reported as a miss, so the caller recomputes it.
        """
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as handle:  # closed even when the file is not an npz
                maps = AttentionMaps.load(handle)
        except Exception:  # any unreadable entry (e.g. zipfile.BadZipFile, a bad shape)
            self._discard(path, "unreadable")
            return None
        if maps.settings.get(_KEY_SETTING) != key:
            self._discard(path, "written for other settings")
            return None
        if _CHECKSUM_SETTING not in maps.settings:
            self._discard(path, "from an older version (no checksum)")
            return None
        if maps.settings.get(_CHECKSUM_SETTING) != content_digest(maps):
            self._discard(path, "damaged or edited (its content does not match its checksum)")
            return None
        try:
            os.utime(path)  # mark as recently used for LRU eviction
        except OSError:
            pass
        settings = dict(maps.settings)
        settings.pop(_KEY_SETTING, None)
        settings.pop(_CHECKSUM_SETTING, None)
        maps.settings = settings
        return maps

    def put(self, key: dict[str, Any], maps: AttentionMaps) -> Path | None:
        """Store ``maps`` under ``key`` (atomically), then evict down to the size limit.

        A cache that cannot be written only warns: the maps are still returned to the
        user, just not remembered.
        """
        path = self.path_for(key)
        settings = {**maps.settings, _KEY_SETTING: key, _CHECKSUM_SETTING: content_digest(maps)}
        stored = AttentionMaps(maps.grid, maps.geometries, maps.maps, settings)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                stored.save(temporary)
        except OSError as error:
            warnings.warn(
                f"could not write the attention-map cache at {self.directory}: {error}; "
                "set NAPARI_CORRSEG_CACHE_DIR to a writable folder",
                stacklevel=2,
            )
            return None
        self.evict(keep=path)
        return path

    def entries(self) -> list[Path]:
        """Entry files, least recently used first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.glob(f"*{_ENTRY_SUFFIX}") if p.is_file()]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used entries until the cache fits ``max_bytes``.

        ``keep`` (the entry just written) is never evicted, even if it alone is larger
        than the limit. Returns the deleted paths.
        """
        files = self.entries()
        total = sum(p.stat().st_size for p in files)
        removed = []
        for path in files:
            if total <= self.max_bytes:
                break
            if keep is not None and path == keep:
                continue
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total -= size
            removed.append(path)
        return removed

    def info(self) -> CacheInfo:
        """Directory, number of entries, bytes used and the limit."""
        files = self.entries()
        return CacheInfo(
            self.directory, len(files), sum(p.stat().st_size for p in files), self.max_bytes
        )

    def clear(self) -> int:
        """Delete every entry (and leftover partial writes); return how many entries."""
        count = 0
        for path in self.entries():
            path.unlink(missing_ok=True)
            count += 1
        if self.directory.is_dir():
            for leftover in self.directory.glob(".*.partial"):
                leftover.unlink(missing_ok=True)
        return count

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(
            f"attention-map cache entry {path.name} is {why}; recomputing it", stacklevel=3
        )
        path.unlink(missing_ok=True)
