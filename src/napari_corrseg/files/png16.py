"""A numpy decoder for 16-bit PNG files, which Pillow cuts to 8 bits when they are colour.

Pillow reads 16-bit RGB, RGBA and grey+alpha PNGs as 8-bit images; microscopy and
scientific cameras write exactly those. This module reads every 16-bit PNG (grey, grey +
alpha, RGB, RGBA; interlaced or not; a ``tRNS`` colour becomes an alpha channel) at full
depth. The filters are undone along anti-diagonals (every pixel of a diagonal depends
only on the previous two), so the Python loop runs ``height + width`` times, not once
per pixel. Other bit depths are left to Pillow (`decode_png16` returns None).

numpy and zlib only.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["PngError", "decode_png16"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (row start, col start, row step, col step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2))
_ADAM7 += ((1, 0, 2, 1),)


class PngError(ValueError):
    """The bytes are not a PNG this decoder can read (the message says why)."""


def _chunks(data: bytes):
    position = len(SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        crc = data[position + 8 + length : position + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PngError("the file is truncated")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
            raise PngError(f"chunk {kind.decode('latin-1')!r} is damaged (CRC mismatch)")
        yield kind, body
        if kind == b"IEND":
            return
        position += 12 + length
    raise PngError("the file is truncated (no IEND chunk)")


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: np.ndarray, height: int, width: int, bpp: int) -> np.ndarray:
    """Undo the per-row filters of one (sub)image: ``(height, width * bpp)`` bytes."""
    rows = raw.reshape(height, 1 + width * bpp)
    kinds = rows[:, 0].astype(np.int64)
    if kinds.max(initial=0) > 4:
        raise PngError(f"unknown filter type {int(kinds.max())}")
    filtered = rows[:, 1:].reshape(height, width, bpp).astype(np.int64)
    recon = np.zeros((height + 1, width + 1, bpp), dtype=np.int64)  # zero row/col of padding
    for diagonal in range(height + width - 1):
        r = np.arange(max(0, diagonal - width + 1), min(height, diagonal + 1))
        x = diagonal - r
        a, b, c = recon[r + 1, x], recon[r, x + 1], recon[r, x]
        kind = kinds[r][:, None]
        prediction = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [a, b, (a + b) // 2, _paeth(a, b, c)],
            default=0,
        )
        recon[r + 1, x + 1] = (filtered[r, x] + prediction) & 0xFF
    return recon[1:, 1:].astype(np.uint8)


def decode_png16(data: bytes) -> np.ndarray | None:
    """Decode a 16-bit PNG to ``(H, W)`` or ``(H, W, C)`` uint16; None if not 16-bit.

    Raises
    ------
    PngError
        Not a PNG, damaged, or an unsupported variant.
    """
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file")
    header, idat, transparent = None, [], None
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            transparent = body
    if header is None:
        raise PngError("no IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = header
    if depth != 16:
        return None
    if colour not in _CHANNELS or compression or filtering or interlace > 1:
        raise PngError(f"unsupported 16-bit PNG variant (colour type {colour})")
    channels = _CHANNELS[colour]
    bpp = 2 * channels
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    except zlib.error as error:
        raise PngError(f"the image data is damaged ({error})") from None
    image = np.zeros((height, width, bpp), dtype=np.uint8)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    position = 0
    for row0, col0, row_step, col_step in passes:
        rows = len(range(row0, height, row_step))
        cols = len(range(col0, width, col_step))
        if rows == 0 or cols == 0:
            continue
        size = rows * (1 + cols * bpp)
        if position + size > raw.size:
            raise PngError("the image data is truncated")
        part = _unfilter(raw[position : position + size], rows, cols, bpp)
        image[row0::row_step, col0::col_step] = part
        position += size
    values = image.view(">u2").reshape(height, width, channels).astype(np.uint16)
    if transparent is not None and colour in (0, 2) and len(transparent) == 2 * channels:
        key = np.frombuffer(transparent, dtype=">u2").astype(np.uint16)
        opaque = ~np.all(values == key, axis=-1)
        alpha = np.where(opaque, np.uint16(65535), np.uint16(0))[..., None]
        values = np.concatenate([values, alpha], axis=-1)
        channels += 1
    return values[..., 0] if channels == 1 else values
