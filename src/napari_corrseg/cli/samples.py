"""``napari-corrseg sample-data DIR``: copy the shipped sample images and keypoints to DIR.

So that every example of the documentation names files that exist: after
``napari-corrseg sample-data samples`` the folder holds ``sample_a.png`` and
``sample_b.png`` (the same toy creature in two poses, 256 x 256 RGB), ``sample_c.png``
(``sample_b.png`` mirrored, a third image for co-segmentation), and
``sample_a_keypoints.csv`` / ``sample_b_keypoints.csv`` (eight named keypoints, napari
Points CSV). Registered with the command line through ``cli.EXTENSION_MODULES``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The files ``sample-data`` writes, in order.
SAMPLE_DATA_FILES = (
    "sample_a.png",
    "sample_b.png",
    "sample_c.png",
    "sample_a_keypoints.csv",
    "sample_b_keypoints.csv",
)


def sample_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="where to put the sample files")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files of the same name that differ"
    )


def write_sample_data(folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write `SAMPLE_DATA_FILES` into ``folder`` (created); return their paths.

    A file that is already there with the same bytes is left as it is; one that differs
    is refused unless ``overwrite``.

    Raises
    ------
    napari_corrseg.errors.OutputError
        The folder cannot be written, or would lose a different file of the same name.
    """
    import imageio.v3 as iio

    from ..errors import OutputError
    from ..files.io import read_image, write_bytes
    from ..files.sample_data import sample_paths

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder; choose another folder")
    first, second = sample_paths()
    contents = {
        "sample_a.png": first.read_bytes(),
        "sample_b.png": second.read_bytes(),
        "sample_c.png": iio.imwrite("<bytes>", read_image(second)[:, ::-1], extension=".png"),
        "sample_a_keypoints.csv": first.with_name("sample_a_keypoints.csv").read_bytes(),
        "sample_b_keypoints.csv": second.with_name("sample_b_keypoints.csv").read_bytes(),
    }
    clashes = [
        name
        for name, data in contents.items()
        if (folder / name).exists() and (folder / name).read_bytes() != data
    ]
    if clashes and not overwrite:
        raise OutputError(
            f"{folder} already holds other files named {', '.join(clashes)}; choose another "
            "folder or pass --overwrite"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in SAMPLE_DATA_FILES:
            target = folder / name
            if not (target.exists() and target.read_bytes() == contents[name]):
                write_bytes(target, contents[name])
            written.append(target)
    except OSError as error:
        raise OutputError(f"cannot write to {folder}: {error.strerror or error}") from None
    return written


def run_sample_data(args: argparse.Namespace, context) -> int:
    written = write_sample_data(args.folder, overwrite=args.overwrite)
    context.say(
        f"wrote {len(written)} files to {args.folder}: {', '.join(p.name for p in written)}"
    )
    context.say(f"try: napari-corrseg match {written[0]} {written[1]} --out matches")
    return 0


def register_cli() -> None:
    """Add ``sample-data`` to the command line."""
    from . import Subcommand, register

    register(
        Subcommand(
            "sample-data",
            "copy the sample images and keypoints into a folder, to try the commands on",
            sample_data_arguments,
            run_sample_data,
            model_options=False,
        )
    )


register_cli()
