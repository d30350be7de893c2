"""The match and cache subcommands. The parser and `main` live in ``cli/__init__.py``;
the pieces every subcommand shares in `napari_corrseg.cli.common`; the collection
subcommands (extract, coseg, transfer) in `napari_corrseg.cli.collection`. This module
only does the work, by calling `napari_corrseg.tasks.pipeline`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import CorrsegError
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
        type=float,
        default=0.0,
        help="drop matches below this confidence (0..1)",
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
