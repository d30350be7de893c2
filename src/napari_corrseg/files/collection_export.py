"""Write collection results: one file per image plus a summary ranked for review.

Layout of a collection result folder (see ``docs/cli.md``):

* ``labels/<image>.tif``: per image, its label image (co-segmentation ids, or labels
  carried from the annotated images), the size of the image;
* ``labels/<image>_confidence.tif``: float32 confidence of carried labels;
* ``points/<image>.csv``: per image, carried keypoints as napari Points CSV (``index,
  axis-0, axis-1``) with ``keypoint_id``, ``confidence``, ``cycle_error``, ``source``;
* ``summary.csv``: one row per image, **least confident first** (review from the top);
* ``segments.json`` (co-segmentation): the segment table.

Every file is written atomically (`napari_corrseg.files.io`). numpy and tifffile only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .export import carried_columns
from .io import write_csv, write_json, write_points_csv, write_tiff

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.collection_results import (
        CollectionCosegmentationResult,
        CollectionTransferResult,
    )

__all__ = ["SUMMARY_FILE", "write_collection_coseg", "write_collection_transfer"]

SUMMARY_FILE = "summary.csv"


def _labels_dtype(labels: np.ndarray) -> np.dtype:
    top = int(np.max(labels, initial=0))
    return np.dtype(np.uint16 if top < 2**16 else np.uint32)


def _ranked(ranking, n_images: int, fallback: dict[int, float]) -> list[tuple[int, float]]:
    """The given ranking, completed by ``fallback`` scores, least confident first."""
    ranked = [(int(i), float(s)) for i, s in ranking]
    seen = {i for i, _ in ranked}
    rest = sorted(
        ((i, fallback[i]) for i in range(n_images) if i in fallback and i not in seen),
        key=lambda item: item[1],
    )
    return sorted(ranked + rest, key=lambda item: (np.nan_to_num(item[1], nan=-1.0), item[0]))


def write_collection_coseg(folder: Path, result: CollectionCosegmentationResult) -> list[str]:
    """Write per-image label TIFFs, the segment table and the ranked summary.

    Returns the written paths, relative to ``folder``.
    """
    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    files = {}
    for index, (name, labels) in enumerate(zip(result.names, result.labels, strict=True)):
        relative = f"labels/{name}.tif"
        write_tiff(folder / relative, np.asarray(labels).astype(_labels_dtype(labels)))
        files[index] = relative
        written.append(relative)
    shared = {int(s["id"]) for s in result.segments if s.get("shared")}
    rows = []
    for rank, (index, score) in enumerate(_ranked(result.ranking, len(result.names), {}), 1):
        ids = set(np.unique(result.labels_grid[index]).tolist()) - {0}
        rows.append(
            [rank, result.names[index], float(score), len(ids), len(ids & shared), files[index]]
        )
    header = ["rank", "image", "score", "segments", "shared_segments", "labels_file"]
    write_csv(folder / SUMMARY_FILE, header, rows)
    write_json(
        folder / "segments.json",
        {
            "threshold": result.threshold,
            "segments": result.segments,
            "unmatched": result.unmatched,
            "images": list(result.names),
        },
    )
    return [*written, SUMMARY_FILE, "segments.json"]


def write_collection_transfer(
    folder: Path,
    result: CollectionTransferResult,
    *,
    columns: dict[str, np.ndarray] | None = None,
    annotations: dict[int, np.ndarray] | None = None,
    status: dict[int, str] | None = None,
) -> list[str]:
    """Write per-image keypoint CSVs and label TIFFs, and the ranked summary.

    ``columns`` are the keypoint table's own columns (`files.points.PointsTable.columns`,
    e.g. ``name``), one value per keypoint: every keypoint CSV carries them after
    ``keypoint_id``, as `files.export.write_transfer` does. ``annotations`` are the
    keypoints of the annotated images as read (``{image: (P, 2) pixels}``, NaN rows where
    a keypoint is not marked): each gets its own CSV too (its marked rows, confidence 1,
    its own name as source), so the folder holds one keypoint file per image. ``status``
    (``{image: text}``, e.g. the review state the napari widget keeps) adds a ``status``
    column to the summary, which then also lists the images with a status but no file (a
    rejected proposal). Returns the written paths, relative to ``folder``.
    """
    folder = Path(folder)
    names = result.names
    carried = carried_columns(columns)
    written, files = [], {}
    if result.points or annotations:
        (folder / "points").mkdir(parents=True, exist_ok=True)
    for image, given in sorted((annotations or {}).items()):
        relative = f"points/{names[image]}.csv"
        given = np.asarray(given, dtype=np.float64).reshape(-1, 2)
        marked = np.isfinite(given).all(axis=1)  # rows left empty: not visible there
        write_points_csv(
            folder / relative,
            given[marked],
            {
                "keypoint_id": np.flatnonzero(marked),
                **{name: values[marked] for name, values in carried.items()},
                "confidence": np.ones(int(marked.sum())),
                "cycle_error": np.zeros(int(marked.sum())),
                "source": np.full(int(marked.sum()), names[image], dtype=object),
            },
        )
        written.append(relative)
    for target, moved in sorted(result.points.items()):
        relative = f"points/{names[target]}.csv"
        source = [names[s] if 0 <= s < len(names) else "" for s in moved.source.tolist()]
        write_points_csv(
            folder / relative,
            moved.points,
            {
                "keypoint_id": np.arange(len(moved.points)),
                **carried,
                "confidence": moved.confidence,
                "cycle_error": moved.cycle_error,
                "source": np.asarray(source, dtype=object),
            },
        )
        files.setdefault(target, {})["points"] = relative
        written.append(relative)
    if result.labels:
        (folder / "labels").mkdir(parents=True, exist_ok=True)
    for target, proposal in sorted(result.labels.items()):
        relative = f"labels/{names[target]}.tif"
        write_tiff(folder / relative, proposal.labels.astype(_labels_dtype(proposal.labels)))
        write_tiff(
            folder / f"labels/{names[target]}_confidence.tif",
            proposal.confidence.astype(np.float32),
        )
        files.setdefault(target, {})["labels"] = relative
        written += [relative, f"labels/{names[target]}_confidence.tif"]
    status = dict(status or {})
    listed = set(files) | set(status)
    mean_confidence = {}
    for target in listed:
        values = []
        if target in result.points:
            values.append(np.nanmean(result.points[target].confidence))
        if target in result.labels:
            values.append(float(np.mean(result.labels[target].confidence_grid)))
        mean_confidence[target] = float(np.mean(values)) if values else float("nan")
    rows = []
    ranking = [
        (i, s) for i, s in _ranked(result.ranking, len(names), mean_confidence) if i in listed
    ]
    for rank, (target, score) in enumerate(ranking, 1):
        points = result.points.get(target)
        row = [
            rank,
            names[target],
            float(score),
            mean_confidence[target],
            float(np.nanmin(points.confidence)) if points is not None else "",
            len(points.points) if points is not None else 0,
            files.get(target, {}).get("points", ""),
            files.get(target, {}).get("labels", ""),
        ]
        rows.append([*row, status.get(target, "")] if status else row)
    header = [
        "rank",
        "image",
        "score",
        "mean_confidence",
        "min_confidence",
        "points",
        "points_file",
        "labels_file",
    ]
    if status:
        header.append("status")
    write_csv(folder / SUMMARY_FILE, header, rows)
    return [*written, SUMMARY_FILE]
