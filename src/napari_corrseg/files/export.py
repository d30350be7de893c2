"""Write pipeline results to a folder: CSV, TIFF, ``.npz``, PNG and ``run.json``.

Used by the command line (and usable by any script). Layout of one result folder is
documented in ``docs/cli.md``. Every file is written atomically (`napari_corrseg.files.io`);
write into an `napari_corrseg.files.io.output_transaction`'s staging folder and commit
it with `run_record` so that the folder holds the whole run or says it does not. Pass
``tiny=True`` when the tiny random model made the result: every figure then says so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..core.maps import AttentionMaps
from ..tasks.pipeline import CosegmentationResult, KeypointTransfer, PairResult
from . import figures as _figures
from .io import file_sha256, write_csv, write_json, write_npz, write_points_csv
from .io import write_tiff as _write_tiff

__all__ = [
    "MATCH_COLUMNS",
    "run_record",
    "write_coseg",
    "write_pair",
    "write_transfer",
]

#: Columns of ``matches.csv`` (pixel coordinates, (row, col)).
MATCH_COLUMNS = (
    "match_id",
    "source_row",
    "source_col",
    "target_row",
    "target_col",
    "confidence",
    "cycle_error",
    "entropy",
)
_METRIC_UNITS = {
    "cycle_error": "cycle error (grid cells)",
    "entropy": "inverse-mapping entropy (nats)",
    "density": "mapping density (sources per token)",
    "nims": "NIMS",
}
_PACKAGES = ("numpy", "scipy", "torch", "diffusers", "transformers", "napari", "matplotlib")


def _notice(tiny: bool) -> str | None:
    return _figures.TINY_NOTICE if tiny else None


def _labels_dtype(labels: np.ndarray) -> np.dtype:
    top = int(labels.max(initial=0))
    return np.dtype(np.uint16 if top < 2**16 else np.uint32)


def write_pair(
    folder: Path,
    result: PairResult,
    source_image: np.ndarray,
    target_image: np.ndarray,
    *,
    tiny: bool = False,
) -> Path:
    """Write one pair's matches (CSV), metric maps (``.npz`` + PNG) and match picture.

    Files: ``matches.csv`` (both sides, `MATCH_COLUMNS`), ``source_points.csv`` and
    ``target_points.csv`` (napari Points CSV, one row per match, same order),
    ``metrics.npz`` (grid maps with their napari scale/translate), one PNG per metric and
    ``matches.png``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(len(result))
    rows = [
        [
            int(k),
            *map(float, result.source_points[k]),
            *map(float, result.target_points[k]),
            float(result.confidence[k]),
            float(result.cycle_error[k]),
            float(result.entropy[k]),
        ]
        for k in ids
    ]
    write_csv(folder / "matches.csv", MATCH_COLUMNS, rows)
    properties = {
        "match_id": ids,
        "confidence": result.confidence,
        "cycle_error": result.cycle_error,
        "entropy": result.entropy,
    }
    write_points_csv(folder / "source_points.csv", result.source_points, properties)
    write_points_csv(folder / "target_points.csv", result.target_points, properties)
    arrays: dict[str, np.ndarray] = {"ims": np.float64(result.ims)}
    for name, metric in result.metrics.items():
        arrays[name] = metric.values
        arrays[f"{name}_image"] = np.int64(metric.image)
        arrays[f"{name}_scale"] = np.asarray(metric.geometry.scale)
        arrays[f"{name}_translate"] = np.asarray(metric.geometry.translate)
    write_npz(folder / "metrics.npz", **arrays)
    for name, metric in result.metrics.items():
        image = source_image if metric.image == result.source else target_image
        side = "source" if metric.image == result.source else "target"
        _figures.metric_picture(
            folder / f"{name}.png",
            image,
            metric.values,
            metric.geometry,
            title=f"{name} on the {side} image: {metric.description}",
            label=_METRIC_UNITS.get(name, name),
            notice=_notice(tiny),
        )
    _figures.match_picture(
        folder / "matches.png",
        source_image,
        target_image,
        result.source_points,
        result.target_points,
        result.confidence,
        notice=_notice(tiny),
    )
    return folder


def write_coseg(
    folder: Path,
    result: CosegmentationResult,
    images: Sequence[np.ndarray],
    *,
    tiny: bool = False,
) -> list[str]:
    """Write co-segmentation labels (TIFF per image), grid labels, segment table, picture.

    Returns the written file names (relative to ``folder``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, labels in enumerate(result.labels):
        name = f"labels_{k}.tif"
        _write_tiff(folder / name, labels.astype(_labels_dtype(labels)))
        names.append(name)
    write_npz(
        folder / "labels_grid.npz",
        **{f"labels_{k}": lab.astype(np.int64) for k, lab in enumerate(result.labels_grid)},
        **{f"scale_{k}": np.asarray(g.scale) for k, g in enumerate(result.geometries)},
        **{f"translate_{k}": np.asarray(g.translate) for k, g in enumerate(result.geometries)},
    )
    write_json(
        folder / "segments.json",
        {
            "threshold": result.threshold,
            "segments": result.segments,
            "unmatched": result.unmatched,
        },
    )
    _figures.labels_picture(
        folder / "labels.png",
        list(images),
        result.labels,
        title="co-segmentation: the same colour is the same segment id in every image",
        notice=_notice(tiny),
    )
    return [*names, "labels_grid.npz", "segments.json", "labels.png"]


def write_transfer(
    folder: Path,
    moved: KeypointTransfer,
    source_image: np.ndarray,
    target_image: np.ndarray,
    *,
    columns: dict[str, np.ndarray] | None = None,
    tiny: bool = False,
) -> Path:
    """Write transferred keypoints (napari Points CSV per side) and a picture.

    ``columns`` are the keypoint table's own columns (``PointsTable.columns``, e.g.
    ``name``), one value per keypoint: both CSVs carry them after ``keypoint_id``. A
    column named like one of ours gets the prefix ``input_``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(len(moved.confidence))
    carried = carried_columns(columns)
    write_points_csv(
        folder / "source_points.csv", moved.source_points, {"keypoint_id": ids, **carried}
    )
    write_points_csv(
        folder / "target_points.csv",
        moved.target_points,
        {
            "keypoint_id": ids,
            **carried,
            "confidence": moved.confidence,
            "cycle_error": moved.cycle_error,
        },
    )
    _figures.keypoints_picture(
        folder / "keypoints.png",
        source_image,
        target_image,
        moved.source_points,
        moved.target_points,
        moved.confidence,
        notice=_notice(tiny),
    )
    return folder


#: Columns the keypoint writers fill themselves; a table's own column of that name is
#: carried as ``input_<name>``.
OWN_KEYPOINT_COLUMNS = frozenset(
    {"keypoint_id", "confidence", "cycle_error", "source", "index", "axis-0", "axis-1"}
)


def carried_columns(columns: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """A keypoint table's own columns as written beside ours (renamed where they clash)."""
    return {
        (f"input_{name}" if name in OWN_KEYPOINT_COLUMNS else name): np.asarray(values)
        for name, values in (columns or {}).items()
    }


def _versions() -> dict[str, str]:
    found = {"napari-corrseg": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"_subcommand", "quiet", "command", "argv"}
    return {
        key: (
            str(value)
            if isinstance(value, Path)
            else [str(v) for v in value]
            if isinstance(value, list)
            else value
        )
        for key, value in sorted(vars(args).items())
        if key not in skip
    }


def run_record(
    command: str,
    args: argparse.Namespace,
    engine: Any,
    maps: AttentionMaps,
    image_paths: Sequence[Path],
    outputs: Sequence[str],
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``run.json`` says about a run: what ran, on what, with which model.

    Enough to reproduce a result: the model identity, every setting, the package
    versions and the SHA-256 of every input file. `OutputTransaction.commit` adds the
    status and every output file's size and SHA-256.
    """
    images = [
        {
            "path": str(Path(path)),
            "sha256": file_sha256(path),
            "shape": list(geometry.image_shape),
        }
        for path, geometry in zip(image_paths, maps.geometries, strict=True)
    ]
    return {
        "tool": "napari-corrseg",
        "command": command,
        "argv": [str(a) for a in getattr(args, "argv", sys.argv[1:])],
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": dict(getattr(engine, "identity", {}) or {}),
        "tiny_model": bool(getattr(engine, "is_tiny", False)),
        "settings": _settings(args),
        "extraction": maps.settings,
        "grid": list(maps.grid),
        "images": images,
        "outputs": list(outputs),
        "versions": _versions(),
        **(extra or {}),
    }
