"""The ``napari-corrseg`` command line: match, coseg, transfer, demo, cache.

Every subcommand is one `Subcommand` record in `SUBCOMMANDS` (name, help, a function
that adds its arguments, a function that runs it). Adding one, e.g. ``evaluate``, is one
line: ``SUBCOMMANDS.append(Subcommand(...))`` here, or `register` from another module
listed in `EXTENSION_MODULES`.

Exit codes: 0 success, 1 other user error, 2 bad command line (argparse, or an option
value the model cannot use such as ``--layers 99``), 3 unusable input (image or points
file), 4 model cannot be loaded, 5 output cannot be written, 130 cancelled or
interrupted. A user error prints ONE line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._version import __version__
from ..errors import Cancelled, CorrsegError, InputImageError, ModelLoadError, OutputError
from . import commands as _commands
from . import demo as _demo
from .common import Context, SettingError, add_model_options

__all__ = [
    "EXIT_CODES",
    "SUBCOMMANDS",
    "Context",
    "Subcommand",
    "build_parser",
    "main",
    "register",
]

EXIT_CODES: dict[type[BaseException], int] = {
    SettingError: 2,
    InputImageError: 3,
    ModelLoadError: 4,
    OutputError: 5,
    Cancelled: 130,
    CorrsegError: 1,
}


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: ``add_arguments(parser)`` then ``run(args, context) -> exit code``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Context], int]
    model_options: bool = True


SUBCOMMANDS: list[Subcommand] = []
#: Modules imported when the parser is built; each may call `register`. A missing
#: module is skipped, so a subcommand can live in an optional part of the package.
EXTENSION_MODULES: list[str] = ["napari_corrseg.harness.cli"]


def register(subcommand: Subcommand) -> Subcommand:
    """Add a subcommand (replacing one of the same name)."""
    SUBCOMMANDS[:] = [s for s in SUBCOMMANDS if s.name != subcommand.name]
    SUBCOMMANDS.append(subcommand)
    return subcommand


SUBCOMMANDS.extend(
    [
        Subcommand(
            "match",
            "correspondences, metric maps and a match picture per pair",
            _commands.match_arguments,
            _commands.run_match,
        ),
        Subcommand(
            "coseg",
            "co-segmentation labels shared across images",
            _commands.coseg_arguments,
            _commands.run_coseg,
        ),
        Subcommand(
            "transfer",
            "carry keypoints from a source image to target images",
            _commands.transfer_arguments,
            _commands.run_transfer,
        ),
        Subcommand(
            "demo",
            "the whole pipeline on the shipped sample pair",
            _demo.demo_arguments,
            _demo.run_demo,
        ),
        Subcommand(
            "cache",
            "show or clear the attention-map cache",
            _commands.cache_arguments,
            _commands.run_cache,
            model_options=False,
        ),
    ]
)


# -- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every registered subcommand."""
    for module in EXTENSION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    parser = argparse.ArgumentParser(
        prog="napari-corrseg",
        description="Correspondences, reliability maps and co-segmentation from one Stable "
        "Diffusion 2 forward pass.",
        epilog="Start with 'napari-corrseg demo'. Without Stable Diffusion 2.1 weights the "
        "default --model auto falls back to a tiny random model whose results are NOT "
        "semantic; pass --model sd2-base (downloads about 5 GB once) or --model PATH to a "
        "local diffusers folder or .safetensors checkpoint. 'napari-corrseg COMMAND --help' "
        "lists each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar or informational messages"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        sub = commands.add_parser(
            subcommand.name, help=subcommand.help, description=subcommand.help
        )
        sub.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="no progress bar or informational messages",
        )
        subcommand.add_arguments(sub)
        if subcommand.model_options:
            add_model_options(sub)
        sub.set_defaults(_subcommand=subcommand)
    return parser


def exit_code(error: BaseException) -> int:
    """The exit code for a user error (most specific class wins)."""
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in run.json
    # the library logs what it also warns about; the CLI shows warnings as one-liners
    logging.getLogger("napari_corrseg").addHandler(logging.NullHandler())
    context = Context(quiet=args.quiet)
    try:
        return int(args._subcommand.run(args, context) or 0)
    except CorrsegError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"napari-corrseg: error: {message}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        print(
            "napari-corrseg: interrupted; finished files are complete, nothing half-written "
            "was left",
            file=sys.stderr,
        )
        return 130
