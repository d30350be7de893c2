"""Reading one image file exactly, or refusing it with a message that says why.

What a file holds is decided from what the file says, never from the shape of the
decoded array: a TIFF by its page count, samples per pixel, extra samples and
photometric tag (a 3-page grey stack is a stack, not an RGB image); a PNG or JPEG by
Pillow's mode and frame count. What comes out is always one of

* ``(H, W)`` grey (bool, integer or float; 16-bit stays 16-bit),
* ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (grey + alpha becomes RGBA with equal colour
  channels, so `napari_corrseg.core.images.prepare_image` composites it like RGBA).

16-bit PNGs are decoded at 16 bits by `napari_corrseg.files.png16` (Pillow would cut
colour ones to 8). Refused with `InputImageError`: stacks, time series, animations,
multichannel images that are not colour, CMYK TIFFs, folders, empty or damaged files,
images under 16 pixels a side, NaN or infinite values.

numpy, Pillow (through imageio's dependency) and tifffile; no torch, no Qt.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..core.images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, prepare_image
from ..errors import InputImageError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_label_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ONE_PLANE = (
    "save the plane you want as its own file (in napari: the slice shown; in Python: "
    "tifffile.imwrite('plane.tif', stack[k]))"
)


class _Refused(Exception):
    """A decodable file that is not one 2-D grey or colour image."""


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG, BMP or TIFF as one 2-D grey, RGB or RGBA array.

    Parameters
    ----------
    path : str or Path
        The image file.

    Returns
    -------
    numpy.ndarray
        ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` in the file's own pixel type (uint8,
        uint16, float32, ...): values are not rescaled here.

    Raises
    ------
    InputImageError
        If the file is missing, a folder, unreadable, a stack or animation, not grey or
        colour, too small, or holds NaN; the message names the file and the fix.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputImageError(
            f"image {path} is a folder, not an image file; name the image files in it "
            f"(e.g. {path}/*.png)"
        )
    if not path.exists():
        raise InputImageError(f"image {path} does not exist; check the path")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as error:
        raise InputImageError(f"cannot read image {path}: {error.strerror or error}") from None
    if not magic:
        raise InputImageError(f"image {path} is an empty file (0 bytes)")
    try:
        if magic[:4] in _TIFF_MAGIC:
            image = _read_tiff(path)
        elif magic == _PNG_MAGIC:
            image = _read_png(path)
        else:
            image = _read_pillow(path)
    except _Refused as refusal:
        raise InputImageError(f"image {path} {refusal}") from None
    except InputImageError:
        raise
    except Exception as error:  # any decoder failure is the user's file, not our bug
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise InputImageError(
            f"cannot read image {path} ({type(error).__name__}: {reason}); napari-corrseg "
            "reads PNG, JPEG, BMP and TIFF files; open it in an image viewer to check it"
        ) from None
    return _check(image, path)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a painted label image (TIFF or PNG): one 2-D plane of integer ids, 0 = none.

    This is what napari's Labels layer saves. Unlike `read_image` the values are ids, so
    nothing is rescaled; a colour, float, multi-page or negative-valued file is refused.

    Raises
    ------
    InputImageError
        Missing, unreadable, not one 2-D integer plane, or with negative ids.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputImageError(f"labels {path} is a folder; give the label image file")
    if not path.is_file():
        raise InputImageError(f"labels {path} does not exist; check the path")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                if len(tiff.pages) != 1:
                    raise InputImageError(
                        f"labels {path} has {len(tiff.pages)} pages; save the labels of "
                        "the one annotated image as a single plane"
                    )
                labels = tiff.pages[0].asarray()
        else:
            import imageio.v3 as iio

            labels = iio.imread(path)
    except InputImageError:
        raise
    except Exception as error:  # any decoder failure is the user's file, not our bug
        raise InputImageError(
            f"cannot read labels {path} ({type(error).__name__}: {error}); save the Labels "
            "layer as TIFF"
        ) from None
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise InputImageError(
            f"labels {path} hold {labels.dtype} values of shape {labels.shape}; painted "
            "labels are one 2-D plane of integer ids (save a napari Labels layer as TIFF)"
        )
    if labels.size and labels.min() < 0:
        raise InputImageError(f"labels {path} has negative ids; ids are 0 (none) or more")
    return labels


def _check(image: np.ndarray, path: Path) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise InputImageError(
            f"image {path} has pixel type {image.dtype}; save real-valued pixels "
            "(integers or floats)"
        )
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InputImageError(
            f"image {path} is {height}x{width} pixels; the smallest usable image is "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (one attention token); use a larger image "
            "or upsample it"
        )
    # Fail on NaN or huge images now, before a model is loaded for nothing.
    prepare_image(image, name=f"image {path}")
    return image


# -- TIFF ------------------------------------------------------------------------------


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _Refused("holds no image")
        series = tif.series[0]
        n_pages = len(series.pages)
        if n_pages > 1:
            raise _Refused(
                f"holds {n_pages} pages of {series.shape[-2]}x{series.shape[-1]} pixels "
                f"(a stack or time series, axes {series.axes}), not one image; {_ONE_PLANE}"
            )
        page = series.pages[0]
        if page is None or not hasattr(page, "photometric"):
            raise _Refused("holds no readable first page")
        if getattr(page, "imagedepth", 1) > 1:
            raise _Refused(f"is a volume ({page.imagedepth} planes deep); {_ONE_PLANE}")
        _check_pixels(page.imagelength, page.imagewidth)
        data = page.asarray()
        photometric = tifffile.PHOTOMETRIC(page.photometric)
        samples = int(page.samplesperpixel)
        if samples > 1 and int(page.planarconfig) == int(tifffile.PLANARCONFIG.SEPARATE):
            data = np.moveaxis(data, 0, -1)  # planar samples, (S, H, W) -> (H, W, S)
        extras = list(page.extrasamples or ())
        alpha = bool(extras) and int(extras[0]) in (1, 2)  # associated / unassociated alpha
        return _from_photometric(data, photometric, samples, alpha, page)  # file still open


def _from_photometric(data, photometric, samples: int, alpha: bool, page) -> np.ndarray:
    import tifffile

    kinds = tifffile.PHOTOMETRIC
    if photometric in (kinds.MINISBLACK, kinds.MINISWHITE):
        if photometric == kinds.MINISWHITE:
            data = _invert(data)
        if samples == 1:
            return data.reshape(data.shape[:2])
        if samples == 2 and alpha:
            return _grey_alpha_to_rgba(data)
        raise _Refused(
            f"has {samples} grey samples per pixel (a multichannel image, not colour); "
            "save one channel, or an RGB composite, as its own file"
        )
    if photometric in (kinds.RGB, kinds.YCBCR):  # tifffile decodes YCbCr JPEG to RGB
        if samples == 3 or (samples == 4 and data.shape[-1] == 4):
            return data
        raise _Refused(f"is RGB with {samples} samples per pixel; save it as RGB or RGBA")
    if photometric == kinds.PALETTE:
        colormap = page.colormap
        if colormap is None:
            raise _Refused("is a palette image without a colour map")
        rgb = np.moveaxis(np.asarray(colormap)[:, data.astype(np.intp)], 0, -1)
        return rgb.astype(np.uint8) if rgb.max() <= 255 else rgb.astype(np.uint16)
    if photometric == kinds.SEPARATED:
        raise _Refused("is CMYK (print colours); convert it to RGB first")
    raise _Refused(
        f"uses the {photometric.name} colour space; save it as grey or RGB TIFF, or as PNG"
    )


def _invert(data: np.ndarray) -> np.ndarray:
    if data.dtype == bool:
        return ~data
    if data.dtype.kind in "iu":
        return (np.iinfo(data.dtype).max - data.astype(np.int64)).astype(data.dtype)
    return data.max() - data


def _grey_alpha_to_rgba(data: np.ndarray) -> np.ndarray:
    grey, alpha = data[..., 0], data[..., 1]
    return np.stack([grey, grey, grey, alpha], axis=-1)


def _check_pixels(height: int, width: int) -> None:
    if int(height) * int(width) > MAX_IMAGE_PIXELS:
        raise _Refused(
            f"has {int(height) * int(width) / 1e6:.0f} megapixels, more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} accepted; downsample or crop it first"
        )


# -- PNG, JPEG, BMP ----------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    from .png16 import PngError, decode_png16

    data = path.read_bytes()
    if len(data) >= 24:
        _check_pixels(int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"))
    try:
        deep = decode_png16(data)
    except PngError as error:
        raise _Refused(f"is not a readable PNG ({error})") from None
    if deep is None:
        return _read_pillow(path)
    if deep.ndim == 3 and deep.shape[-1] == 2:
        return _grey_alpha_to_rgba(deep)
    return deep


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            picture = Image.open(path)
        except Image.DecompressionBombError:
            raise _Refused(
                f"has more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels accepted; "
                "downsample or crop it first"
            ) from None
        with picture:
            frames = int(getattr(picture, "n_frames", 1))
            if frames > 1:
                raise _Refused(
                    f"holds {frames} frames (an animation or multi-page file), not one "
                    "image; save the frame you want as its own PNG"
                )
            _check_pixels(picture.height, picture.width)
            return _pillow_array(picture)


def _pillow_array(picture) -> np.ndarray:
    mode = picture.mode
    if mode in ("1", "L", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        array = np.asarray(picture)
        return array.astype(np.uint16) if mode.startswith("I;16") else array
    if mode == "LA":
        return _grey_alpha_to_rgba(np.asarray(picture))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in picture.info
        return np.asarray(picture.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBa", "La"):
        return np.asarray(picture.convert("RGBA"))
    if mode in ("RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(picture.convert("RGB"))
    raise _Refused(f"has Pillow image mode {mode!r}, which napari-corrseg cannot read exactly")
