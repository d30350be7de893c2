"""What every subcommand shares: the run context (messages, progress bar), the model
and output options, engine loading with the tiny-model banner, and map extraction."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorrsegError

#: The one line said whenever the tiny random-weight model is used.
TINY_NOTICE = (
    "TINY RANDOM model: results are NOT semantic, they only show that the software works; "
    "for real results use --model sd2-base (downloads about 5 GB once) or --model PATH to "
    "a local SD2.1 folder or .safetensors file (or set NAPARI_CORRSEG_MODEL)"
)
#: Largest --seed (torch seeds are 64-bit; the cache key stores it as a JSON integer).
MAX_SEED = 2**63 - 1
#: Timesteps of Stable Diffusion 2 (``scheduler.config.num_train_timesteps``).
N_TIMESTEPS = 1000


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


def check_model_options(args: argparse.Namespace) -> None:
    """Check --timestep, --seed and --layers before any image is read or model loaded.

    Raises
    ------
    SettingError
        Naming the option, the value and the range (exit code 2).
    """
    timestep = getattr(args, "timestep", 261)
    if not 0 <= timestep < N_TIMESTEPS:
        raise SettingError(f"--timestep must be in 0..{N_TIMESTEPS - 1}, got {timestep}")
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise SettingError(f"--seed must be an integer in 0..{MAX_SEED}, got {seed}")
    layers = _parse_layers(getattr(args, "layers", "auto"))
    if layers != "auto":
        if not layers:
            raise SettingError(
                "--layers is empty; pass 'auto' or comma-separated grid sides or layer names"
            )
        bad = [n for n in layers if isinstance(n, int) and n < 1]
        if bad:
            raise SettingError(f"--layers: grid sides must be positive, got {bad[0]}")


def _check_layer_sides(args: argparse.Namespace, image_size: int) -> None:
    """Grid sides in --layers that no SD2-shaped UNet of this input size has."""
    layers = _parse_layers(args.layers)
    if layers == "auto":
        return
    latent = image_size // 8
    sides = [latent >> k for k in range(4) if latent >> k]
    for side in (n for n in layers if isinstance(n, int)):
        if side not in sides:
            raise SettingError(
                f"--layers {args.layers}: no self-attention layer has a {side}x{side} grid at "
                f"{image_size} px; available grid sides: {sorted(sides)} (check --layers)"
            )


def _load_engine(args: argparse.Namespace, context: Context):
    """The model as a `LazyEngine` (loaded only on a cache miss), said in one line when
    it is the tiny random model. ``--no-cache`` also keeps latents and the weights'
    fingerprints off the disk."""
    from ..engine import LazyEngine
    from ..files.fingerprint import remember_on_disk

    no_cache = bool(getattr(args, "no_cache", False))
    context.say(f"model {args.model!r} on {args.device} ...")
    with warnings.catch_warnings(record=True) as caught, remember_on_disk(not no_cache):
        warnings.simplefilter("always")
        # Loads only when the model's identity cannot be resolved from disk or when the
        # maps are not cached, so a cache hit skips loading the weights.
        options = {"latent_cache": False} if no_cache else {}
        engine = LazyEngine(args.model, device=args.device, **options)
        engine.is_tiny  # noqa: B018 - resolves (or loads) now, so load errors surface here
    fallback = None
    for warning in caught:
        text = str(warning.message)
        if "TINY RANDOM" in text:
            found = re.search(r"not available \((.*?)\);", text)
            fallback = found.group(1) if found else "not available"
        else:
            context.warn(text.splitlines()[0])
    if getattr(engine, "is_tiny", False):
        reason = f" (Stable Diffusion 2.1-base: {fallback})" if fallback else ""
        context.warn(TINY_NOTICE.replace("TINY RANDOM model", "TINY RANDOM model" + reason, 1))
    return engine


def _maps(args, context: Context, images: list[np.ndarray], pairs: Any):
    """Attention maps of ``images`` through the disk cache (unless ``--no-cache``)."""
    from ..files.fingerprint import remember_on_disk
    from ..tasks.pipeline import compute_maps

    check_model_options(args)
    engine = _load_engine(args, context)
    _check_layer_sides(args, engine.image_size)
    bar = context.progress()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            remember_on_disk(not args.no_cache),
        ):
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
        if "TINY RANDOM" not in str(warning.message):
            context.warn(str(warning.message).splitlines()[0])
    return engine, maps


def _read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    from ..files.io import read_image

    return [read_image(path) for path in paths]


def _star_pairs(n_images: int) -> list[tuple[int, int]]:
    """Image 0 against every other image, both directions."""
    return [pair for j in range(1, n_images) for pair in ((0, j), (j, 0))]
