"""A small PNG writer for tests: 16-bit (and 8-bit) PNGs with every filter type and
optional Adam7 interlacing, which Pillow cannot write. Used to check the reader."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2))
_ADAM7 += ((1, 0, 2, 1),)


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_rows(image: np.ndarray, filters) -> bytes:
    """Filter the rows of a (H, W, bytes per pixel) uint8 array, filter type per row."""
    height, width, bpp = image.shape
    rows = image.reshape(height, width * bpp).astype(np.int64)
    out = bytearray()
    for r in range(height):
        kind = int(filters[r % len(filters)])
        line = rows[r]
        prior = rows[r - 1] if r else np.zeros_like(line)
        encoded = []
        for k in range(width * bpp):
            a = int(line[k - bpp]) if k >= bpp else 0
            b = int(prior[k])
            c = int(prior[k - bpp]) if k >= bpp else 0
            prediction = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            encoded.append((int(line[k]) - prediction) & 0xFF)
        out.append(kind)
        out.extend(encoded)
    return bytes(out)


def png_bytes(
    array: np.ndarray,
    *,
    filters=(0, 1, 2, 3, 4),
    interlace: bool = False,
    transparent: tuple[int, ...] | None = None,
) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, C)`` uint8/uint16 (C = 2, 3 or 4) as PNG bytes."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    big = array.astype(">u2" if depth == 16 else "u1")
    pixels = big.view(np.uint8).reshape(height, width, -1)
    if interlace:
        data = b"".join(
            _filter_rows(pixels[r0::rs, c0::cs], filters)
            for r0, c0, rs, cs in _ADAM7
            if len(range(r0, height, rs)) and len(range(c0, width, cs))
        )
    else:
        data = _filter_rows(pixels, filters)
    header = struct.pack(
        ">IIBBBBB", width, height, depth, _COLOUR_TYPES[channels], 0, 0, int(interlace)
    )
    chunks = [_chunk(b"IHDR", header)]
    if transparent is not None:
        chunks.append(_chunk(b"tRNS", struct.pack(f">{len(transparent)}H", *transparent)))
    chunks += [_chunk(b"IDAT", zlib.compress(data)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
