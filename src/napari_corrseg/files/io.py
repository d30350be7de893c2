"""Reading images and keypoints, and writing results: the one place to import them from.

* Writing (`napari_corrseg.files.atomic`): every file is written to a hidden temporary
  file in its folder and renamed into place when complete, with the user's umask.
* Result folders (`napari_corrseg.files.output_folder`): `output_transaction` makes a
  run's folder hold the whole earlier run, the whole new run, or say "in progress";
  `check_output_folder` tells which.
* Images (`napari_corrseg.files.readers`): `read_image` reads PNG, JPEG, BMP and TIFF
  exactly (16-bit colour at 16 bits, grey + alpha) and refuses stacks by their page
  count, never by a shape guess.
* Keypoints (`napari_corrseg.files.points`): `read_points_table` reads napari Points CSV,
  ``row,col`` / ``y,x`` tables and headerless ``row,col`` or ``index,row,col``, in any
  common encoding and delimiter, keeping extra columns such as ``name``;
  `read_points_csv` returns only the ``(P, 2)`` positions.

Points are written as napari Points CSV; labels as TIFF; maps as ``.npz`` (readable
with ``allow_pickle=False``); figures as PNG (matplotlib, Agg).

numpy, Pillow, tifffile and matplotlib only; imports neither torch nor Qt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .atomic import (
    atomic_path,
    write_bytes,
    write_csv,
    write_json,
    write_npz,
    write_points_csv,
    write_tiff,
)
from .folder_check import FolderCheck, check_output_folder
from .output_folder import (
    RUN_FILE,
    CommitReport,
    OutputTransaction,
    output_transaction,
    prepare_output_dir,
)
from .points import PointsTable, read_points_csv, read_points_table
from .readers import IMAGE_SUFFIXES, read_image, read_label_image

__all__ = [
    "IMAGE_SUFFIXES",
    "RUN_FILE",
    "CommitReport",
    "FolderCheck",
    "OutputTransaction",
    "PointsTable",
    "atomic_path",
    "check_output_folder",
    "display_rgb",
    "file_sha256",
    "output_transaction",
    "prepare_output_dir",
    "read_image",
    "read_label_image",
    "read_points_csv",
    "read_points_table",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_npz",
    "write_points_csv",
    "write_tiff",
]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
