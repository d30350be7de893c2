"""Collection tasks: fill the token store, co-segment and transfer over many images.

What the command line (``extract``, ``coseg``, ``transfer``) and the widgets call. Each
image goes through the model once, ever: `fill_store` computes only the images missing
from the `napari_corrseg.collection.store.TokenStore` (and those whose entry is damaged),
so an interrupted run resumes and adding an image costs one image's pass. The
co-segmentation (`napari_corrseg.collection.cosegment.cosegment`) and the transfer
(`napari_corrseg.collection.transfer.transfer_collection`) then read the store through
lazy `AttentionMaps`; their cross-map stages go through a ``mapper``: an in-process loop
by default, Dask tasks when a `napari_corrseg.tasks.distributed.DaskScheduler` is given.
Results are in image pixels (`napari_corrseg.tasks.collection_results`).

Callbacks as in `napari_corrseg.tasks.pipeline`: ``progress(stage, fraction)`` and
``cancel() -> bool`` (True stops with `napari_corrseg.errors.Cancelled`; what is stored
stays stored).

This module imports neither torch nor Qt: the engine is passed in as an object.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..collection.store import TokenStore, image_key, store_settings
from ..errors import Cancelled, CorrsegError, InputImageError
from .collection_results import (
    CollectionCosegmentationResult,
    CollectionLabels,
    CollectionPoints,
    CollectionTransferResult,
    FillPlan,
    FillReport,
)
from .results import grid_labels_to_pixels

__all__ = [
    "CollectionImages",
    "check_engine",
    "collect_images",
    "cosegment_collection",
    "fill_store",
    "list_image_files",
    "open_store",
    "transfer_over_collection",
    "unique_names",
]

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]
#: Images handed to the engine at once in process (each pass's entries are written at
#: once, so an interrupted run loses at most one chunk's passes).
CHUNK_IMAGES = 8


def _checker(progress: Progress | None, cancel: Cancel | None, what: str) -> Progress:
    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, float(fraction))
        if cancel is not None and cancel():
            raise Cancelled(f"{what} was cancelled")

    return report


def list_image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of the given files and folders (a folder: its images, sorted by name,
    not recursive), in order, each once.

    Raises
    ------
    InputImageError
        A path that does not exist, or a folder holding no image files.
    """
    from ..files.io import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise InputImageError(
                    f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "point to a folder of images or list the image files"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputImageError(f"image or folder {path} does not exist; check the path")
    unique, seen = [], set()
    for path in files:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """File stems, made unique (``a``, ``a-2``, ...), for naming per-image outputs."""
    names, used = [], set()
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        names.append(name)
    return names


@dataclasses.dataclass
class CollectionImages:
    """A collection's images as keys, names and where to get the pixels again."""

    keys: list[str]
    names: list[str]
    shapes: list[tuple[int, int]]
    sources: list[Any]  # Path (read again when needed) or the array itself

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> np.ndarray:
        """The pixels of image ``index``."""
        source = self.sources[index]
        if isinstance(source, str | Path):
            from ..files.io import read_image

            return read_image(source)
        return np.asarray(source)


def collect_images(
    images: Sequence[np.ndarray | str | Path] | CollectionImages,
    names: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CollectionImages:
    """Read (files) or take (arrays) each image once to key it by content.

    Files are not kept in memory; they are read again when computed.

    Raises
    ------
    InputImageError
        No images, an unreadable file (named), or an unusable array.
    """
    if isinstance(images, CollectionImages):
        return images
    images = list(images)
    if not images:
        raise InputImageError("no images given; pass image files, a folder or arrays")
    if names is None:
        paths = [
            im if isinstance(im, str | Path) else f"image_{k:04d}" for k, im in enumerate(images)
        ]
        names = unique_names(paths)
    elif len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    report = _checker(progress, cancel, "reading the images")
    keys, shapes, sources = [], [], []
    for index, item in enumerate(images):
        if isinstance(item, str | Path):
            from ..files.io import read_image

            array, source = read_image(item), Path(item)
        else:
            array = source = np.asarray(item)
        try:
            keys.append(image_key(array))
        except InputImageError as error:
            raise InputImageError(f"{names[index]}: {error}") from None
        shapes.append(tuple(int(v) for v in array.shape[:2]))
        sources.append(source)
        report("read", (index + 1) / len(images))
    return CollectionImages(keys, list(names), shapes, sources)


def open_store(
    path: str | Path, engine: Any, *, layers: Any = "auto", timestep: int = 261, seed: int = 0
) -> TokenStore:
    """The token store of ``engine``'s model at these settings, in folder ``path``.

    ``engine`` may be a `napari_corrseg.engine.LazyEngine`: its identity and image size
    are known without loading the model.
    """
    settings = store_settings(
        dict(engine.identity), int(engine.image_size), layers=layers, timestep=timestep, seed=seed
    )
    return TokenStore(path, settings)


def check_engine(store: TokenStore, engine: Any) -> None:
    """Raise `CorrsegError` unless ``engine`` computes what ``store`` holds."""
    _check_engine(store, engine)


def _check_engine(store: TokenStore, engine: Any) -> None:
    wanted = store_settings(
        dict(engine.identity),
        int(engine.image_size),
        layers=store.settings["layers"],
        timestep=store.settings["timestep"],
        seed=store.settings["seed"],
    )
    if wanted != store.settings:
        raise CorrsegError(
            "the engine's model or settings differ from the token store's; open the store "
            "with napari_corrseg.tasks.collection.open_store(path, engine, ...)"
        )


def _bytes_per_image(store: TokenStore, present: Sequence[str], shape_of: Callable) -> int:
    for key in present:
        try:
            return TokenStore.estimate_bytes(1, store.shape(key))
        except Exception:  # a damaged entry says nothing; try the next
            continue
    return TokenStore.estimate_bytes(1, shape_of(store.settings["layers"]))


def fill_store(
    store: TokenStore,
    images: Sequence[np.ndarray | str | Path] | CollectionImages,
    engine: Any = None,
    *,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    verify: bool = True,
    scheduler: Any = None,
    on_plan: Callable[[FillPlan], None] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> FillReport:
    """Make sure every image's queries and keys are in the store; compute only the rest.

    Parameters
    ----------
    store : TokenStore
        Where the tokens go (its settings say which layers, timestep and seed).
    images : sequence of arrays or paths, or CollectionImages
        The collection.
    engine : Engine or LazyEngine, optional
        Computes the missing images in process (needed unless ``scheduler`` is given or
        nothing is missing; a `LazyEngine` is loaded only then).
    names : sequence of str, optional
        Per image (default: file stems, or ``image_0000`` ...).
    batch_size : int, optional
        Images per UNet pass (default: the engine's planner; at most `CHUNK_IMAGES`).
    verify : bool
        Check every stored entry's checksum first (reads the whole store); damaged
        entries are recomputed with one warning.
    scheduler : DaskScheduler, optional
        Compute on Dask workers instead (`napari_corrseg.tasks.distributed`).
    on_plan : callable, optional
        Called with a `FillPlan` (counts, size estimate) before anything is computed.
    progress, cancel : callable, optional
        ``progress("extract", fraction)``; ``cancel()`` polled between images.

    Returns
    -------
    FillReport
    """
    collection = collect_images(images, names, progress=progress, cancel=cancel)
    report = _checker(progress, cancel, "extraction")
    store.remove_stale_partials()
    first: dict[str, int] = {}
    for index, key in enumerate(collection.keys):
        first.setdefault(key, index)
    present = [key for key in first if store.has(key)]
    damaged = []
    if verify:
        for done, key in enumerate(present):
            if not store.verify(key):
                damaged.append(key)
            report("verify", (done + 1) / len(present))
    if damaged:
        shown = ", ".join(collection.names[first[key]] for key in damaged[:3])
        warnings.warn(
            f"{len(damaged)} damaged token store entr{'y' if len(damaged) == 1 else 'ies'} "
            f"({shown}{', ...' if len(damaged) > 3 else ''}) will be recomputed",
            stacklevel=2,
        )
        for key in damaged:
            store.discard(key)
    todo = [key for key in first if not store.has(key)]
    if todo and scheduler is None and engine is None:
        raise CorrsegError(f"{len(todo)} images are not in the token store; pass an engine")
    if todo and engine is not None and scheduler is None:
        _check_engine(store, engine)
    shape_of = (
        scheduler.query_key_shape
        if scheduler is not None
        else (lambda layers: engine.query_key_shape(layers))
    )
    plan = FillPlan(
        n_images=len(first),
        n_present=len(present) - len(damaged),
        n_damaged=len(damaged),
        n_missing=len(todo),
        bytes_per_image=_bytes_per_image(store, present, shape_of) if todo else 0,
        store=str(store.path),
    )
    if on_plan is not None:
        on_plan(plan)
    items = [(key, first[key]) for key in todo]
    if items and scheduler is not None:
        statuses = scheduler.fill(
            store, collection, items, batch_size=batch_size, progress=report, cancel=cancel
        )
    elif items:
        statuses = _fill_in_process(store, collection, items, engine, batch_size, report, cancel)
    else:
        statuses = {}
    computed = sum(1 for status in statuses.values() if status == "computed")
    recomputed = sum(1 for key in damaged if statuses.get(key) == "computed")
    report("extract", 1.0)
    return FillReport(
        keys=list(collection.keys),
        names=list(collection.names),
        shapes=list(collection.shapes),
        computed=computed - recomputed,
        reused=plan.n_present + (len(statuses) - computed),
        recomputed=recomputed,
        store=str(store.path),
        plan=plan,
    )


def _fill_in_process(store, collection, items, engine, batch_size, report, cancel):
    statuses: dict[str, str] = {}
    chunk = max(1, min(CHUNK_IMAGES, int(batch_size) if batch_size else CHUNK_IMAGES))
    settings = store.settings
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        arrays = [collection.load(index) for _, index in part]
        for position, queries, keys, geometry in engine.iter_query_key(
            arrays,
            layers=settings["layers"],
            timestep=settings["timestep"],
            seed=settings["seed"],
            batch_size=batch_size,
            cancel=cancel,
        ):
            key, index = part[position]
            created = store.write(key, queries, keys, geometry, name=collection.names[index])
            statuses[key] = "computed" if created else "reused"
            report("extract", len(statuses) / len(items))
    return statuses


class LocalMapper:
    """``mapper(fn, argument_tuples)``: ``fn(maps, *args)`` for each, in process, with
    progress and cancel between calls (what `cosegment_collection` passes without Dask)."""

    def __init__(self, maps: Any, progress: Progress | None = None, cancel: Cancel | None = None):
        self.maps = maps
        self.report = _checker(progress, cancel, "the collection run")

    def __call__(self, fn: Callable, arguments: Sequence[tuple]) -> list:
        arguments = list(arguments)
        results = []
        for done, args in enumerate(arguments):
            results.append(fn(self.maps, *args))
            self.report("cross maps", (done + 1) / max(1, len(arguments)))
        return results


def _maps_and_mapper(store, keys, scheduler, backend, progress, cancel):
    maps = store.maps(keys, backend=backend)
    if scheduler is not None:
        mapper = scheduler.mapper(store, keys, progress=progress, cancel=cancel)
    else:
        mapper = LocalMapper(maps, progress, cancel)
    return maps, mapper


def _names(keys: Sequence[str], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"image_{k:04d}" for k in range(len(keys))]
    if len(names) != len(keys):
        raise ValueError(f"{len(names)} names for {len(keys)} images")
    return list(names)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def cosegment_collection(
    store: TokenStore,
    keys: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    threshold: float | str = "auto",
    scheduler: Any = None,
    backend: Any = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CollectionCosegmentationResult:
    """Co-segment stored images: ids agree across the collection; cost linear in n.

    Parameters
    ----------
    store : TokenStore
        Holding every image (see `fill_store`).
    keys : sequence of str
        The images, in collection order (``FillReport.keys``).
    names : sequence of str, optional
        Per image, for the result.
    threshold : float or "auto"
        Merge threshold of the co-segmentation.
    scheduler : DaskScheduler, optional
        Run the cross-map stages on Dask workers.
    backend : callable, optional
        Attention backend in process (e.g. ``engine.attention_backend``).
    progress, cancel : callable, optional

    Returns
    -------
    CollectionCosegmentationResult
    """
    from ..collection import cosegment as cosegment_module

    keys = list(keys)
    if len(keys) < 2:
        raise CorrsegError("co-segmentation needs at least two images")
    report = _checker(progress, cancel, "co-segmentation")
    maps, mapper = _maps_and_mapper(store, keys, scheduler, backend, progress, cancel)
    result = cosegment_module.cosegment(maps, threshold=threshold, mapper=mapper, progress=report)
    geometries = list(maps.geometries)
    labels_grid = [np.asarray(labels) for labels in result.labels]
    labels = [grid_labels_to_pixels(lg, g) for lg, g in zip(labels_grid, geometries, strict=True)]
    segments = [_jsonable(record) for record in result.segments]
    consistency = {
        int(s["id"]): float(s["consistency"]) if s.get("consistency") is not None else 0.0
        for s in segments
    }
    scores = getattr(result, "image_scores", None)
    if scores is None:  # mean consistency of each image's tokens; single-image parts 0
        scores = [
            float(np.mean([consistency.get(int(v), 0.0) for v in lg.ravel()]))
            for lg in labels_grid
        ]
    ranking = sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda item: item[1])
    return CollectionCosegmentationResult(
        names=_names(keys, names),
        labels_grid=labels_grid,
        labels=labels,
        segments=segments,
        unmatched=_jsonable(list(getattr(result, "unmatched", []))),
        threshold=float(getattr(result, "threshold", np.nan)),
        geometries=geometries,
        ranking=ranking,
    )


def _field(record: Any, name: str, position: int) -> Any:
    if hasattr(record, name):
        return getattr(record, name)
    if isinstance(record, Mapping):
        return record[name]
    return record[position]


def _check_sources(maps, keypoints, labels) -> tuple[dict, dict]:
    grid_points, pixel_labels = {}, {}
    counts = set()
    for source, points in (keypoints or {}).items():
        source = int(source)
        if not 0 <= source < maps.n_images:
            raise CorrsegError(f"source image {source} is not in the collection")
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        height, width = maps.geometries[source].image_shape
        marked = np.isfinite(points).all(axis=1)
        inside = (points[marked] >= -0.5).all(axis=1) & (
            points[marked] <= np.array([height, width]) - 0.5
        ).all(axis=1)
        if not inside.all():
            row, col = points[marked][np.argmin(inside)]
            raise InputImageError(
                f"keypoint ({row:g}, {col:g}) lies outside the source image of "
                f"{height}x{width} pixels; coordinates are (row, col) pixels"
            )
        counts.add(len(points))
        grid_points[source] = maps.geometries[source].pixel_to_grid(points)
    if len(counts) > 1:
        raise CorrsegError(f"source images mark different numbers of keypoints: {sorted(counts)}")
    for source, painted in (labels or {}).items():
        source = int(source)
        painted = np.asarray(painted)
        shape = tuple(maps.geometries[source].image_shape)
        if painted.shape != shape or painted.dtype.kind not in "iub":
            raise InputImageError(
                f"labels of source image {source} must be integer {shape}, got "
                f"{painted.dtype} {painted.shape}; paint them on that image"
            )
        pixel_labels[source] = painted
    if not grid_points and not pixel_labels:
        raise CorrsegError("nothing to transfer: give keypoints or labels of a source image")
    return grid_points, pixel_labels


def transfer_over_collection(
    store: TokenStore,
    keys: Sequence[str],
    *,
    keypoints: Mapping[int, np.ndarray] | None = None,
    labels: Mapping[int, np.ndarray] | None = None,
    targets: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    scheduler: Any = None,
    backend: Any = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CollectionTransferResult:
    """Carry keypoints and painted labels of annotated images to every other image.

    Parameters
    ----------
    store : TokenStore
        Holding every image.
    keys : sequence of str
        The images, in collection order.
    keypoints : dict, optional
        ``{source image: (P, 2) (row, col) pixels}``; row k is the same keypoint on
        every source, NaN where it is not marked on that source.
    labels : dict, optional
        ``{source image: (H, W) integer labels}`` painted on its pixels (0 = none).
    targets : sequence of int, optional
        Images to carry them to (default: every image that is not a source).
    names, scheduler, backend, progress, cancel
        As for `cosegment_collection`.

    Returns
    -------
    CollectionTransferResult
        In each target's pixels, each point and label with a confidence and the source
        it came from; ``ranking`` least confident first.
    """
    from ..collection import transfer as transfer_module

    keys = list(keys)
    report = _checker(progress, cancel, "transfer")
    maps, mapper = _maps_and_mapper(store, keys, scheduler, backend, progress, cancel)
    grid_points, pixel_labels = _check_sources(maps, keypoints, labels)
    sources = sorted(set(grid_points) | set(pixel_labels))
    if targets is None:
        targets = [i for i in range(len(keys)) if i not in sources]
    targets = [int(t) for t in targets]
    result = transfer_module.transfer_collection(
        maps,
        keypoints=grid_points or None,
        labels=pixel_labels or None,
        targets=targets,
        mapper=mapper,
        progress=report,
    )
    geometries = maps.geometries
    points = {}
    for target, record in (getattr(result, "points", None) or {}).items():
        target = int(target)
        grid = np.asarray(_field(record, "target", 0), dtype=np.float64).reshape(-1, 2)
        points[target] = CollectionPoints(
            image=target,
            points=geometries[target].grid_to_pixel(grid),
            points_grid=grid,
            confidence=np.asarray(_field(record, "confidence", 1), dtype=np.float64),
            source=np.asarray(_field(record, "source", 2)).astype(np.int64),
            cycle_error=np.asarray(_field(record, "cycle_error", 3), dtype=np.float64),
            geometry=geometries[target],
        )
    carried = {}
    for target, record in (getattr(result, "labels", None) or {}).items():
        target = int(target)
        labels_grid = np.asarray(_field(record, "labels", 0))
        confidence_grid = np.asarray(_field(record, "confidence", 1), dtype=np.float64)
        carried[target] = CollectionLabels(
            image=target,
            labels=grid_labels_to_pixels(labels_grid, geometries[target]),
            confidence=grid_labels_to_pixels(confidence_grid, geometries[target]),
            labels_grid=labels_grid,
            confidence_grid=confidence_grid,
            source=_jsonable(_field(record, "source", 2)),
            geometry=geometries[target],
        )
    ranking = [(int(i), float(s)) for i, s in getattr(result, "ranking", [])]
    return CollectionTransferResult(_names(keys, names), sources, points, carried, ranking)
