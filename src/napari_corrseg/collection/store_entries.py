"""What one token store entry is: settings, content keys, checksums, the zarr group.

The pieces of `napari_corrseg.collection.store.TokenStore` that do not need the store:
`store_settings` (what besides the image determines an entry), `image_key` (the image's
content hash), `content_checksum` (verified on every read), `tokens_for_storage` (the
checks and the float16 cast before a write), `write_group` / `read_group` (one zarr v3
group per image), and the errors.

numpy and zarr only; imports neither torch nor Qt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..core.images import prepare_image
from ..core.maps import ImageGeometry
from ..errors import CorrsegError

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "HOST",
    "KEY_PATTERN",
    "MARKER",
    "STORE_FORMAT_VERSION",
    "DamagedEntryError",
    "StoreError",
    "canonical_json",
    "content_checksum",
    "image_key",
    "read_group",
    "stale_partial",
    "store_settings",
    "tokens_for_storage",
    "write_group",
    "write_json_atomic",
]

#: Bump when the meaning or layout of a stored entry changes.
STORE_FORMAT_VERSION = 1
MARKER = "napari-corrseg-store.json"
#: Bytes of an entry beyond its arrays: three small zarr.json files (apparent size).
ENTRY_OVERHEAD_BYTES = 1500
KEY_PATTERN = re.compile(r"[0-9a-f]{16,64}")
HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


class StoreError(CorrsegError):
    """The store folder cannot be used (not a store, unwritable, wrong settings)."""


class DamagedEntryError(StoreError):
    """A stored entry failed its checksum or cannot be read; it must be recomputed."""

    def __init__(self, key: str, reason: str):
        super().__init__(
            f"token store entry {key[:12]} is damaged ({reason}); run the command again: "
            "damaged entries are recomputed"
        )
        self.key = key
        self.reason = reason

    def __reduce__(self):  # picklable with both arguments (Dask sends errors back)
        return (type(self), (self.key, self.reason))


def canonical_json(value: Any) -> Any:
    """JSON-stable form: tuples to lists, numpy scalars to Python, keys sorted."""
    return json.loads(json.dumps(value, sort_keys=True, default=_plain_scalar))


def _plain_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"store settings must be JSON-able, got {type(value).__name__}")


def store_settings(
    identity: dict[str, Any],
    image_size: int,
    *,
    layers: Any = "auto",
    timestep: int = 261,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything besides the image that determines an entry, as a JSON-able dict.

    Parameters
    ----------
    identity : dict
        ``engine.identity``: model id and revision or file hash, dtype, encoder.
    image_size : int
        The model's input side in pixels.
    layers : "auto", int or list
        The layer choice as given (``"auto"``, a grid side, or names): with the model
        identity it fixes the layers, so the model need not be loaded to name them.
    timestep, seed : int
        Noise timestep and seed.

    Returns
    -------
    dict
    """
    if isinstance(layers, tuple):
        layers = list(layers)
    return canonical_json(
        {
            "model": dict(identity),
            "image_size": int(image_size),
            "layers": layers,
            "timestep": int(timestep),
            "seed": int(seed),
            "prompt": "",
            "queries": "unscaled",
            "dtype": "float16",
            "store_format_version": STORE_FORMAT_VERSION,
        }
    )


def image_key(image: np.ndarray) -> str:
    """Content key of an image: SHA-256 of its prepared pixels (what the engine sees).

    Two arrays that prepare to the same pixels (e.g. the same picture as uint8 and as
    float in [0, 1]) share a key; any change of a pixel gives a new one.
    """
    prepared = np.ascontiguousarray(prepare_image(image))
    digest = hashlib.sha256(f"{prepared.dtype.str}{prepared.shape}".encode())
    digest.update(prepared.tobytes())
    return digest.hexdigest()


def content_checksum(queries: np.ndarray, keys: np.ndarray, geometry: dict[str, Any]) -> str:
    digest = hashlib.sha256(b"napari-corrseg tokens v1\0")
    digest.update(json.dumps([list(queries.shape), queries.dtype.str]).encode())
    digest.update(np.ascontiguousarray(queries).tobytes())
    digest.update(np.ascontiguousarray(keys).tobytes())
    digest.update(json.dumps(geometry, sort_keys=True).encode())
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(partial, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tokens_for_storage(queries, keys, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Checked float16 ``(L, H, N, d)`` queries and keys (``(H, N, d)`` becomes L = 1)."""
    queries, keys = np.asarray(queries), np.asarray(keys)
    if queries.ndim == 3:
        queries, keys = queries[None], keys[None]
    if queries.ndim != 4 or queries.shape != keys.shape:
        raise ValueError(
            f"queries and keys must both be (L, H, N, d), got {queries.shape} and {keys.shape}"
        )
    n_tokens = int(geometry.grid[0]) * int(geometry.grid[1])
    if queries.shape[2] != n_tokens:
        raise ValueError(
            f"queries hold {queries.shape[2]} tokens but the grid {tuple(geometry.grid)} "
            f"has {n_tokens}"
        )
    with np.errstate(over="ignore"):  # reported below, as a ValueError
        queries16, keys16 = queries.astype(np.float16), keys.astype(np.float16)
    if not (np.isfinite(queries16).all() and np.isfinite(keys16).all()):
        raise ValueError("queries or keys are not finite in float16 (NaN or beyond 65504)")
    return queries16, keys16


def write_group(folder: Path, queries16: np.ndarray, keys16: np.ndarray, attrs: dict) -> None:
    """Write one entry's zarr v3 group (one chunk per layer, uncompressed) into ``folder``."""
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(store=LocalStore(folder), mode="w", zarr_format=3)
    chunks = (1, *queries16.shape[1:])  # one chunk per layer
    group.create_array("queries", data=queries16, chunks=chunks, compressors=None)
    group.create_array("keys", data=keys16, chunks=chunks, compressors=None)
    # attributes (with the checksum) last: zarr.json of the group is rewritten, so an
    # entry is only ever renamed into place with its checksum in it
    group.attrs.update(attrs)


def read_group(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(queries, keys)`` arrays of one entry's zarr group (any failure raises)."""
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(store=LocalStore(folder, read_only=True), mode="r", zarr_format=3)
    return np.asarray(group["queries"][...]), np.asarray(group["keys"][...])


def stale_partial(entry: Path, now: float, max_age_s: float) -> bool:
    """Whether a hidden folder is left over: its writer ran on this host and is gone, it is
    an entry set aside for removal, or it is older than ``max_age_s``."""
    name = entry.name
    if not (name.startswith(".") and name.endswith((".partial", ".removed"))):
        return False
    if name.endswith(".removed"):
        return True
    parts = name[1:].split(".")
    try:
        age = now - entry.stat().st_mtime
    except OSError:
        return False
    dead = (
        len(parts) == 5
        and parts[1] == HOST
        and parts[2].isdigit()
        and not pid_alive(int(parts[2]))
    )
    return dead or age > max_age_s


def default_store_dir() -> Path:
    """``<napari-corrseg cache dir>/tokens`` (``$NAPARI_CORRSEG_CACHE_DIR`` respected): the
    store the collection commands and the widgets use unless told otherwise."""
    from ..files.cache import default_cache_dir

    return default_cache_dir() / "tokens"


def store_usage(root: str | Path) -> tuple[int, int]:
    """``(entries, bytes)`` of a token store folder, over every settings namespace;
    ``(0, 0)`` for a folder that is missing or not a store."""
    root = Path(root)
    if not (root / MARKER).is_file():
        return 0, 0
    entries = 0
    size = 0
    for namespace in root.glob("s-*"):
        for entry in namespace.glob("*/*"):
            if entry.is_dir() and KEY_PATTERN.fullmatch(entry.name):
                entries += 1
        size += sum(f.stat().st_size for f in namespace.rglob("*") if f.is_file())
    return entries, size


def clear_store(root: str | Path) -> int:
    """Delete a token store folder (only one marked as a store); return its entries."""
    root = Path(root)
    if not (root / MARKER).is_file():
        return 0
    entries, _ = store_usage(root)
    shutil.rmtree(root)
    return entries
