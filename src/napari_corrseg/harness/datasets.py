"""Readers for the standard semantic-correspondence benchmarks, in their published layouts.

Every reader returns a list of `KeypointPair`: two image paths, the annotated keypoints
of both images as ``(row, col)`` pixel coordinates (the files store ``(x, y)``; we swap on
reading), and the length that PCK's ``alpha`` multiplies, with a word saying which
convention produced it. Keypoints marked missing (negative or NaN coordinates, as
PF-PASCAL does with ``-1``) are dropped from both images.

Layouts (``root`` is the folder the archive unpacks to):

* SPair-71k: ``PairAnnotation/{trn,val,test}/*.json`` with ``src_imname``, ``trg_imname``,
  ``src_kps``, ``trg_kps`` (``[[x, y], ...]``), ``src_bndbox``, ``trg_bndbox``
  (``[x_min, y_min, x_max, y_max]``) and ``category``; images in
  ``JPEGImages/<category>/<imname>``. Threshold: max side of the target bounding box.
* PF-WILLOW: ``test_pairs.csv`` with ``imageA, imageB, XA1..XA10, YA1..YA10, XB1..XB10,
  YB1..YB10``; image paths relative to ``root`` (or its parent, as the published CSV
  names them ``PF-WILLOW/...``). Threshold: max side of the bounding box of the target
  keypoints (the weakalign / HPF convention). Category: the image's folder name.
* PF-PASCAL: ``test_pairs_pf_pascal.csv`` (or any CSV given) with ``source_image,
  target_image, class, XA, YA, XB, YB``; each coordinate cell is a ``;``-separated list.
  Threshold: max side of the target image. Category: the PASCAL VOC class name.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorrsegError

__all__ = [
    "DATASETS",
    "DatasetError",
    "KeypointPair",
    "load_image",
    "read_dataset",
    "read_pf_pascal",
    "read_pf_willow",
    "read_spair",
]

#: PF-PASCAL's ``class`` column counts the PASCAL VOC classes from 1 in this order.
PASCAL_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class DatasetError(CorrsegError):
    """A benchmark dataset is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class KeypointPair:
    """One annotated image pair of a correspondence benchmark.

    Parameters
    ----------
    pair_id : str
        Name that identifies the pair in result tables.
    category : str
        Object category, used to group the results.
    source_path, target_path : Path
        Image files.
    source_points, target_points : numpy.ndarray
        ``(P, 2)`` float64 ``(row, col)`` pixel coordinates; row ``k`` of both is the
        same semantic keypoint.
    threshold_size : float
        Length in target pixels that PCK's ``alpha`` multiplies.
    threshold_kind : str
        Which length that is (``"target bbox"``, ``"target keypoint bbox"``,
        ``"target image"``), printed with the results.
    """

    pair_id: str
    category: str
    source_path: Path
    target_path: Path
    source_points: np.ndarray
    target_points: np.ndarray
    threshold_size: float
    threshold_kind: str

    @property
    def n_points(self) -> int:
        """Number of annotated keypoints."""
        return int(self.source_points.shape[0])


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB; raise DatasetError naming the file."""
    import imageio.v3 as iio

    try:
        image = np.asarray(iio.imread(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DatasetError(f"image {path} has shape {image.shape}; expected (H, W) or (H, W, 3)")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        scale = 255.0 / max(float(image.max()), 1.0)
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    return image


def _image_shape(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return int(height), int(width)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; check --root and the dataset layout")


def _points_from_xy(xs, ys, where: str) -> np.ndarray:
    """Stack x and y lists into ``(P, 2)`` (row, col); raise DatasetError on bad values."""
    try:
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{where}: keypoint coordinates are not numbers ({error})") from None
    if xs.shape != ys.shape or xs.ndim != 1:
        raise DatasetError(f"{where}: {xs.size} x values but {ys.size} y values")
    return np.stack([ys, xs], axis=1)


def _drop_missing(source: np.ndarray, target: np.ndarray, where: str):
    if source.shape != target.shape:
        raise DatasetError(
            f"{where}: {len(source)} source keypoints but {len(target)} target keypoints"
        )
    valid = np.isfinite(source).all(1) & np.isfinite(target).all(1)
    valid &= (source >= 0).all(1) & (target >= 0).all(1)
    return source[valid], target[valid]


def _limited(items: list, limit: int | None) -> list:
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of pairs, got {limit}")
        return items[:limit]
    return items


# -- SPair-71k -------------------------------------------------------------------------


def read_spair(root: str | Path, split: str = "test", limit: int | None = None):
    """Read SPair-71k pairs of one split.

    Parameters
    ----------
    root : str or Path
        Folder holding ``PairAnnotation/`` and ``JPEGImages/``.
    split : {"test", "val", "trn"}
        Which pair list to read.
    limit : int, optional
        Keep the first ``limit`` pairs (in file-name order).

    Returns
    -------
    list of KeypointPair
    """
    root = Path(root)
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        raise DatasetError(
            f"SPair-71k folder {folder} does not exist; --root must be the SPair-71k folder "
            "holding PairAnnotation/ and JPEGImages/"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DatasetError(f"SPair-71k folder {folder} holds no pair .json files")
    pairs = []
    for path in _limited(files, limit):
        try:
            data = json.loads(path.read_text())
            category = str(data["category"])
            source_name, target_name = data["src_imname"], data["trg_imname"]
            # (x, y) pairs -> (row, col)
            source = np.asarray(data["src_kps"], dtype=np.float64).reshape(-1, 2)[:, ::-1]
            target = np.asarray(data["trg_kps"], dtype=np.float64).reshape(-1, 2)[:, ::-1]
            x0, y0, x1, y1 = (float(v) for v in data["trg_bndbox"])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"SPair-71k pair file {path} is not valid JSON: {error}") from None
        except KeyError as error:
            raise DatasetError(f"SPair-71k pair file {path} has no field {error}") from None
        except (TypeError, ValueError) as error:
            raise DatasetError(f"SPair-71k pair file {path} is malformed: {error}") from None
        source, target = _drop_missing(source, target, str(path))
        source_path = root / "JPEGImages" / category / source_name
        target_path = root / "JPEGImages" / category / target_name
        _require_file(source_path, f"image named in {path.name}:")
        _require_file(target_path, f"image named in {path.name}:")
        pairs.append(
            KeypointPair(
                pair_id=path.stem,
                category=category,
                source_path=source_path,
                target_path=target_path,
                source_points=source,
                target_points=target,
                threshold_size=max(x1 - x0, y1 - y0),
                threshold_kind="target bbox",
            )
        )
    return pairs


# -- PF-WILLOW and PF-PASCAL (CSV pair lists) ------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    _require_file(path, "pair list")
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read pair list {path}: {error}") from None
    if len(rows) < 2:
        raise DatasetError(f"pair list {path} has no pairs below its header")
    return [name.strip() for name in rows[0]], rows[1:]


def _resolve_image(root: Path, name: str, csv_path: Path, line: int) -> Path:
    """Find an image named in a CSV: relative to root, its parent, or without the first
    path component (the published CSVs prefix the dataset folder's own name)."""
    relative = Path(name.strip())
    candidates = [root / relative, root.parent / relative]
    if len(relative.parts) > 1:
        candidates.append(root / Path(*relative.parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"image {name!r} named on line {line} of {csv_path} was not found under {root}"
    )


def read_pf_willow(
    root: str | Path, limit: int | None = None, csv_name: str = "test_pairs.csv"
) -> list[KeypointPair]:
    """Read PF-WILLOW pairs from ``root/test_pairs.csv``.

    The threshold is the max side of the bounding box of the target keypoints.
    """
    root = Path(root)
    path = root / csv_name
    _, rows = _read_csv(path)
    pairs = []
    for offset, row in enumerate(_limited(rows, limit)):
        line = offset + 2
        where = f"line {line} of {path}"
        if len(row) < 6 or (len(row) - 2) % 4:
            raise DatasetError(
                f"{where} has {len(row)} columns; expected imageA, imageB and XA.., YA.., "
                "XB.., YB.. (four equal groups)"
            )
        n_points = (len(row) - 2) // 4
        values = row[2:]
        groups = [values[k * n_points : (k + 1) * n_points] for k in range(4)]
        source = _points_from_xy(groups[0], groups[1], where)
        target = _points_from_xy(groups[2], groups[3], where)
        source, target = _drop_missing(source, target, where)
        if len(target) == 0:
            raise DatasetError(f"{where} has no valid keypoints")
        source_path = _resolve_image(root, row[0], path, line)
        target_path = _resolve_image(root, row[1], path, line)
        extent = target.max(0) - target.min(0)
        pairs.append(
            KeypointPair(
                pair_id=f"{offset:05d}",
                category=source_path.parent.name,
                source_path=source_path,
                target_path=target_path,
                source_points=source,
                target_points=target,
                threshold_size=float(extent.max()),
                threshold_kind="target keypoint bbox",
            )
        )
    return pairs


def read_pf_pascal(
    root: str | Path, limit: int | None = None, csv_name: str = "test_pairs_pf_pascal.csv"
) -> list[KeypointPair]:
    """Read PF-PASCAL pairs from ``root/test_pairs_pf_pascal.csv``.

    The threshold is the max side of the target image (read from its header).
    """
    root = Path(root)
    path = root / csv_name
    header, rows = _read_csv(path)
    wanted = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DatasetError(
            f"pair list {path} lacks the column(s) {', '.join(missing)}; expected the header "
            + ",".join(wanted)
        )
    column = {name: header.index(name) for name in wanted}
    pairs = []
    for offset, row in enumerate(_limited(rows, limit)):
        line = offset + 2
        where = f"line {line} of {path}"
        if len(row) < len(header):
            raise DatasetError(f"{where} has {len(row)} columns; the header has {len(header)}")

        def cell(name: str, row=row) -> list[str]:
            return [v for v in row[column[name]].split(";") if v.strip()]

        source = _points_from_xy(cell("XA"), cell("YA"), where)
        target = _points_from_xy(cell("XB"), cell("YB"), where)
        source, target = _drop_missing(source, target, where)
        try:
            class_id = int(float(row[column["class"]]))
            category = PASCAL_CLASSES[class_id - 1]
        except (ValueError, IndexError):
            category = row[column["class"]].strip()
        source_path = _resolve_image(root, row[column["source_image"]], path, line)
        target_path = _resolve_image(root, row[column["target_image"]], path, line)
        pairs.append(
            KeypointPair(
                pair_id=f"{offset:05d}",
                category=category,
                source_path=source_path,
                target_path=target_path,
                source_points=source,
                target_points=target,
                threshold_size=float(max(_image_shape(target_path))),
                threshold_kind="target image",
            )
        )
    return pairs


#: Dataset names accepted by `read_dataset` and the command line.
DATASETS = ("spair", "pf-willow", "pf-pascal")


def read_dataset(
    name: str, root: str | Path, limit: int | None = None, split: str = "test"
) -> list[KeypointPair]:
    """Read a benchmark by name: ``"spair"``, ``"pf-willow"`` or ``"pf-pascal"``."""
    if name == "spair":
        return read_spair(root, split=split, limit=limit)
    if name == "pf-willow":
        return read_pf_willow(root, limit=limit)
    if name == "pf-pascal":
        return read_pf_pascal(root, limit=limit)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
