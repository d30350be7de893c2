"""Turn image arrays, in the forms napari holds them, into model-ready RGB (numpy only).

`prepare_image` accepts what a napari Image layer may hold and returns one float32
``(H, W, 3)`` array in ``[0, 1]``; `resize_image` brings it to the model's square input
with an antialiased, anisotropic resize (no padding: this is what `ImageGeometry`
assumes). Conversion rules, in the order they apply:

* **Leading singleton axes** (``(1, H, W)``, ``(1, 1, H, W, 3)``) are dropped.
* **Layout.** 2-D arrays are grayscale. A 3-D array whose last axis is at most
  `MAX_CHANNELS` long and shorter than both image axes is ``(H, W, C)``; any other
  3-D or higher array is a stack and is refused (pick a plane first).
* **Channels.** 1 -> gray; 2 -> mean of both, gray; 3 -> RGB; 4 -> RGBA, composited on
  white (a transparent pixel becomes white, as napari shows it on a light canvas); 5 or
  more -> mean of all channels, gray, with a warning.
* **Values.** ``bool`` -> 0/1; ``uint8`` -> divided by 255; floats already inside
  ``[0, 1]`` are kept; every other integer type (uint16, int32, ...) and floats outside
  ``[0, 1]`` are rescaled by the image's own range (min -> 0, max -> 1), because
  microscopy data rarely fills its type's range. A constant image becomes mid gray.
  The alpha channel is scaled on its own: by 255 for uint8, by its type's maximum for
  other integers, clipped to ``[0, 1]`` for floats.

Refused, with `InputImageError` naming the fix: non-numeric or complex dtypes, empty
arrays, NaN or infinite values, 3-D+ stacks, images smaller than `MIN_IMAGE_SIDE` on a
side, and images over `MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse

from ..errors import InputImageError

__all__ = [
    "MAX_CHANNELS",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "prepare_image",
    "resize_image",
]

#: Smallest usable side in pixels: one token of the default 32x32 grid covers 16x16
#: pixels of the 512 px model input, so a smaller image holds less than one token.
MIN_IMAGE_SIDE = 16
#: Largest image accepted (pixels); larger ones should be downsampled or cropped first.
MAX_IMAGE_PIXELS = 100_000_000
#: Longest last axis still read as channels rather than as an image axis.
MAX_CHANNELS = 16


def prepare_image(
    array,
    *,
    name: str = "image",
    min_side: int = MIN_IMAGE_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Convert one image array to float32 RGB ``(H, W, 3)`` in ``[0, 1]``.

    Parameters
    ----------
    array : array-like
        A 2-D grayscale image or an ``(H, W, C)`` image; see the module docstring for
        the conversion rules.
    name : str
        What to call the image in error messages (e.g. the napari layer name).
    min_side : int
        Smallest accepted height and width, in pixels.
    max_pixels : int
        Largest accepted ``H * W``.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, 3)`` with values in ``[0, 1]``.

    Raises
    ------
    InputImageError
        If the array cannot be used as one 2-D image; the message says what to do.
    """
    data = np.asarray(array)
    if data.dtype.kind not in "biuf":
        raise InputImageError(
            f"{name} has dtype {data.dtype}; pass a numeric image (bool, integer or float)"
        )
    if data.size == 0:
        raise InputImageError(f"{name} is empty (shape {data.shape}); pass an image with pixels")
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    channels = _channel_count(data, name)
    height, width = data.shape[:2]
    if min(height, width) < min_side:
        raise InputImageError(
            f"{name} is {height}x{width} pixels; the smallest usable image is "
            f"{min_side}x{min_side} (one attention token); use a larger image or upsample it"
        )
    if height * width > max_pixels:
        raise InputImageError(
            f"{name} has {height * width / 1e6:.0f} megapixels, more than the "
            f"{max_pixels / 1e6:.0f} accepted; downsample or crop it first"
        )
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputImageError(f"{name} contains NaN or infinite values; fill or mask them first")

    if channels == 0:
        return np.repeat(_scale_values(data)[..., None], 3, axis=2)
    if channels == 4:
        rgb = _scale_values(data[..., :3])
        alpha = _scale_alpha(data[..., 3])[..., None]
        return (rgb * alpha + (1.0 - alpha)).astype(np.float32)
    if channels == 3:
        return _scale_values(data)
    if channels > 4:
        warnings.warn(
            f"{name} has {channels} channels; using their mean as a grayscale image. "
            "Pass an RGB image to choose the channels yourself.",
            stacklevel=2,
        )
    gray = _scale_values(data.astype(np.float64).mean(axis=2) if channels > 1 else data[..., 0])
    return np.repeat(gray[..., None], 3, axis=2)


def _channel_count(data: np.ndarray, name: str) -> int:
    """0 for a 2-D image, else the length of the channel axis; refuse stacks."""
    if data.ndim == 2:
        return 0
    if data.ndim == 3:
        height, width, last = data.shape
        if last <= MAX_CHANNELS and last < min(height, width):
            return last
    raise InputImageError(
        f"{name} has shape {data.shape}: a stack, not one 2-D image. Pick a plane "
        "(e.g. the slice shown in napari, or array[z] in Python) and pass that 2-D or "
        "(rows, cols, channels) image."
    )


def _scale_values(data: np.ndarray) -> np.ndarray:
    """Map pixel values to float32 ``[0, 1]`` by the rules in the module docstring."""
    if data.dtype == np.bool_:
        return data.astype(np.float32)
    if data.dtype == np.uint8:
        return data.astype(np.float32) / np.float32(255)
    values = data.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if data.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return values.astype(np.float32)
    if high == low:
        return np.full(values.shape, 0.5, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _scale_alpha(alpha: np.ndarray) -> np.ndarray:
    """Opacity in ``[0, 1]``: by the type's maximum for integers, clipped for floats."""
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    if alpha.dtype.kind in "iu":
        return (alpha.astype(np.float64) / np.iinfo(alpha.dtype).max).clip(0, 1).astype(np.float32)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, C)`` to ``size`` with an antialiased triangle (bilinear) filter.

    Each axis is resampled on its own (anisotropic, no padding), pixel-centre aligned
    as `ImageGeometry` assumes. When shrinking, the filter widens with the scale factor
    so that every input pixel contributes (like PIL's or torch's ``antialias=True``).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` or ``(H, W)`` float array.
    size : int or tuple of int
        Output ``(rows, cols)``; an int means a square.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(rows, cols, C)`` (or ``(rows, cols)``).
    """
    rows, cols = (size, size) if np.isscalar(size) else size
    data = np.asarray(image, dtype=np.float32)
    row_weights = _resample_matrix(data.shape[0], int(rows))
    col_weights = _resample_matrix(data.shape[1], int(cols))
    flat = data.reshape(data.shape[0], -1)
    out = row_weights @ flat  # (rows, W * C)
    out = out.reshape(int(rows), data.shape[1], -1).transpose(1, 0, 2).reshape(data.shape[1], -1)
    out = (col_weights @ out).reshape(int(cols), int(rows), -1).transpose(1, 0, 2)
    return np.ascontiguousarray(out.reshape((int(rows), int(cols), *data.shape[2:]))).astype(
        np.float32, copy=False
    )


def _resample_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` matrix of normalised triangle-filter weights."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # filter half-width in input pixels
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    offsets = np.arange(-int(np.ceil(support)), int(np.ceil(support)) + 1)
    taps = np.floor(centres)[:, None] + offsets[None, :]
    weights = np.clip(1.0 - np.abs(taps - centres[:, None]) / support, 0.0, None)
    inside = (taps >= 0) & (taps < n_in)
    weights[~inside] = 0.0  # taps past the border are dropped, as PIL and torch do
    taps = np.clip(taps, 0, n_in - 1).astype(np.int64)
    weights /= weights.sum(axis=1, keepdims=True)
    row_index = np.repeat(np.arange(n_out), taps.shape[1])
    matrix = sparse.coo_matrix(
        (weights.ravel().astype(np.float32), (row_index, taps.ravel())), shape=(n_out, n_in)
    )
    return matrix.tocsr()
