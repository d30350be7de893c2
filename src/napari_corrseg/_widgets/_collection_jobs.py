"""The Collection dock's work, run in worker threads: calls to the collection tasks.

Every function here is one call (or a few) to `napari_corrseg.tasks.collection`
(fill the token store, transfer annotations, co-segment) or to `_collection_files`
(save, reopen), turning the results into `_collection_session` data. No Qt, no
algorithm. ``progress(stage, fraction)`` and ``cancel()`` are the run controls'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..collection.store import TokenStore, image_key
from ..errors import Cancelled, CorrsegError
from ..tasks import collection as collection_tasks
from ._collection_files import read_coseg, read_entries, read_record
from ._collection_session import CollectionSession, Cosegmentation, Entry, LabelSet, PointSet
from ._engines import get_engine, get_scheduler, loaded_engine_keys

Progress = Callable[[str, float], None]
CancelCheck = Callable[[], bool]


@dataclass
class LoadRequest:
    """What to load, read from the form on the GUI thread.

    Attributes
    ----------
    kind : {"folder", "layers", "stack"}
    sources : list
        Image files (folder), or lazy planes of the chosen layers.
    names : list of str or None
        Per image (None: the file names).
    placements : list or None
        Per image ``(scale, translate)`` of its plane in the viewer (layers, stack).
    origin : dict
        Kept in the session (and its saved record).
    store_dir : Path
    settings : dict
        Model settings (model, device, layers, timestep, seed).
    fill_plan : list
        Receives the store's size estimate before anything is computed.
    scheduler : str
        Where the work runs: ``none``, ``local``, ``local:N`` or a Dask address.
    """

    kind: str
    sources: list
    names: list[str] | None
    placements: list | None
    origin: dict[str, Any]
    store_dir: Path
    settings: dict[str, Any]
    fill_plan: list = field(default_factory=list)
    scheduler: str = "none"


def _engine(settings: dict[str, Any], progress: Progress, cancel: CancelCheck):
    engine = get_engine(settings["model"], settings["device"], progress, cancel)
    if not hasattr(engine, "iter_query_key"):
        raise CorrsegError(
            f"the model {settings['model']!r} cannot fill a token store; choose sd2-base, "
            "sd2, tiny or a path to SD2 weights"
        )
    return engine


def _backend(engine) -> Any:
    return getattr(engine, "attention_backend", None) if engine is not None else None


def _session_on_store(images, store, engine, origin: dict, settings: dict) -> CollectionSession:
    """A session over ``images`` whose tokens ``store`` holds (geometries read from it)."""
    session = CollectionSession(
        images,
        [store.geometry(key) for key in images.keys],
        store_path=str(store.path),
        store_settings=store.settings,
        origin=origin,
        model=settings,
    )
    session.store, session.backend = store, _backend(engine)
    return session


def load_collection(request: LoadRequest, progress: Progress, cancel: CancelCheck):
    """Fill the token store with the collection's images; returns ``(session, report)``."""
    settings = request.settings
    engine = _engine(settings, progress, cancel)
    if cancel():
        raise Cancelled("loading the collection was cancelled")
    store = collection_tasks.open_store(
        request.store_dir,
        engine,
        layers=settings["layers"],
        timestep=settings["timestep"],
        seed=settings["seed"],
    )
    images = collection_tasks.collect_images(
        request.sources, request.names, progress=progress, cancel=cancel
    )
    scheduler = get_scheduler(request.scheduler, settings["model"], settings["device"])
    report = collection_tasks.fill_store(
        store,
        images,
        engine,
        scheduler=scheduler,
        on_plan=request.fill_plan.append,
        progress=progress,
        cancel=cancel,
    )
    origin = {**request.origin, "placements": request.placements}
    session = _session_on_store(images, store, engine, origin, settings)
    session.scheduler = scheduler
    session.tiny = bool(getattr(engine, "is_tiny", False))
    return session, report


def propose(
    session: CollectionSession,
    keypoints: dict[int, np.ndarray],
    labels: dict[int, LabelSet],
    targets: Sequence[int],
    progress: Progress,
    cancel: CancelCheck,
) -> tuple[dict[int, Entry], list[str]]:
    """Proposals on ``targets`` from the references; returns ``({target: Entry with the
    proposal}, warnings)`` (the entries are new objects: the session is not changed)."""
    geometries = session.geometries
    painted = {i: found.to_pixels(geometries[i]) for i, found in labels.items()}
    result = collection_tasks.transfer_over_collection(
        session.store,
        session.keys,
        keypoints=keypoints or None,
        labels=painted or None,
        targets=list(targets),
        names=session.names,
        scheduler=session.scheduler,
        backend=session.backend,
        pixel_labels=False,
        progress=progress,
        cancel=cancel,
    )
    scores = dict(result.ranking)
    proposals, no_points, no_labels = {}, [], []
    for target in targets:
        entry = session.entries[target]
        moved = result.points.get(target)
        points = None
        if moved is not None:
            points = PointSet(
                np.asarray(moved.points, dtype=np.float64),
                np.asarray(moved.confidence, dtype=np.float64),
                np.asarray(moved.source, dtype=np.int64),
                np.asarray(moved.cycle_error, dtype=np.float64),
            )
            if not (np.isfinite(moved.points).all(axis=1) & (moved.confidence > 0)).any():
                no_points.append(entry.name)
        carried = result.labels.get(target)
        found = None
        if carried is not None:
            found = LabelSet(
                grid=np.asarray(carried.labels_grid, dtype=np.int32),
                confidence_grid=np.asarray(carried.confidence_grid, dtype=np.float32),
            )
            if not found.grid.any():
                no_labels.append(entry.name)
        proposals[target] = entry.replace(
            status="proposed", points=points, labels=found, score=scores.get(target, np.nan)
        )
    warnings = []
    for what, names in (("no keypoint", no_points), ("no labelled part", no_labels)):
        if names:
            shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
            warnings.append(
                f"{what} could be proposed on {len(names)} image(s) ({shown}): the part may "
                "be missing there; annotate one of them and propose again"
            )
    return proposals, warnings


def cosegment(
    session: CollectionSession, threshold: float | str, progress: Progress, cancel: CancelCheck
) -> Cosegmentation:
    """Co-segment the whole collection from the token store."""
    result = collection_tasks.cosegment_collection(
        session.store,
        session.keys,
        names=session.names,
        threshold=threshold,
        scheduler=session.scheduler,
        backend=session.backend,
        pixel_labels=False,
        progress=progress,
        cancel=cancel,
    )
    return Cosegmentation(
        labels_grid=[np.asarray(labels, dtype=np.int32) for labels in result.labels_grid],
        segments=list(result.segments),
        threshold=float(result.threshold),
        ranking=[(int(i), float(s)) for i, s in result.ranking],
        unmatched=list(result.unmatched),
        no_clear_structure=bool(result.no_clear_structure),
    )


# -- reopening ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An image open in the viewer that a saved session may have used."""

    name: str
    plane: Any  # lazy plane, read in the worker
    placement: tuple


def _images_of(session_record, candidates: Sequence[Candidate], progress, cancel):
    records = session_record["images"]
    names = [record["name"] for record in records]
    paths = [record.get("path") for record in records]
    if all(paths):
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise CorrsegError(
                f"{len(missing)} image file(s) of the session are gone (first {missing[0]}); "
                "put them back or load the collection again"
            )
        images = collection_tasks.collect_images(
            [Path(p) for p in paths], names, progress=progress, cancel=cancel
        )
        return images, None
    by_key = {}
    for done, candidate in enumerate(candidates):
        by_key.setdefault(image_key(np.asarray(candidate.plane)), candidate)
        progress("read", (done + 1) / max(1, len(candidates)))
        if cancel():
            raise Cancelled("opening the session was cancelled")
    chosen = []
    for record in records:
        found = by_key.get(record["key"])
        if found is None:
            raise CorrsegError(
                f"the image {record['name']!r} of the session is not open in the viewer; "
                "open the session's images (or its stack) as layers and try again"
            )
        chosen.append(found)
    images = collection_tasks.collect_images(
        [c.plane for c in chosen], names, progress=progress, cancel=cancel
    )
    return images, [c.placement for c in chosen]


def open_session(
    folder: Path, candidates: Sequence[Candidate], progress: Progress, cancel: CancelCheck
) -> CollectionSession:
    """Restore a session saved by the dock (`_collection_files.save_session`)."""
    record = read_record(folder)
    progress("open", 0.0)
    images, placements = _images_of(record, candidates, progress, cancel)
    changed = [
        saved["name"]
        for saved, key in zip(record["images"], images.keys, strict=True)
        if saved["key"] != key
    ]
    if changed:
        raise CorrsegError(
            f"{len(changed)} image(s) changed since the session was saved (first "
            f"{changed[0]!r}); their proposals no longer fit: load the collection again"
        )
    saved_store = record["store"]
    store = TokenStore(saved_store["path"], saved_store["settings"])
    settings = dict(record["model"])
    engine = None
    if store.missing(images.keys):
        engine = _engine(settings, progress, cancel)
        collection_tasks.fill_store(store, images, engine, progress=progress, cancel=cancel)
    elif (settings["model"], settings["device"]) in loaded_engine_keys():
        engine = get_engine(settings["model"], settings["device"])
    origin = {**record["origin"], "placements": placements}
    session = _session_on_store(images, store, engine, origin, settings)
    session.entries = read_entries(folder, record, session.geometries)
    session.coseg = read_coseg(folder, record, session.geometries)
    session.n_keypoints = int(record.get("n_keypoints", 0))
    session.current = min(max(int(record.get("current", 0)), 0), len(session) - 1)
    session.tiny = bool(settings.get("model") == "tiny")
    session.saved_to = str(folder)
    progress("open", 1.0)
    return session
