"""Per-image latent cache: each image goes through the encoder once.

The VAE encoder is most of a CPU pair's cost (~26 s of ~35 s at 512 px), so matching one
source against many targets, or re-running with another timestep or layer set, must not
encode an image again. An entry is one float32 latent ``(1, C, h, w)`` keyed by

* the SHA-256 of the *prepared* pixels (`napari_corrseg.core.images.prepare_image`), so two
  arrays that prepare to the same pixels share an entry and any change of preprocessing
  gives a new key,
* the encoder's identity (which VAE or fast encoder, its revision, dtype), and
* the model input size (the image is resized to it before encoding).

Entries live in a small in-memory LRU and, optionally, on disk as ``.npz`` files written
with ``allow_pickle=False`` in ``<map cache dir>/latents`` (beside the attention-map
cache of `napari_corrseg.files.cache`). The full key is stored in each file, with a
SHA-256 of the latent's shape and bytes; on read the latent must also have the shape the
key names (``latent_shape``: ``(1, 4, image_size / 8, image_size / 8)``). A collision, a
file from another version, a damaged file or one edited with its key intact is deleted
with one warning and recomputed, never returned.

numpy only; imports neither torch nor Qt.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path

__all__ = [
    "LATENT_CHANNELS",
    "LATENT_FORMAT_VERSION",
    "LatentCache",
    "default_latent_dir",
    "expected_shape",
    "latent_key",
]

#: Bump when the meaning of a stored latent changes (preprocessing, scaling).
LATENT_FORMAT_VERSION = 1
#: Latent channels of every Stable Diffusion 2 VAE and of TAESD.
LATENT_CHANNELS = 4
#: Pixels per latent cell of those encoders.
LATENT_FACTOR = 8
_SUFFIX = ".npz"


def default_latent_dir() -> Path:
    """``<napari_corrseg.files.cache.default_cache_dir()>/latents``."""
    from .cache import default_cache_dir

    return default_cache_dir() / "latents"


def latent_key(prepared: np.ndarray, encoder: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Everything that determines one image's latent, as a JSON-able dict.

    Parameters
    ----------
    prepared : numpy.ndarray
        The image after `napari_corrseg.core.images.prepare_image` (before resizing).
    encoder : dict
        JSON-able identity of the encoder (see ``Engine.encoder_identity``).
    image_size : int
        Side of the square the image is resized to before encoding.

    Returns
    -------
    dict
    """
    array = np.ascontiguousarray(prepared)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    side = int(image_size) // LATENT_FACTOR
    return {
        "pixels": digest.hexdigest(),
        "encoder": json.loads(json.dumps(encoder, sort_keys=True)),
        "image_size": int(image_size),
        "latent_shape": [1, LATENT_CHANNELS, side, side],
        "format_version": LATENT_FORMAT_VERSION,
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _checksum(latent: np.ndarray) -> str:
    array = np.ascontiguousarray(latent, dtype=np.float32)
    digest = hashlib.sha256(f"{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def expected_shape(key: dict[str, Any]) -> tuple[int, ...] | None:
    """The latent shape a key names (``latent_shape``), or None if it names none."""
    shape = key.get("latent_shape") if isinstance(key, dict) else None
    if not isinstance(shape, list | tuple) or not all(isinstance(n, int) for n in shape):
        return None
    return tuple(shape)


class LatentCache:
    """Latents in memory (LRU) and optionally on disk.

    Parameters
    ----------
    directory : str, Path or None
        Disk folder, or None for memory only. Created on first write.
    memory_items : int
        Latents kept in memory (a 512 px latent is 64 KiB, so the default costs ~16 MiB).
    """

    def __init__(self, directory: str | Path | None = None, memory_items: int = 256) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory_items = int(memory_items)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"LatentCache(directory={self.directory}, items={len(self._memory)})"

    def path_for(self, key: dict[str, Any]) -> Path | None:
        """The disk file of ``key`` (None for a memory-only cache)."""
        return None if self.directory is None else self.directory / f"{_digest(key)}{_SUFFIX}"

    def get(self, key: dict[str, Any], shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The cached float32 latent, or None on a miss.

        ``shape`` (default: `expected_shape` of the key) is checked on a disk read: an
        entry of another shape is damaged and recomputed.
        """
        digest = _digest(key)
        latent = self._memory.get(digest)
        if latent is None:
            latent = self._read(key, shape if shape is not None else expected_shape(key))
            if latent is not None:
                self._remember(digest, latent)
        else:
            self._memory.move_to_end(digest)
        if latent is None:
            self.misses += 1
        else:
            self.hits += 1
        return latent

    def put(self, key: dict[str, Any], latent: np.ndarray) -> None:
        """Store ``latent`` (any float array) in memory and, if configured, on disk."""
        latent = np.array(latent, dtype=np.float32, order="C", copy=True)  # own the memory
        self._remember(_digest(key), latent)
        path = self.path_for(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                with open(temporary, "wb") as handle:
                    np.savez(
                        handle,
                        latent=latent,
                        key=np.array(json.dumps(key, sort_keys=True)),
                        checksum=np.array(_checksum(latent)),
                    )
        except OSError as error:
            warnings.warn(
                f"could not write the latent cache at {self.directory}: {error}; set "
                "NAPARI_CORRSEG_CACHE_DIR to a writable folder",
                stacklevel=2,
            )

    def clear(self) -> int:
        """Forget everything; return the number of disk entries deleted."""
        self._memory.clear()
        count = 0
        if self.directory is not None and self.directory.is_dir():
            for path in self.directory.glob(f"*{_SUFFIX}"):
                path.unlink(missing_ok=True)
                count += 1
        return count

    def _remember(self, digest: str, latent: np.ndarray) -> None:
        self._memory[digest] = latent
        self._memory.move_to_end(digest)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _read(self, key: dict[str, Any], shape: tuple[int, ...] | None) -> np.ndarray | None:
        path = self.path_for(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = json.loads(str(data["key"]))
                latent = np.asarray(data["latent"], dtype=np.float32)
                checksum = str(data["checksum"]) if "checksum" in data.files else None
        except Exception:  # unreadable or truncated entry: a miss, recomputed
            return self._discard(path, "unreadable")
        if stored_key != json.loads(json.dumps(key, sort_keys=True)):
            return self._discard(path, "written for another image or encoder")
        if checksum is None:
            return self._discard(path, "from an older version (no checksum)")
        if checksum != _checksum(latent):
            return self._discard(
                path, "damaged or edited (its content does not match its checksum)"
            )
        if shape is not None and tuple(latent.shape) != tuple(shape):
            return self._discard(path, f"of shape {latent.shape}, not {tuple(shape)}")
        try:
            os.utime(path)
        except OSError:
            pass
        return latent

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(f"latent cache entry {path.name} is {why}; recomputing it", stacklevel=4)
        path.unlink(missing_ok=True)
        return None
