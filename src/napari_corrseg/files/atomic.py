"""Atomic file writes: a file appears under its real name only when it is complete.

Every file is first written to a hidden temporary file in the destination folder
(``.NAME.<random>.partial``) and moved into place with `os.replace`, which is atomic on
one file system: an interrupted run leaves at most a ``.partial`` file, never a
complete-looking result. The temporary file is created with mode ``0o666`` minus the
process umask (as ``open()`` would), so results are as readable as any other file the
user writes; `tempfile.mkstemp` would make them private (``0o600``).

numpy, tifffile and the standard library only.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_npz",
    "write_points_csv",
    "write_tiff",
]

PARTIAL_SUFFIX = ".partial"


def _replace(source: str | Path, destination: str | Path) -> None:
    """`os.replace`, the one call that makes a written file visible (tests wrap it to
    kill the process at a chosen write)."""
    os.replace(source, destination)


def _new_temporary(path: Path) -> Path:
    """Create an empty hidden file beside ``path``; the umask applies to its mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:
            handle = os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return candidate
    raise FileExistsError(f"cannot create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    If the body raises (or the process dies), ``path`` is untouched and the temporary
    file is removed (or, after a hard kill, left as a hidden ``.partial`` file). The
    file gets the mode the umask allows (``0o666 & ~umask``).
    """
    path = Path(path)
    temporary = _new_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        _replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def strict_json(value: Any) -> Any:
    """NaN and infinities become null (strict JSON has no NaN); numpy to Python; any
    other object (a Path, a device) becomes its ``str``."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented, strict JSON (NaN and inf become null,
    objects JSON lacks become strings)."""
    text = json.dumps(strict_json(data), indent=2, allow_nan=False)
    return write_bytes(path, (text + "\n").encode())


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Atomically write plain numeric arrays to ``.npz`` (never pickled)."""
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buffer.getvalue())


def write_tiff(path: str | Path, array: np.ndarray) -> Path:
    """Atomically write a 2-D array as a one-page TIFF."""
    import tifffile

    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(array))
    return write_bytes(path, buffer.getvalue())


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Atomically write a UTF-8 CSV table; floats keep 6 significant digits."""
    text = _io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return write_bytes(path, text.getvalue().encode())


def write_points_csv(
    path: str | Path, points: np.ndarray, properties: dict[str, np.ndarray] | None = None
) -> Path:
    """Write ``(P, 2)`` pixel points as a CSV that napari's Points reader opens.

    Columns: ``index, axis-0, axis-1`` (row, col) and one column per property (numbers
    or text, e.g. the ``name`` column of the keypoints a transfer started from).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    properties = properties or {}
    columns = {name: np.asarray(values).reshape(-1) for name, values in properties.items()}
    for name, values in columns.items():
        if len(values) != len(points):
            raise ValueError(
                f"property {name!r} has {len(values)} values for {len(points)} points"
            )
    header = ["index", "axis-0", "axis-1", *columns]
    rows = []
    for k, (row, col) in enumerate(points):
        values = [_scalar(columns[name][k]) for name in columns]
        rows.append([k, float(row), float(col), *values])
    return write_csv(path, header, rows)


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
