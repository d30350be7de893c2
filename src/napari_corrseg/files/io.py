"""Reading images and keypoints, and writing results atomically.

Every file is first written to a hidden temporary file in the destination folder
(``.NAME.<random>.partial``) and moved into place with `os.replace`, which is atomic on
one file system: an interrupted run leaves at most a ``.partial`` file, never a
complete-looking result.

Formats: images are read from PNG, JPEG and TIFF (8- or 16-bit, grey or colour);
keypoints from napari Points CSV (``index,axis-0,axis-1``) or a plain ``row,col``
table; points are written as napari Points CSV; labels as TIFF; maps as ``.npz``
(readable with ``allow_pickle=False``); figures as PNG (matplotlib, Agg).

numpy, imageio, tifffile and matplotlib only; imports neither torch nor Qt.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io as _io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.images import prepare_image
from ..errors import InputImageError, OutputError

__all__ = [
    "atomic_path",
    "display_rgb",
    "file_sha256",
    "prepare_output_dir",
    "read_image",
    "read_points_csv",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_npz",
    "write_points_csv",
    "write_tiff",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RUN_FILE = "run.json"


# -- atomic writes ---------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    If the body raises (or the process dies), ``path`` is untouched and the temporary
    file is removed (or, after a hard kill, left as a hidden ``.partial`` file).
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".partial", dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def _strict_json(value: Any) -> Any:
    """NaN and infinities become null (strict JSON has no NaN); numpy to Python; any
    other object (a Path, a device) becomes its ``str``."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _strict_json(value.tolist())
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
    text = json.dumps(_strict_json(data), indent=2, allow_nan=False)
    return write_bytes(path, (text + "\n").encode())


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Atomically write plain numeric arrays to ``.npz`` (never pickled)."""
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buffer.getvalue())


def write_tiff(path: str | Path, array: np.ndarray) -> Path:
    """Atomically write an array as TIFF."""
    import tifffile

    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(array))
    return write_bytes(path, buffer.getvalue())


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Atomically write a CSV table; floats keep 6 significant digits."""
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

    Columns: ``index, axis-0, axis-1`` (row, col) and one column per property.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    properties = properties or {}
    columns = {name: np.asarray(values).reshape(-1) for name, values in properties.items()}
    header = ["index", "axis-0", "axis-1", *columns]
    rows = []
    for k, (row, col) in enumerate(points):
        values = [_scalar(columns[name][k]) for name in columns]
        rows.append([k, float(row), float(col), *values])
    return write_csv(path, header, rows)


def _scalar(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return value


# -- output folders --------------------------------------------------------------------


def prepare_output_dir(path: str | Path, *, overwrite: bool = False) -> tuple[Path, bool]:
    """Create or check the output folder; refuse to overwrite a user's files silently.

    Rules: a missing or empty folder is used; a folder holding a previous
    napari-corrseg result (a ``run.json`` with ``"tool": "napari-corrseg"``) is reused
    and its files of the same name replaced; any other non-empty folder is refused
    unless ``overwrite`` is True.

    Returns
    -------
    (Path, bool)
        The folder and whether it already held files (so the caller can say so).

    Raises
    ------
    OutputError
        If the folder cannot be created or written, or would overwrite other files.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create output folder {path}: {error.strerror or error}"
        ) from None
    existing = [p for p in path.iterdir() if not p.name.startswith(".")]
    if existing and not overwrite and not _is_previous_run(path):
        raise OutputError(
            f"output folder {path} is not empty and does not hold napari-corrseg results; "
            "choose another --out or pass --overwrite"
        )
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputError(f"cannot write to {path}: {error.strerror or error}") from None
    return path, bool(existing)


def _is_previous_run(path: Path) -> bool:
    try:
        return json.loads((path / RUN_FILE).read_text()).get("tool") == "napari-corrseg"
    except (OSError, ValueError, AttributeError):
        return False


# -- reading ---------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or TIFF (8/16-bit, grey, RGB or RGBA) as a numpy array.

    Raises
    ------
    InputImageError
        If the file is missing, unreadable, or not a single 2-D image.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputImageError(f"image {path} does not exist; check the path")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            image = iio.imread(path)
    except Exception as error:  # any decoder failure is the user's file, not our bug
        raise InputImageError(
            f"cannot read image {path} ({type(error).__name__}: {error}); "
            "napari-corrseg reads PNG, JPEG and TIFF"
        ) from None
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # channel-first TIFF
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise InputImageError(
            f"image {path} has shape {image.shape}; expected one 2-D grey or RGB(A) image "
            "(save one plane of a stack or time series as its own file)"
        )
    if image.dtype.kind not in "uif" and image.dtype != bool:
        raise InputImageError(f"image {path} has unsupported pixel type {image.dtype}")
    # Fail on NaN, tiny or huge images now, before a model is loaded for nothing.
    prepare_image(image, name=f"image {path}")
    return image


def read_points_csv(path: str | Path) -> np.ndarray:
    """Read keypoints ``(P, 2)`` ``(row, col)`` in pixels from a CSV file.

    Accepts napari Points CSV (``index,axis-0,axis-1,...``; for more axes the last two
    are used), a table with ``row,col`` or ``y,x`` columns, or two headerless columns.

    Raises
    ------
    InputImageError
        If the file is missing or holds no readable points.
    """
    path = Path(path).expanduser()
    try:
        with open(path, newline="") as handle:
            rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    except OSError as error:
        raise InputImageError(
            f"cannot read points file {path}: {error.strerror or error}"
        ) from None
    if not rows:
        raise InputImageError(f"points file {path} is empty; it needs row,col per point")
    header = [c.strip().lower() for c in rows[0]]
    try:
        if _is_number_row(header):
            columns, body = [0, 1], rows
        else:
            body = rows[1:]
            axes = [c for c in header if c.startswith("axis-")]
            if len(axes) >= 2:
                columns = [header.index(axes[-2]), header.index(axes[-1])]
            elif {"row", "col"} <= set(header):
                columns = [header.index("row"), header.index("col")]
            elif {"y", "x"} <= set(header):
                columns = [header.index("y"), header.index("x")]
            else:
                raise ValueError(f"no axis-0/axis-1, row/col or y/x columns in {rows[0]}")
        points = np.array([[float(r[c]) for c in columns] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as error:
        raise InputImageError(
            f"cannot read points from {path}: {error}; save a napari Points layer as CSV "
            "or write row,col columns"
        ) from None
    if len(points) == 0 or not np.isfinite(points).all():
        raise InputImageError(f"points file {path} holds no finite points")
    return points.reshape(-1, 2)


def _is_number_row(cells: Sequence[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 version of any image, for figures.

    8-bit images are kept; other types are stretched between their 0.5 and 99.5
    percentiles so that 16-bit microscopy images are visible.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        values = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0, 1)
        image = (values * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image
