"""A collection's input images: files and folders to image files, names, content keys.

numpy only (images are read with `napari_corrseg.files.io.read_image`); imports neither
torch nor Qt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..collection.store import image_key
from ..errors import Cancelled, InputImageError

__all__ = [
    "CollectionImages",
    "checked_progress",
    "collect_images",
    "distinct_names",
    "list_image_files",
    "unique_names",
]

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


def checked_progress(progress: Progress | None, cancel: Cancel | None, what: str) -> Progress:
    """``progress`` that also polls ``cancel`` (True raises `Cancelled`)."""

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
    return distinct_names(Path(path).stem or "image" for path in paths)


def distinct_names(names: Iterable[str]) -> list[str]:
    """``names`` with repeats numbered (``a``, ``a-2``, ...), so that each is used once."""
    out, used = [], set()
    for stem in names:
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        out.append(name)
    return out


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

    Files are not kept in memory; they are read again when computed. Nor are lazy
    arrays (dask, zarr): each is read once here and again when needed.

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
    report = checked_progress(progress, cancel, "reading the images")
    keys, shapes, sources = [], [], []
    for index, item in enumerate(images):
        if isinstance(item, str | Path):
            from ..files.io import read_image

            array, source = read_image(item), Path(item)
        else:
            array = np.asarray(item)
            # a lazy plane (dask, zarr) is kept lazy: read again when computed or shown
            source = array if isinstance(item, np.ndarray) else item
        try:
            keys.append(image_key(array))
        except InputImageError as error:
            raise InputImageError(f"{names[index]}: {error}") from None
        shapes.append(tuple(int(v) for v in array.shape[:2]))
        sources.append(source)
        report("read", (index + 1) / len(images))
    return CollectionImages(keys, list(names), shapes, sources)
