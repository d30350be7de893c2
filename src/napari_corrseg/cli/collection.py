"""The collection subcommands: ``extract``, ``coseg`` and ``transfer`` over folders.

Each takes image files and/or folders, fills the token store (``--store``; default a
store in the user cache folder, so a rerun resumes and computes only what is missing),
and runs in process or on Dask (``--scheduler none|local|local:N|ADDRESS``). The store
size estimate is printed before anything is computed. The work is done by
`napari_corrseg.tasks.collection` and `napari_corrseg.tasks.distributed`; outputs are
written by `napari_corrseg.files.collection_export`.
"""

from __future__ import annotations

import argparse
import contextlib
import types
import warnings
from pathlib import Path

import numpy as np

from ..errors import CorrsegError, InputImageError
from .common import Context, SettingError, _add_output_options, _load_engine, _parse_layers

__all__ = [
    "coseg_arguments",
    "extract_arguments",
    "run_coseg",
    "run_extract",
    "run_transfer",
    "transfer_arguments",
]


def _collection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("collection")
    group.add_argument(
        "--store",
        type=Path,
        default=None,
        help="token store folder: each image's queries and keys, computed once and reused "
        "by every later run (default: a store in the user cache folder)",
    )
    group.add_argument(
        "--scheduler",
        default="none",
        help="'none' (in this process, default), 'local' (a Dask cluster on this machine: "
        "one worker per GPU, else per 4 CPU cores), 'local:N' (N workers), or the "
        "address of a running Dask scheduler (tcp://host:8786)",
    )
    group.add_argument(
        "--scheduler-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to try reaching a Dask scheduler address (10)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per UNet pass (default: chosen from free memory, at most 8); with "
        "Dask also the images per task",
    )
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check stored entries' checksums before the run (they are still "
        "checked when read)",
    )


def _inputs(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("inputs", type=Path, nargs="+", metavar="FOLDER|IMAGE", help=what)


def extract_arguments(parser: argparse.ArgumentParser) -> None:
    _inputs(parser, "image files and/or folders of images")
    _collection_options(parser)


def coseg_arguments(parser: argparse.ArgumentParser) -> None:
    _inputs(parser, "two or more images: files and/or folders")
    _add_output_options(parser)
    parser.add_argument(
        "--threshold",
        default="auto",
        help="merge threshold, or 'auto' (default) to choose it from the data",
    )
    _collection_options(parser)


def transfer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="the annotated source image")
    parser.add_argument(
        "annotation",
        type=Path,
        metavar="POINTS.csv|LABELS.tif",
        help="what was marked on the source: a keypoint table (napari Points CSV or "
        "row,col) or painted labels (a napari Labels layer saved as TIFF or PNG)",
    )
    _inputs(parser, "target images: files and/or folders (annotated images are skipped)")
    parser.add_argument(
        "--source",
        dest="more_sources",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGE", "POINTS.csv|LABELS.tif"),
        help="one more annotated image and what was marked on it; repeat for several. Row k "
        "of every keypoint table is the same keypoint (leave a row empty where it is not "
        "visible); each proposal comes from the source that supports it best",
    )
    _add_output_options(parser)
    _collection_options(parser)


def _threshold(text: str) -> float | str:
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise CorrsegError(f"--threshold must be a positive number or 'auto', got {text!r}")
    return value


def _check_common(args: argparse.Namespace):
    """Option checks that need no file: the scheduler string and the batch size."""
    from ..tasks.distributed import SchedulerError, parse_scheduler

    if args.batch_size is not None and args.batch_size < 1:
        raise SettingError(f"--batch-size must be 1 or more, got {args.batch_size}")
    try:
        return parse_scheduler(args.scheduler)
    except SchedulerError as error:
        raise SettingError(str(error)) from None


class _Run:
    """The model, store, scheduler and progress bar one collection command shares."""

    def __init__(self, args: argparse.Namespace, context: Context, spec):
        self.args, self.context, self.spec = args, context, spec
        self.engine = _load_engine(args, context)
        self.layers = _parse_layers(args.layers)
        self.scheduler = None
        self.bar = context.progress()

    def open_store(self):
        from ..collection.store_entries import default_store_dir
        from ..tasks.collection import open_store

        folder = self.args.store if self.args.store is not None else default_store_dir()
        return open_store(
            folder,
            self.engine,
            layers=self.layers,
            timestep=self.args.timestep,
            seed=self.args.seed,
        )

    def start_scheduler(self) -> None:
        from ..tasks.distributed import EngineSpec, open_scheduler

        if self.spec.kind == "none":
            return
        self.context.say(f"starting Dask ({self.args.scheduler}) and loading the model on it ...")
        factory = EngineSpec(model=self.args.model, device=self.args.device)
        self.scheduler = open_scheduler(
            self.spec, factory, device=self.args.device, timeout=self.args.scheduler_timeout
        )

    def backend(self):
        """In process: the torch backend on the chosen device (no model needed)."""
        if self.scheduler is not None:
            return None
        from ..engine.models import resolve_device
        from ..engine.query_key import TorchAttention

        return TorchAttention(resolve_device(self.args.device))

    def fill(self, store, paths):
        from ..tasks.collection import fill_store

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                report = fill_store(
                    store,
                    paths,
                    self.engine,
                    batch_size=self.args.batch_size,
                    verify=not self.args.no_verify,
                    scheduler=self.scheduler,
                    on_plan=lambda plan: self.context.say(plan.describe()),
                    progress=self.bar,
                )
            except ValueError as error:
                # the engine checks --layers / --timestep with ValueError: the user's values
                text = str(error).lower()
                if isinstance(error, CorrsegError) or not ("layer" in text or "timestep" in text):
                    raise
                raise SettingError(f"{error} (check --layers, --timestep and --seed)") from None
            finally:
                self.bar.close()
        for warning in caught:
            self.context.warn(str(warning.message).splitlines()[0])
        self.context.say(report.describe())
        return report

    def close(self) -> None:
        self.bar.close()
        if self.scheduler is not None:
            self.scheduler.close()


@contextlib.contextmanager
def _running(args, context, spec):
    run = _Run(args, context, spec)
    try:
        run.start_scheduler()
        yield run
    finally:
        run.close()


def _record(command: str, run: _Run, store, report, paths, geometries, outputs) -> dict:
    """``run.json``: what ran, on which files, with which model, store and scheduler."""
    from ..files.export import run_record

    args = run.args
    maps = types.SimpleNamespace(
        geometries=geometries, settings=store.settings, grid=geometries[0].grid
    )
    extra = {
        "store": str(store.path),
        "scheduler": args.scheduler,
        "fill": {
            "computed": report.computed,
            "reused": report.reused,
            "recomputed": report.recomputed,
        },
    }
    if command == "transfer":
        extra["annotations"] = [
            {"image": str(image), "file": str(annotation)}
            for image, annotation in [(args.source, args.annotation), *args.more_sources]
        ]
    return run_record(command, args, run.engine, maps, paths, outputs, extra=extra)


def run_extract(args: argparse.Namespace, context: Context) -> int:
    from ..tasks.collection import list_image_files

    spec = _check_common(args)
    paths = list_image_files(args.inputs)
    with _running(args, context, spec) as run:
        store = run.open_store()
        run.fill(store, paths)
    context.say(f"token store: {store.path}")
    return 0


def run_coseg(args: argparse.Namespace, context: Context) -> int:
    from ..files.collection_export import write_collection_coseg
    from ..files.io import output_transaction
    from ..tasks.collection import collect_images, cosegment_collection, list_image_files

    threshold = _threshold(args.threshold)
    spec = _check_common(args)
    paths = list_image_files(args.inputs)
    if len(paths) < 2:
        raise CorrsegError("coseg needs at least two images")
    images = collect_images(paths)  # reads every file once: a bad one is named now
    with (
        output_transaction(args.out, overwrite=args.overwrite) as out,
        _running(args, context, spec) as run,
    ):
        store = run.open_store()
        report = run.fill(store, images)
        result = cosegment_collection(
            store,
            report.keys,
            names=images.names,
            threshold=threshold,
            scheduler=run.scheduler,
            backend=run.backend(),
            progress=run.bar,
        )
        run.bar.close()
        outputs = write_collection_coseg(out.staging, result)
        committed = out.commit(
            _record("coseg", run, store, report, paths, result.geometries, outputs)
        )
    shared = sum(1 for s in result.segments if s.get("shared"))
    worst = result.names[result.ranking[0][0]] if result.ranking else "-"
    context.say(
        f"{len(result.segments)} segments ({shared} shared by several images); least "
        f"confident image: {worst}"
    )
    if result.no_clear_structure:
        context.warn(
            "no clear structure: the attention does not separate into parts (the merge "
            "distance less than doubles at the cut); the segments are not to be trusted"
        )
    context.say(committed.summary())
    return 0


def _read_annotations(args: argparse.Namespace, images) -> tuple[dict, dict, dict]:
    """The keypoint tables and label images of every annotated image, checked against
    that image before any model loads: ``({image: points}, {image: labels}, columns)``."""
    from ..files.io import read_label_image, read_points_table

    keypoints, labels, columns = {}, {}, {}
    pairs = [(args.source, args.annotation), *((Path(i), Path(a)) for i, a in args.more_sources)]
    for index, (_, annotation) in enumerate(pairs):
        shape = images.shapes[index]
        if annotation.suffix.lower() in (".csv", ".tsv", ".txt"):
            # with several sources a keypoint may be hidden on some: empty rows allowed
            table = read_points_table(annotation, allow_missing=len(pairs) > 1)
            _check_points_inside(table.points, shape, annotation)
            keypoints[index] = table.points
            columns = columns or table.columns  # the first table's names label the rows
        else:
            painted = read_label_image(annotation)
            if painted.shape != tuple(shape):
                raise InputImageError(
                    f"labels {annotation} are {painted.shape[0]}x{painted.shape[1]} but their "
                    f"image is {shape[0]}x{shape[1]} pixels; paint them on that image"
                )
            labels[index] = painted
    counts = {len(points) for points in keypoints.values()}
    if len(counts) > 1:
        raise InputImageError(
            f"the keypoint tables have different numbers of rows {sorted(counts)}; row k of "
            "every table is keypoint k (leave a row empty where it is not visible)"
        )
    if keypoints:
        marked = np.any([np.isfinite(p).all(axis=1) for p in keypoints.values()], axis=0)
        if not marked.all():
            raise InputImageError(
                f"keypoint {int(np.argmin(marked))} is marked on no annotated image; give its "
                "position on at least one"
            )
    return keypoints, labels, columns


def run_transfer(args: argparse.Namespace, context: Context) -> int:
    from ..files.collection_export import write_collection_transfer
    from ..files.io import output_transaction
    from ..tasks.collection import (
        collect_images,
        list_image_files,
        transfer_over_collection,
    )

    spec = _check_common(args)
    sources = [args.source, *(Path(image) for image, _ in args.more_sources)]
    sources = [list_image_files([source])[0] for source in sources]
    annotated = {source.resolve() for source in sources}
    if len(annotated) < len(sources):
        raise InputImageError("an annotated image is given twice; give each source once")
    targets = [p for p in list_image_files(args.inputs) if p.resolve() not in annotated]
    if not targets:
        raise InputImageError("no target images besides the annotated ones; give other images")
    paths = [*sources, *targets]
    images = collect_images(paths)
    keypoints, labels, columns = _read_annotations(args, images)
    with (
        output_transaction(args.out, overwrite=args.overwrite) as out,
        _running(args, context, spec) as run,
    ):
        store = run.open_store()
        report = run.fill(store, images)
        result = transfer_over_collection(
            store,
            report.keys,
            keypoints=keypoints or None,
            labels=labels or None,
            names=images.names,
            scheduler=run.scheduler,
            backend=run.backend(),
            progress=run.bar,
        )
        run.bar.close()
        outputs = write_collection_transfer(
            out.staging, result, columns=columns, annotations=keypoints
        )
        geometries = [store.geometry(key) for key in report.keys]
        committed = out.commit(_record("transfer", run, store, report, paths, geometries, outputs))
    marked = " and ".join(
        part
        for part in (
            f"{len(next(iter(keypoints.values())))} keypoints" if keypoints else "",
            "painted labels" if labels else "",
        )
        if part
    )
    worst = result.names[result.ranking[0][0]] if result.ranking else "-"
    context.say(
        f"{marked} of {len(sources)} annotated image(s) -> {len(targets)} images; least "
        f"confident: {worst}"
    )
    context.say(committed.summary())
    return 0


def _check_points_inside(points: np.ndarray, shape: tuple[int, int], path: Path) -> None:
    marked = np.isfinite(points).all(axis=1)
    inside = (points >= -0.5).all(axis=1) & (points <= np.asarray(shape) - 0.5).all(axis=1)
    if not (inside | ~marked).all():
        bad = int(np.flatnonzero(~inside & marked)[0])
        raise InputImageError(
            f"point {bad} of {path} ({points[bad][0]:g}, {points[bad][1]:g}) lies outside the "
            f"source image of {shape[0]}x{shape[1]} pixels; coordinates are (row, col) pixels"
        )
