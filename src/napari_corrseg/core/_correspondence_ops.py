"""Numerical helpers of `napari_corrseg.core.correspondence`: entropy, refinement, sampling,
confidence, input checks for points, and the aggregation of maps over resolutions.

Private: the public names live in `napari_corrseg.core.correspondence`. numpy only.
"""

from __future__ import annotations

import numpy as np

from ._validation import ROW_SUM_TOLERANCE, check_attention, check_grid

# rows processed at once by the row-wise reductions: ~1 M entries keeps temporaries small
_CHUNK_ENTRIES = 1 << 20


def row_entropy(matrix: np.ndarray) -> np.ndarray:
    """Shannon entropy (natural log, ``0 log 0 = 0``) of every row of ``matrix``.

    Rows are processed in chunks so that the temporaries stay far below ``N^2``; the
    result is clipped to ``[0, log N]`` against rounding.
    """
    n_rows, n_cols = matrix.shape
    out = np.empty(n_rows, dtype=np.float64)
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    tiny = np.finfo(matrix.dtype).tiny if matrix.dtype.kind == "f" else 1e-300
    for start in range(0, n_rows, step):
        block = matrix[start : start + step]
        log_block = np.log(np.maximum(block, tiny))
        out[start : start + step] = -np.einsum("ij,ij->i", block, log_block)
    return np.clip(out, 0.0, np.log(n_cols) if n_cols > 1 else 0.0)


def confidence_score(
    cycle_error: np.ndarray,
    entropy: np.ndarray,
    density: np.ndarray,
    n_tokens: int,
    cycle_scale: float,
) -> np.ndarray:
    """Confidence in ``[0, 1]``: product of a cycle, an entropy and a density factor.

    ``exp(-d^2 / (2 s^2)) * (1 - H / log N) * log 2 / log(1 + MD)`` with ``MD`` taken as
    at least 1 (a transferred point may peak on a token no whole token maps to).
    """
    if not np.isfinite(cycle_scale) or cycle_scale <= 0:
        raise ValueError(f"cycle_scale must be a positive number of grid cells, got {cycle_scale}")
    cycle_factor = np.exp(-0.5 * np.square(np.asarray(cycle_error) / cycle_scale))
    if n_tokens > 1:
        entropy_factor = np.clip(1.0 - np.asarray(entropy) / np.log(n_tokens), 0.0, 1.0)
    else:
        entropy_factor = np.ones_like(cycle_factor)
    density_factor = np.log(2.0) / np.log1p(np.maximum(np.asarray(density), 1))
    return np.clip(cycle_factor * entropy_factor * density_factor, 0.0, 1.0)


def _window_offsets(window: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.arange(-window, window + 1)
    d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
    return d_row.ravel(), d_col.ravel()


def refine_peaks(
    matrix: np.ndarray,
    rows: np.ndarray,
    peaks: np.ndarray,
    grid: tuple[int, int],
    window: int,
) -> np.ndarray:
    """Soft-argmax of ``matrix[rows[k]]`` over the ``(2 window + 1)^2`` tokens around
    ``peaks[k]`` (tokens off the grid are left out), as ``(K, 2)`` grid coordinates."""
    h, w = grid
    rows = np.asarray(rows, dtype=np.int64)
    peaks = np.asarray(peaks, dtype=np.int64)
    peak_row, peak_col = np.divmod(peaks, w)
    if window == 0 or len(peaks) == 0:
        return np.stack([peak_row, peak_col], axis=1).astype(np.float64)
    d_row, d_col = _window_offsets(window)
    rr = peak_row[:, None] + d_row[None, :]
    cc = peak_col[:, None] + d_col[None, :]
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    index = np.clip(rr, 0, h - 1) * w + np.clip(cc, 0, w - 1)
    values = matrix[rows[:, None], index].astype(np.float64) * inside
    # the peak itself is > 0 in a row-stochastic row, so the total never vanishes
    total = values.sum(axis=1)
    return (
        np.stack([(values * rr).sum(axis=1), (values * cc).sum(axis=1)], axis=1) / total[:, None]
    )


def spread_select(
    positions: np.ndarray, confidence: np.ndarray, max_matches: int, grid: tuple[int, int]
) -> np.ndarray:
    """Indices of at most ``max_matches`` candidates spread over the grid.

    The grid is cut into about ``max_matches`` square cells; the most confident candidate
    of every occupied cell is taken first (most confident cells first), then the remaining
    candidates by confidence until ``max_matches`` are chosen.
    """
    count = len(confidence)
    if max_matches >= count:
        return np.arange(count)
    if max_matches == 0:
        return np.arange(0)
    h, w = grid
    side = max(1.0, np.sqrt(h * w / max_matches))
    cells_per_row = int(np.ceil(w / side))
    cell = np.floor(positions[:, 0] / side) * cells_per_row + np.floor(positions[:, 1] / side)
    order = np.argsort(-confidence, kind="stable")
    _, first = np.unique(cell[order], return_index=True)
    leaders = order[np.sort(first)]  # cell leaders, most confident first
    rest = np.setdiff1d(order, leaders, assume_unique=True)
    rest = rest[np.argsort(-confidence[rest], kind="stable")]
    return np.concatenate([leaders, rest])[:max_matches]


def check_points(points, grid: tuple[int, int], name: str = "points") -> np.ndarray:
    """Return ``points`` as ``(P, 2)`` float64 grid coordinates or raise ValueError."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape == (2,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be (row, col) pairs of shape (P, 2), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    h, w = grid
    edge = 0.5 + 1e-6  # half a cell, plus rounding slack of pixel -> grid conversions
    outside = (
        (array[:, 0] < -edge)
        | (array[:, 0] > h - 1 + edge)
        | (array[:, 1] < -edge)
        | (array[:, 1] > w - 1 + edge)
    )
    if outside.any():
        first = array[np.argmax(outside)]
        raise ValueError(
            f"{name} has {int(outside.sum())} position(s) outside the {h}x{w} grid, e.g. "
            f"{tuple(first)}; pass grid coordinates (convert pixels with "
            "ImageGeometry.pixel_to_grid)"
        )
    return array


def bilinear_rows(points: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 4 tokens around each point and their bilinear weights, ``(P, 4)`` each.

    Points are clamped to the token centres' range, so a point within half a cell of the
    border uses the border tokens.
    """
    h, w = grid
    r = np.clip(points[:, 0], 0, h - 1)
    c = np.clip(points[:, 1], 0, w - 1)
    r0 = np.floor(r).astype(np.int64)
    c0 = np.floor(c).astype(np.int64)
    r1 = np.minimum(r0 + 1, h - 1)
    c1 = np.minimum(c0 + 1, w - 1)
    fr, fc = r - r0, c - c0
    rows = np.stack([r0 * w + c0, r0 * w + c1, r1 * w + c0, r1 * w + c1], axis=1)
    weights = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], axis=1)
    return rows, weights


def check_rows(attention: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Validate only ``attention[rows]`` (interactive queries skip the full N^2 check)."""
    if attention.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array, got dtype {attention.dtype}")
    block = attention[np.unique(rows)].astype(np.float64)
    if not np.isfinite(block).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if block.min() < 0:
        raise ValueError(f"{name} has negative entries; pass probabilities, not scores")
    sums = block.sum(axis=1)
    if np.abs(sums - 1).max() > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name} is not row-stochastic: a row sums to {sums[np.argmax(np.abs(sums - 1))]:.4g}"
            " (expected 1); apply softmax over the key axis"
        )


def check_pair(a_st, a_ts, grid) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Validate an ``(A_st, A_ts)`` pair on ``grid``; return float32 maps and ``(h, w)``."""
    a_st = check_attention(a_st, grid, name="a_st")
    a_ts = check_attention(a_ts, grid, name="a_ts")
    if a_st.shape != a_ts.shape:
        raise ValueError(
            f"a_st has shape {a_st.shape} but a_ts has {a_ts.shape}; both images must be "
            "on the same grid"
        )
    return a_st, a_ts, check_grid(grid, a_st.shape[0])


def window_mass(heat: np.ndarray, peak: int, grid: tuple[int, int], window: int) -> float:
    """Mass of ``heat`` in the ``(2 window + 1)^2`` tokens around ``peak``, in [0, 1]."""
    h, w = grid
    r, c = divmod(peak, w)
    image = heat.reshape(h, w)
    block = image[max(r - window, 0) : r + window + 1, max(c - window, 0) : c + window + 1]
    return float(np.clip(block.sum(), 0.0, 1.0))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` 1-D resampling matrix: bilinear with half-pixel centres when
    upsampling (as DiffSeg's bilinear UpSampling2D), box average when downsampling."""
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    if n_out >= n_in:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = x - i0
        np.add.at(matrix, (np.arange(n_out), i0), 1 - frac)
        np.add.at(matrix, (np.arange(n_out), i1), frac)
        return matrix
    edges = np.arange(n_out + 1) * n_in / n_out
    for o in range(n_out):
        lo, hi = edges[o], edges[o + 1]
        for i in range(int(np.floor(lo)), int(np.ceil(hi))):
            matrix[o, i] = min(hi, i + 1) - max(lo, i)
    return matrix / matrix.sum(axis=1, keepdims=True)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """For each of ``n_out`` cells, the input cell whose area contains its centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def aggregate_attention(maps, grids, weights=None, out_grid=None) -> np.ndarray:
    """Combine attention maps of several layers or resolutions into one map.

    Each ``(N_k, N_k)`` map on grid ``grids[k]`` is brought to ``out_grid``: its key
    dimensions are resampled as an image (bilinear, half-pixel centres, when upsampling;
    box average when downsampling) and each row renormalised to sum 1; its query
    dimensions are repeated (nearest neighbour). The results are averaged with
    ``weights``, by default proportional to the grid side ``sqrt(N_k)`` as in DiffSeg.

    Parameters
    ----------
    maps : sequence of array_like
        Row-stochastic ``(N_k, N_k)`` maps (self or cross attention of the same ordered
        image pair).
    grids : sequence of tuple of int
        ``(h_k, w_k)`` of each map.
    weights : sequence of float, optional
        Non-negative weights, normalised to sum 1.
    out_grid : tuple of int, optional
        Grid of the result; default the finest input grid.

    Returns
    -------
    numpy.ndarray
        ``(N, N)`` float32, rows sum to 1, on ``out_grid``.
    """
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        raise ValueError("maps must be a list of (N, N) arrays, got a single array; wrap it")
    maps, grids = list(maps), list(grids)
    if not maps:
        raise ValueError("maps is empty; pass at least one attention map")
    if len(grids) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(grids)} grids; pass one grid per map")
    checked = [check_grid(g) for g in grids]
    arrays = [
        check_attention(m, g, name=f"maps[{k}]")
        for k, (m, g) in enumerate(zip(maps, checked, strict=True))
    ]
    if out_grid is None:
        out_grid = max(checked, key=lambda g: g[0] * g[1])
    out_h, out_w = check_grid(out_grid)
    if weights is None:
        weights = [np.sqrt(h * w) for h, w in checked]
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(maps),) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be {len(maps)} non-negative numbers, got {weights}")
    if weights.sum() <= 0:
        raise ValueError("weights sum to 0; give at least one map a positive weight")
    weights = weights / weights.sum()

    n_out = out_h * out_w
    result = np.zeros((n_out, n_out), dtype=np.float32)
    for array, (h, w), weight in zip(arrays, checked, weights, strict=True):
        if weight == 0:
            continue
        if (h, w) == (out_h, out_w):
            keys = array
        else:
            resize_rows = _resize_matrix(h, out_h).astype(np.float32)
            resize_cols = _resize_matrix(w, out_w).astype(np.float32)
            keys = array.reshape(h * w, h, w) @ resize_cols.T  # (N_k, h, out_w)
            keys = (resize_rows @ keys).reshape(h * w, n_out)  # (N_k, out_h * out_w)
            keys /= keys.sum(axis=1, keepdims=True)
        query_index = (
            _nearest_index(h, out_h)[:, None] * w + _nearest_index(w, out_w)[None, :]
        ).ravel()
        step = max(1, _CHUNK_ENTRIES // n_out)
        for start in range(0, n_out, step):
            block = keys[query_index[start : start + step]]
            block *= np.float32(weight)
            result[start : start + step] += block
    return result
