"""A collection session: what the user annotated, what was proposed, what was reviewed.

Plain data, no Qt and no algorithm: the Collection dock keeps one `CollectionSession`
and changes it on the GUI thread; workers read snapshots of it (`Entry` objects are
replaced, never changed in place, so a worker never sees half an update).

Per image (`Entry`):

- ``status``: ``""`` (nothing yet), ``"annotated"`` (the user marked it), ``"proposed"``
  (a proposal waits for review), ``"accepted"`` (a proposal taken as it is),
  ``"edited"`` (a proposal the user corrected: taken as corrected), ``"rejected"``;
- ``points``: keypoints ``(P, 2)`` in the image's pixels, row ``k`` = keypoint ``k`` on
  every image, NaN rows where it is not marked; with confidences for a proposal;
- ``labels``: painted parts ``(H, W)``, or a proposal on the token grid with its
  confidence;
- ``coseg_edit``: the user's correction of the image's co-segmentation.

Annotated, accepted and edited images are the *references*: the sources of the next
proposals. The remaining images (nothing yet, or proposed and not reviewed) are the
*targets*; rejected images are neither.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.maps import ImageGeometry
from ..tasks.results import grid_labels_to_pixels

#: Statuses whose annotations are sources of the next proposals.
REFERENCE = ("annotated", "accepted", "edited")
#: Statuses of images that still take proposals.
UNREVIEWED = ("", "proposed")
STATUSES = ("", "annotated", "proposed", "accepted", "edited", "rejected")


@dataclass(frozen=True)
class PointSet:
    """Keypoints of one image, in its pixels (NaN rows: not marked there).

    ``confidence``, ``source`` (image index, -1 none) and ``cycle_error`` describe a
    proposal; None for the user's own points.
    """

    points: np.ndarray
    confidence: np.ndarray | None = None
    source: np.ndarray | None = None
    cycle_error: np.ndarray | None = None

    def padded(self, n_keypoints: int) -> PointSet:
        """The same with NaN rows added up to ``n_keypoints``."""
        extra = n_keypoints - len(self.points)
        if extra <= 0:
            return self

        def grow(values, fill):
            if values is None:
                return None
            return np.concatenate([values, np.full(extra, fill, dtype=values.dtype)])

        return PointSet(
            np.concatenate([self.points, np.full((extra, 2), np.nan)]),
            grow(self.confidence, 0.0),
            grow(self.source, -1),
            grow(self.cycle_error, np.nan),
        )

    @property
    def n_marked(self) -> int:
        return int(np.isfinite(self.points).all(axis=1).sum())


@dataclass(frozen=True)
class LabelSet:
    """Labels of one image: painted ``pixels`` (H, W), or a proposal on the grid."""

    pixels: np.ndarray | None = None
    grid: np.ndarray | None = None
    confidence_grid: np.ndarray | None = None

    def to_pixels(self, geometry: ImageGeometry) -> np.ndarray:
        """``(H, W)`` int32 labels on the image's pixels."""
        if self.pixels is not None:
            return self.pixels
        return grid_labels_to_pixels(np.asarray(self.grid, dtype=np.int32), geometry)


@dataclass(frozen=True)
class Entry:
    """One image of the collection (replaced, never changed in place)."""

    name: str
    key: str
    shape: tuple[int, int]
    status: str = ""
    points: PointSet | None = None
    labels: LabelSet | None = None
    score: float = float("nan")
    coseg_edit: np.ndarray | None = None
    version: int = 0

    def replace(self, **changes: Any) -> Entry:
        """A copy with ``changes`` and the version counted up."""
        return dataclasses.replace(self, version=self.version + 1, **changes)


@dataclass
class Cosegmentation:
    """The collection's co-segmentation as the dock keeps it (grid labels only)."""

    labels_grid: list[np.ndarray]
    segments: list[dict[str, Any]]
    threshold: float
    ranking: list[tuple[int, float]]
    unmatched: list[Any] = field(default_factory=list)
    no_clear_structure: bool = False


def assign_keypoint_ids(ids: Any, n_rows: int, n_keypoints: int) -> np.ndarray:
    """Keypoint numbers of a Points layer's rows.

    A row keeps a valid number it carries (its ``keypoint_id`` feature; the first row
    with a number keeps it). Every other row (a point the user added) takes the lowest
    number not used on this image, so deleting a wrong point and clicking the right
    place replaces it, and beyond ``n_keypoints`` it is a new keypoint.
    """
    given = np.full(n_rows, -1, dtype=np.int64)
    if ids is not None:
        values = np.asarray(ids, dtype=np.float64).reshape(-1)[:n_rows]
        finite = np.isfinite(values)
        given[: len(values)][finite] = values[finite].astype(np.int64)
    out = np.full(n_rows, -1, dtype=np.int64)
    used: set[int] = set()
    for row, number in enumerate(given.tolist()):
        if 0 <= number < max(n_keypoints, 0) and number not in used:
            out[row] = number
            used.add(number)
    free = (k for k in range(n_rows + n_keypoints) if k not in used)
    for row in np.flatnonzero(out < 0):
        out[row] = next(free)
    return out


class CollectionSession:
    """The images of one collection and everything the user did with them.

    Parameters
    ----------
    images : CollectionImages
        Keys, names and where to read each image again (`tasks.collection`).
    geometries : list of ImageGeometry
        Per image, from the token store.
    store_path : str
    store_settings : dict
        The token store's settings (reopening needs no model).
    origin : dict
        Where the images came from: ``kind`` (``"folder"``, ``"layers"``, ``"stack"``),
        ``folder`` or ``layers``, and ``placements`` (per image ``scale`` and
        ``translate`` of its plane in the viewer).
    model : dict
        The model settings of the form (model, device, layers, timestep, seed).
    """

    def __init__(
        self,
        images,
        geometries: list[ImageGeometry],
        *,
        store_path: str,
        store_settings: dict[str, Any],
        origin: dict[str, Any],
        model: dict[str, Any],
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.images = images
        self.geometries = list(geometries)
        self.store_path = str(store_path)
        self.store_settings = dict(store_settings)
        self.origin = dict(origin)
        self.model = dict(model)
        self.entries = [
            Entry(name, key, tuple(int(v) for v in g.image_shape))
            for name, key, g in zip(images.names, images.keys, self.geometries, strict=True)
        ]
        self.n_keypoints = 0
        self.coseg: Cosegmentation | None = None
        self.current = 0
        self.saved_to: str | None = None
        self.store: Any = None  # the open TokenStore
        self.backend: Any = None  # attention backend of the engine, if one is loaded
        self.scheduler: Any = None  # the Dask scheduler the work runs on (None: in process)
        self.tiny = False  # made by the tiny random model: results are not semantic
        self.changes = 0  # counts every change; saving records the count
        self.saved_changes = 0

    @property
    def dirty(self) -> bool:
        """Whether something changed since the session was loaded or saved."""
        return self.changes != self.saved_changes

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def placement(self, index: int) -> dict[str, tuple[float, float]]:
        """``scale``/``translate`` of image ``index``'s pixels in the viewer."""
        placements = self.origin.get("placements")
        if placements:
            scale, translate = placements[index]
            return {"scale": tuple(scale), "translate": tuple(translate)}
        return {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}

    def set(self, index: int, **changes: Any) -> Entry:
        """Replace entry ``index`` by a copy with ``changes``; the session is unsaved."""
        entry = self.entries[index].replace(**changes)
        self.entries[index] = entry
        self.changes += 1
        return entry

    def set_coseg(self, coseg: Cosegmentation) -> None:
        """Take a new co-segmentation of the collection."""
        self.coseg = coseg
        self.changes += 1

    # -- what the user did ------------------------------------------------------------

    def take_points(self, index: int, data: np.ndarray, ids: Any) -> None:
        """The user's points on image ``index`` (a Points layer's data and ids)."""
        data = np.asarray(data, dtype=np.float64).reshape(-1, 2)
        numbers = assign_keypoint_ids(ids, len(data), self.n_keypoints)
        n_keypoints = max(self.n_keypoints, int(numbers.max()) + 1 if len(numbers) else 0)
        points = np.full((n_keypoints, 2), np.nan)
        points[numbers] = data
        self.n_keypoints = n_keypoints
        entry = self.entries[index]
        marked = PointSet(points) if len(data) else None
        self.set(index, points=marked, status=self._status_after_edit(entry, marked, "points"))

    def take_labels(self, index: int, data: np.ndarray) -> None:
        """The user's painted labels on image ``index`` (a Labels layer's data)."""
        pixels = np.array(data, dtype=np.int32, copy=True)
        labels = LabelSet(pixels=pixels) if pixels.any() else None
        entry = self.entries[index]
        self.set(index, labels=labels, status=self._status_after_edit(entry, labels, "labels"))

    def take_coseg(self, index: int, data: np.ndarray) -> None:
        """The user's correction of image ``index``'s co-segmentation."""
        self.set(index, coseg_edit=np.array(data, dtype=np.int32, copy=True))

    def _status_after_edit(self, entry: Entry, value: Any, what: str) -> str:
        other = entry.labels if what == "points" else entry.points
        if entry.status in ("", "annotated"):
            return "annotated" if value is not None or other is not None else ""
        return "edited"  # a proposal corrected: the user's version is taken

    def accept(self, index: int) -> bool:
        """Take image ``index``'s proposal as it is; False if it has none to accept.

        A corrected proposal (``"edited"``) is already taken: True, nothing changes.
        """
        entry = self.entries[index]
        if entry.status == "edited":
            return True
        has_proposal = entry.points is not None or entry.labels is not None
        if entry.status not in ("proposed", "rejected") or not has_proposal:
            return False
        self.set(index, status="accepted")
        return True

    def reject(self, index: int) -> bool:
        """Reject image ``index``'s proposal; False if it has none."""
        entry = self.entries[index]
        if entry.status not in ("proposed", "accepted"):
            return False
        self.set(index, status="rejected")
        return True

    # -- what the next proposal starts from --------------------------------------------

    def references(self) -> list[int]:
        return [i for i, e in enumerate(self.entries) if e.status in REFERENCE]

    def targets(self) -> list[int]:
        """Images that take proposals: nothing yet, or proposed and not reviewed."""
        return [i for i, e in enumerate(self.entries) if e.status in UNREVIEWED]

    def sources(self) -> tuple[dict[int, np.ndarray], dict[int, Any], list[str]]:
        """``(keypoints, labels, problems)`` of the references for the transfer.

        Keypoints ``{image: (P, 2)}`` padded to the session's keypoint count, points
        outside their image left out (``problems`` names them); labels ``{image:
        LabelSet}`` (pixels made in the worker with `label_pixels`).
        """
        keypoints, labels, problems = {}, {}, []
        for index in self.references():
            entry = self.entries[index]
            if entry.points is not None and entry.points.n_marked:
                points = entry.points.padded(self.n_keypoints).points.copy()
                height, width = entry.shape
                inside = (points >= -0.5).all(axis=1) & (
                    points <= np.array([height, width]) - 0.5
                ).all(axis=1)
                outside = np.isfinite(points).all(axis=1) & ~inside
                if outside.any():
                    problems.append(
                        f"keypoint(s) {', '.join(map(str, np.flatnonzero(outside)))} on "
                        f"{entry.name!r} lie outside the image and were not used"
                    )
                    points[outside] = np.nan
                if np.isfinite(points).all(axis=1).any():
                    keypoints[index] = points
            if entry.labels is not None:
                labels[index] = entry.labels
        return keypoints, labels, problems

    def take_proposals(self, proposals: dict[int, Entry], versions: dict[int, int]) -> int:
        """Store new proposals of targets not changed since the run started; returns
        how many were stored (an image edited during the run keeps the edit)."""
        stored = 0
        for index, proposal in proposals.items():
            entry = self.entries[index]
            if entry.version != versions.get(index) or entry.status not in UNREVIEWED:
                continue
            self.set(
                index,
                status="proposed",
                points=proposal.points,
                labels=proposal.labels,
                score=proposal.score,
            )
            stored += 1
        return stored

    # -- reviewing --------------------------------------------------------------------

    def least_confident(self) -> int | None:
        """The unreviewed proposal with the lowest score (else the co-segmentation's
        least consistent image), or None."""
        waiting = [
            (entry.score, index)
            for index, entry in enumerate(self.entries)
            if entry.status == "proposed"
        ]
        if waiting:
            return min(waiting, key=lambda item: (np.nan_to_num(item[0], nan=-1.0), item[1]))[1]
        if self.coseg is not None and self.coseg.ranking:
            return int(self.coseg.ranking[0][0])
        return None

    def counts(self) -> dict[str, int]:
        """How many images have each status."""
        found = {status: 0 for status in STATUSES}
        for entry in self.entries:
            found[entry.status] += 1
        return found

    def describe(self, index: int) -> str:
        """One line about image ``index`` for the review panel."""
        entry = self.entries[index]
        parts = [f"image {index + 1} of {len(self)}: {entry.name}"]
        parts.append(entry.status or "not annotated")
        if entry.status in ("proposed", "accepted", "rejected") and np.isfinite(entry.score):
            parts.append(f"confidence {entry.score:.2f}")
        counts = self.counts()
        reviewed = counts["accepted"] + counts["edited"] + counts["rejected"]
        proposals = reviewed + counts["proposed"]
        if proposals:
            parts.append(f"{reviewed} of {proposals} proposals reviewed")
        return " · ".join(parts)
