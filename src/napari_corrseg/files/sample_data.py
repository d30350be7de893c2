"""The shipped sample image pair (see ``data/README.md`` for origin and licence).

`load_sample_pair` returns the arrays, `sample_keypoints` the annotated keypoints
(napari's File > Open Sample uses ``_sample.py``). numpy and imageio only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "SAMPLE_FILES",
    "load_sample_pair",
    "sample_keypoints",
    "sample_paths",
]

SAMPLE_FILES = ("sample_a.png", "sample_b.png")


def sample_paths() -> list[Path]:
    """Paths of the two shipped sample images."""
    folder = resources.files("napari_corrseg") / "data"
    return [Path(str(folder / name)) for name in SAMPLE_FILES]


def load_sample_pair() -> list[np.ndarray]:
    """The two sample images as ``(256, 256, 3)`` uint8 arrays.

    Returns
    -------
    list of numpy.ndarray
        The same toy creature in two poses, colours and backgrounds.
    """
    from .io import read_image

    return [read_image(path) for path in sample_paths()]


def sample_keypoints() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Eight named keypoints of each sample image, row ``k`` of A matching row ``k`` of B.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, list of str)
        ``(8, 2)`` pixel ``(row, col)`` keypoints of A and of B, and their names.
    """
    import csv

    tables = []
    for path in sample_paths():
        keypoint_file = path.with_name(path.stem + "_keypoints.csv")
        with open(keypoint_file, newline="") as handle:
            tables.append(list(csv.DictReader(handle)))
    points = [
        np.array([[float(r["axis-0"]), float(r["axis-1"])] for r in rows]) for rows in tables
    ]
    return points[0], points[1], [r["name"] for r in tables[0]]
