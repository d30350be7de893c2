"""The match, coseg, transfer and cache subcommands. The parser and `main` live in
``cli/__init__.py``; the pieces every subcommand shares in `napari_corrseg.cli.common`;
this module only does the work, by calling `napari_corrseg.tasks.pipeline`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import CorrsegError, InputImageError
from .common import Context, _add_output_options, _maps, _read_images, _star_pairs

# -- subcommands -----------------------------------------------------------------------


def match_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="source image")
    parser.add_argument("targets", type=Path, nargs="+", metavar="target", help="target image(s)")
    _add_output_options(parser)
    parser.add_argument(
        "--max-matches",
        type=int,
        default=None,
        help="keep at most this many matches per pair, spread over the source image, best first",
    )
    parser.add_argument(
        "--min-confidence",
        default="auto",
        help="drop matches below this confidence (0..1); 'auto' (default) keeps the matches "
        "the pair's cycle consistency supports; 0 keeps every token",
    )
    parser.add_argument(
        "--mutual", action="store_true", help="keep only mutual nearest neighbours"
    )


def run_match(args: argparse.Namespace, context: Context) -> int:
    from ..files import export
    from ..files.io import prepare_output_dir
    from ..tasks.pipeline import match_images

    # checked before any image is read or model loaded (the core would raise only after
    # the forward pass; a NaN floor would silently drop every match)
    if args.max_matches is not None and args.max_matches < 0:
        raise CorrsegError(f"--max-matches must be 0 or more, got {args.max_matches}")
    min_confidence = _min_confidence(args.min_confidence)
    paths = [args.source, *args.targets]
    images = _read_images(paths)
    out, reused = prepare_output_dir(args.out, overwrite=args.overwrite)
    engine, maps = _maps(args, context, images, _star_pairs(len(images)))
    outputs = []
    for j in range(1, len(images)):
        result = match_images(
            maps,
            0,
            j,
            max_matches=args.max_matches,
            min_confidence=min_confidence,
            mutual=args.mutual,
        )
        folder = export.write_pair(out / f"pair_0_{j}", result, images[0], images[j])
        outputs.append(str(folder.relative_to(out)))
        context.say(
            f"{paths[0].name} -> {paths[j].name}: {len(result)} matches at confidence >= "
            f"{result.min_confidence:.3g}{' (auto)' if min_confidence == 'auto' else ''}, "
            f"IMS {result.ims:.3f} grid cells -> {folder}"
        )
    export.write_run(out, "match", args, engine, maps, paths, outputs)
    context.say(f"results in {out}" + (" (replacing earlier results)" if reused else ""))
    return 0


def _min_confidence(text) -> float | str:
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise CorrsegError(f"--min-confidence must be a number in 0..1 or 'auto', got {text!r}")
    return value


def coseg_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, nargs="+", metavar="image", help="two or more images")
    _add_output_options(parser)
    parser.add_argument(
        "--threshold",
        default="auto",
        help="merge threshold, or 'auto' (default) to choose it from the data",
    )


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


def run_coseg(args: argparse.Namespace, context: Context) -> int:
    from ..files import export
    from ..files.io import prepare_output_dir
    from ..tasks.pipeline import cosegment_images

    if len(args.images) < 2:
        raise CorrsegError("coseg needs at least two images")
    threshold = _threshold(args.threshold)
    images = _read_images(args.images)
    out, _ = prepare_output_dir(args.out, overwrite=args.overwrite)
    engine, maps = _maps(args, context, images, "all")
    result = cosegment_images(maps, threshold=threshold)
    outputs = export.write_coseg(out, result, images)
    shared = sum(1 for s in result.segments if s.get("shared"))
    context.say(
        f"{len(result.segments)} segments ({shared} shared by several images), "
        f"threshold {result.threshold:.4g} -> {out}"
    )
    if getattr(result, "no_clear_structure", False):
        context.warn(
            "no clear structure: the attention does not separate into parts (the merge "
            "distance less than doubles at the cut); the segments are not to be trusted"
        )
    export.write_run(out, "coseg", args, engine, maps, args.images, outputs)
    return 0


def transfer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="source image")
    parser.add_argument(
        "points", type=Path, help="CSV of source keypoints (napari Points CSV or row,col)"
    )
    parser.add_argument("targets", type=Path, nargs="+", metavar="target", help="target image(s)")
    _add_output_options(parser)


def run_transfer(args: argparse.Namespace, context: Context) -> int:
    from ..files import export
    from ..files.io import prepare_output_dir, read_points_csv
    from ..tasks.pipeline import transfer_keypoints

    points = read_points_csv(args.points)
    paths = [args.source, *args.targets]
    images = _read_images(paths)
    _check_points_inside(points, images[0].shape[:2], args.points)
    out, _ = prepare_output_dir(args.out, overwrite=args.overwrite)
    engine, maps = _maps(args, context, images, _star_pairs(len(images)))
    outputs = []
    for j in range(1, len(images)):
        moved = transfer_keypoints(maps, 0, j, points)
        folder = export.write_transfer(out / f"transfer_0_{j}", moved, images[0], images[j])
        outputs.append(str(folder.relative_to(out)))
        context.say(
            f"{len(points)} keypoints -> {paths[j].name}: mean confidence "
            f"{float(np.mean(moved.confidence)):.3f} -> {folder}"
        )
    export.write_run(
        out,
        "transfer",
        args,
        engine,
        maps,
        paths,
        outputs,
        extra={"points_file": str(args.points)},
    )
    return 0


def _check_points_inside(points: np.ndarray, shape: tuple[int, int], path: Path) -> None:
    inside = (points >= -0.5).all(axis=1) & (points <= np.asarray(shape) - 0.5).all(axis=1)
    if not inside.all():
        bad = int(np.flatnonzero(~inside)[0])
        raise InputImageError(
            f"point {bad} of {path} ({points[bad][0]:g}, {points[bad][1]:g}) lies outside the "
            f"source image of {shape[0]}x{shape[1]} pixels; coordinates are (row, col) pixels"
        )


def cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["info", "clear"],
        help="info: where the cache is and how big; clear: delete it",
    )


def run_cache(args: argparse.Namespace, context: Context) -> int:
    from ..files.cache import MapCache
    from ..files.latent_cache import LatentCache, default_latent_dir

    cache = MapCache()
    if args.action == "clear":
        count = cache.clear()
        latents = LatentCache(default_latent_dir()).clear()
        print(
            f"removed {count} cached attention-map file(s) and {latents} cached latent(s) "
            f"from {cache.directory}"
        )
    else:
        info = cache.info()
        print(
            f"directory: {info.directory}\nentries:   {info.entries}\n"
            f"size:      {info.total_bytes / 2**20:.1f} MiB of {info.max_bytes / 2**20:.0f} "
            "MiB (set NAPARI_CORRSEG_CACHE_MAX_MB to change)"
        )
    return 0
