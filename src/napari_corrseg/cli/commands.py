"""The match and cache subcommands. The parser and `main` live in ``cli/__init__.py``;
the pieces every subcommand shares in `napari_corrseg.cli.common`; the collection
subcommands (extract, coseg, transfer) in `napari_corrseg.cli.collection`. This module
only does the work, by calling `napari_corrseg.tasks.pipeline`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CorrsegError
from .common import (
    Context,
    _add_output_options,
    _maps,
    _read_images,
    _star_pairs,
    check_model_options,
)

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


def check_min_confidence(value: object) -> float | str:
    """``--min-confidence``: a number in [0, 1], or the literal ``"auto"`` (kept as is).

    Raises
    ------
    CorrsegError
        For anything else (NaN, 2, -1, a word): such a floor would silently keep all or
        no matches.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise CorrsegError(f"--min-confidence must be a number in 0..1 or 'auto', got {value}")
    return number


def run_match(args: argparse.Namespace, context: Context) -> int:
    from ..files import export
    from ..files.io import output_transaction
    from ..tasks.pipeline import match_images

    # every option is checked before any image is read or model loaded (the core would
    # raise only after the forward pass; a floor above 1 would silently drop every match)
    if args.max_matches is not None and args.max_matches < 0:
        raise CorrsegError(f"--max-matches must be 0 or more, got {args.max_matches}")
    min_confidence = check_min_confidence(args.min_confidence)
    check_model_options(args)
    paths = [args.source, *args.targets]
    images = _read_images(paths)
    with output_transaction(args.out, overwrite=args.overwrite) as out:
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
            name = f"pair_0_{j}"
            export.write_pair(out.path(name), result, images[0], images[j], tiny=engine.is_tiny)
            outputs.append(name)
            context.say(
                f"{paths[0].name} -> {paths[j].name}: {len(result)} matches at confidence >= "
                f"{result.min_confidence:.3g}{' (auto)' if min_confidence == 'auto' else ''}, "
                f"IMS {result.ims:.3f} grid cells -> {out.folder / name}"
            )
        report = out.commit(export.run_record("match", args, engine, maps, paths, outputs))
    context.say(report.summary())
    return 0


def cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["info", "clear"],
        help="info: where the caches are and how big; clear: delete the attention maps and "
        "latents (and, with --tokens, the token store)",
    )
    parser.add_argument(
        "--tokens",
        action="store_true",
        help="clear also deletes the default token store (every image's queries and keys: "
        "the collection commands must run the model again)",
    )


def run_cache(args: argparse.Namespace, context: Context) -> int:
    from ..collection.store_entries import clear_store, default_store_dir, store_usage
    from ..files.cache import MapCache
    from ..files.fingerprint import MEMO_FILE
    from ..files.latent_cache import LatentCache, default_latent_dir

    cache = MapCache()
    tokens = default_store_dir()
    if args.action == "clear":
        count = cache.clear()
        latents = LatentCache(default_latent_dir()).clear()
        (cache.directory / MEMO_FILE).unlink(missing_ok=True)  # remembered weight hashes
        print(
            f"removed {count} cached attention-map file(s) and {latents} cached latent(s) "
            f"from {cache.directory}"
        )
        if args.tokens:
            print(f"removed {clear_store(tokens)} image(s) of the token store {tokens}")
        elif store_usage(tokens)[0]:
            print(f"kept the token store {tokens} (add --tokens to delete it too)")
    else:
        info = cache.info()
        latents = len(list(default_latent_dir().glob("*.npz")))
        entries, size = store_usage(tokens)
        print(
            f"directory: {info.directory}\nentries:   {info.entries}\n"
            f"size:      {info.total_bytes / 2**20:.1f} MiB of {info.max_bytes / 2**20:.0f} "
            f"MiB (set NAPARI_CORRSEG_CACHE_MAX_MB to change)\nlatents:   {latents}\n"
            f"tokens:    {entries} image(s), {size / 2**20:.1f} MiB in {tokens} (no size "
            "limit: each image is computed once, ever; 'cache clear --tokens' deletes it)"
        )
    return 0
