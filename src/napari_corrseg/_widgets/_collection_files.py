"""Save a collection session to a folder and read it back (run in workers, no Qt).

Saving goes through the library: `napari_corrseg.files.collection_export` writes the
per-image files and the summary, inside an output-folder transaction
(`napari_corrseg.files.io.output_transaction`), so the folder always holds one whole
save. The folder then holds

* ``points/<image>.csv`` and ``labels/<image>.tif`` (+ ``_confidence.tif``) for every
  image with keypoints or labels: the user's (confidence 1) and the proposals (their
  confidence), the summary ``summary.csv`` least confident first with a ``status``
  column (``annotated``, ``proposed``, ``accepted``, ``edited``, ``rejected``, ``not
  annotated``); a rejected proposal is not written;
* ``coseg/`` when the collection was co-segmented: ``labels/<image>.tif`` (your
  corrections where you made them), ``summary.csv`` and ``segments.json``;
* ``run.json``: the transaction's record, with a ``session`` entry (images, store,
  statuses, scores) from which `read_session` restores the session.

Label images are made one at a time while writing, never all at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorrsegError, OutputError
from ..files.collection_export import write_collection_coseg, write_collection_transfer
from ..files.io import RUN_FILE, output_transaction, read_points_table
from ..tasks.collection_results import (
    CollectionCosegmentationResult,
    CollectionPoints,
    CollectionTransferResult,
)
from ..tasks.results import grid_labels_to_pixels
from ._collection_session import REFERENCE, Cosegmentation, Entry, LabelSet, PointSet

SESSION_FORMAT = 1
COMMAND = "napari collection"


class _LazyLabels:
    """A `CollectionLabels` look-alike whose pixel arrays are made when read."""

    def __init__(self, labels: LabelSet, geometry, reference: bool) -> None:
        self._labels, self._geometry, self._reference = labels, geometry, reference

    @property
    def labels(self) -> np.ndarray:
        return self._labels.to_pixels(self._geometry)

    @property
    def confidence_grid(self) -> np.ndarray:
        if self._reference or self._labels.confidence_grid is None:
            return np.ones(self._geometry.grid, dtype=np.float32)
        return np.asarray(self._labels.confidence_grid, dtype=np.float32)

    @property
    def confidence(self) -> np.ndarray:
        return grid_labels_to_pixels(self.confidence_grid, self._geometry)


class _LazyPixels(Sequence):
    """Per image co-segmentation labels in pixels, made when read."""

    def __init__(self, grids, edits, geometries) -> None:
        self._grids, self._edits, self._geometries = grids, edits, geometries

    def __len__(self) -> int:
        return len(self._grids)

    def __getitem__(self, index):
        if self._edits[index] is not None:
            return self._edits[index]
        return grid_labels_to_pixels(np.asarray(self._grids[index]), self._geometries[index])


def _points_record(entry: Entry, index: int, geometry) -> CollectionPoints | None:
    found = entry.points
    if found is None:
        return None
    n = len(found.points)
    own = entry.status in ("annotated", "edited") or found.confidence is None
    return CollectionPoints(
        image=index,
        points=found.points,
        points_grid=geometry.pixel_to_grid(found.points),
        confidence=np.ones(n) if own else np.asarray(found.confidence, dtype=np.float64),
        source=np.full(n, index) if own else np.asarray(found.source, dtype=np.int64),
        cycle_error=np.zeros(n) if own else np.asarray(found.cycle_error, dtype=np.float64),
        geometry=geometry,
    )


def save_session(folder: str | Path, snapshot: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Write a session snapshot (`CollectionDock.snapshot`) into ``folder``.

    Returns
    -------
    (CommitReport, dict)
        What the transaction wrote, and the ``session`` record of ``run.json``.

    Raises
    ------
    CorrsegError
        The folder cannot be used (another program's files, no permission).
    """
    entries: list[Entry] = snapshot["entries"]
    geometries, names = snapshot["geometries"], [e.name for e in entries]
    n_keypoints = snapshot["n_keypoints"]
    points, labels, status, ranking = {}, {}, {}, []
    for index, entry in enumerate(entries):
        status[index] = entry.status or "not annotated"
        reference = entry.status in REFERENCE
        score = 1.0 if reference else entry.score
        ranking.append((index, float(score) if score is not None else float("nan")))
        if entry.status == "rejected":
            continue
        if entry.points is not None:
            padded = entry.replace(points=entry.points.padded(n_keypoints))
            points[index] = _points_record(padded, index, geometries[index])
        if entry.labels is not None:
            labels[index] = _LazyLabels(entry.labels, geometries[index], reference)
    references = [i for i, e in enumerate(entries) if e.status in REFERENCE]
    transfer = CollectionTransferResult(names, references, points, labels, ranking)
    try:
        with output_transaction(folder) as out:
            outputs = write_collection_transfer(out.staging, transfer, status=status)
            coseg = snapshot["coseg"]
            if coseg is not None:
                result = CollectionCosegmentationResult(
                    names=names,
                    labels_grid=coseg.labels_grid,
                    labels=_LazyPixels(
                        coseg.labels_grid, [e.coseg_edit for e in entries], geometries
                    ),
                    segments=coseg.segments,
                    unmatched=coseg.unmatched,
                    threshold=coseg.threshold,
                    geometries=geometries,
                    ranking=coseg.ranking,
                    no_clear_structure=coseg.no_clear_structure,
                )
                written = write_collection_coseg(out.staging / "coseg", result)
                outputs += [f"coseg/{name}" for name in written]
            record = _session_record(snapshot, points, labels)
            report = out.commit({"command": COMMAND, "session": record, "outputs": outputs})
    except OutputError as error:
        raise CorrsegError(
            str(error)
            .replace("choose another --out or pass --overwrite", "choose another folder")
            .replace("another --out", "another folder")
        ) from None
    return report, record


def _session_record(snapshot, points, labels) -> dict[str, Any]:
    entries: list[Entry] = snapshot["entries"]
    coseg: Cosegmentation | None = snapshot["coseg"]
    sources = snapshot["sources"]
    images = []
    for index, entry in enumerate(entries):
        images.append(
            {
                "name": entry.name,
                "key": entry.key,
                "shape": list(entry.shape),
                "path": sources[index],
                "status": entry.status,
                "score": entry.score,
                "points_file": f"points/{entry.name}.csv" if index in points else None,
                "labels_file": f"labels/{entry.name}.tif" if index in labels else None,
                "coseg_edited": entry.coseg_edit is not None,
            }
        )
    return {
        "format": SESSION_FORMAT,
        "origin": {k: v for k, v in snapshot["origin"].items() if k != "placements"},
        "store": {"path": snapshot["store_path"], "settings": snapshot["store_settings"]},
        "model": snapshot["model"],
        "n_keypoints": int(snapshot["n_keypoints"]),
        "current": int(snapshot["current"]),
        "images": images,
        "coseg": None
        if coseg is None
        else {
            "threshold": coseg.threshold,
            "ranking": [[int(i), float(s)] for i, s in coseg.ranking],
            "no_clear_structure": bool(coseg.no_clear_structure),
        },
    }


# -- reading back ---------------------------------------------------------------------


def read_record(folder: str | Path) -> dict[str, Any]:
    """The ``session`` record of a saved session folder.

    Raises
    ------
    CorrsegError
        No ``run.json``, a run that did not finish, or a folder the command line wrote
        (no session in it).
    """
    folder = Path(folder).expanduser()
    path = folder / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorrsegError(
            f"{folder} holds no saved session ({RUN_FILE} is missing); choose the folder "
            "you saved the collection to"
        ) from None
    except (OSError, ValueError) as error:
        raise CorrsegError(f"cannot read {path}: {error}") from None
    if record.get("status") != "complete":
        raise CorrsegError(
            f"the save in {folder} did not finish ({RUN_FILE} says "
            f"{record.get('status')!r}); save the session again"
        )
    session = record.get("session")
    if not isinstance(session, dict) or session.get("format") != SESSION_FORMAT:
        raise CorrsegError(
            f"{folder} holds napari-corrseg results but no collection session saved by "
            "the napari widget; choose a folder saved with its Save button"
        )
    return session


def _grid_of(values: np.ndarray, geometry) -> np.ndarray:
    """A nearest-token pixel map back on the grid (the value at each token's centre)."""
    (height, width), (h, w) = geometry.image_shape, geometry.grid
    (sy, sx), (ty, tx) = geometry.scale, geometry.translate
    rows = np.clip(np.rint(np.arange(h) * sy + ty), 0, height - 1).astype(np.intp)
    cols = np.clip(np.rint(np.arange(w) * sx + tx), 0, width - 1).astype(np.intp)
    return np.asarray(values)[np.ix_(rows, cols)]


def read_entries(folder: str | Path, session: dict[str, Any], geometries) -> list[Entry]:
    """The entries of a saved session, from its per-image files."""
    import tifffile

    folder = Path(folder).expanduser()
    records = session["images"]
    index_of = {record["name"]: k for k, record in enumerate(records)}
    entries = []
    for index, record in enumerate(records):
        status = record.get("status") or ""
        reference = status in ("annotated", "edited")
        score = record.get("score")
        points = labels = coseg_edit = None
        if record.get("points_file"):
            table = read_points_table(folder / record["points_file"], allow_missing=True)
            if reference:
                points = PointSet(table.points)
            else:
                columns = table.columns
                source = [index_of.get(str(name), -1) for name in columns.get("source", [])]
                points = PointSet(
                    table.points,
                    np.asarray(columns.get("confidence"), dtype=np.float64),
                    np.asarray(source, dtype=np.int64),
                    np.asarray(columns.get("cycle_error"), dtype=np.float64),
                )
        if record.get("labels_file"):
            pixels = tifffile.imread(folder / record["labels_file"]).astype(np.int32)
            if reference:
                labels = LabelSet(pixels=pixels)
            else:
                confidence_file = Path(record["labels_file"]).with_name(
                    Path(record["labels_file"]).stem + "_confidence.tif"
                )
                confidence = tifffile.imread(folder / confidence_file)
                labels = LabelSet(
                    grid=_grid_of(pixels, geometries[index]),
                    confidence_grid=_grid_of(confidence, geometries[index]).astype(np.float32),
                )
        if record.get("coseg_edited"):
            coseg_edit = tifffile.imread(folder / "coseg" / "labels" / f"{record['name']}.tif")
            coseg_edit = coseg_edit.astype(np.int32)
        entries.append(
            Entry(
                name=record["name"],
                key=record["key"],
                shape=tuple(record["shape"]),
                status=status,
                points=points,
                labels=labels,
                score=float("nan") if score is None else float(score),
                coseg_edit=coseg_edit,
            )
        )
    return entries


def read_coseg(folder: str | Path, session: dict[str, Any], geometries) -> Cosegmentation | None:
    """The saved co-segmentation (grid labels from ``coseg/labels``), or None."""
    import tifffile

    saved = session.get("coseg")
    if not saved:
        return None
    folder = Path(folder).expanduser() / "coseg"
    table = json.loads((folder / "segments.json").read_text(encoding="utf-8"))
    grids = []
    for record, geometry in zip(session["images"], geometries, strict=True):
        pixels = tifffile.imread(folder / "labels" / f"{record['name']}.tif")
        grids.append(_grid_of(pixels.astype(np.int32), geometry))
    return Cosegmentation(
        labels_grid=grids,
        segments=list(table.get("segments", [])),
        threshold=float(saved.get("threshold") or table.get("threshold") or np.nan),
        ranking=[(int(i), float(s)) for i, s in saved.get("ranking", [])],
        unmatched=list(table.get("unmatched", [])),
        no_clear_structure=bool(saved.get("no_clear_structure")),
    )
