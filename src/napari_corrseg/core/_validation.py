"""Input checks shared by the numpy core: one clear ValueError per kind of bad input.

Attention maps are checked once, where they enter a public function (`check_attention`),
and come out as float32 arrays whose rows sum to 1 to float32 rounding:

- a row whose sum is off by no more than float32 rounding (`rounding_tolerance`) is left
  as it is;
- a row off by more, up to `ROW_SUM_TOLERANCE` (float16 maps upcast to float32, maps
  that went through lossy storage), is renormalised: divided by its sum;
- a row off by more than `ROW_SUM_TOLERANCE` is refused: those are scores or logits,
  not probabilities, and renormalising them would hide the mistake.
"""

from __future__ import annotations

import numpy as np

#: Largest deviation of a row sum from 1 that is renormalised rather than refused. Loose
#: enough for float16 maps upcast to float32 (each entry carries a relative rounding of up
#: to 2**-11, so a row sum up to ~5e-4), tight enough to catch unnormalised scores.
ROW_SUM_TOLERANCE = 1e-2

_FLOAT32_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


def rounding_tolerance(n_columns: int) -> float:
    """How far a float32 row of ``n_columns`` probabilities may sum from 1 by rounding alone.

    The textbook bound for adding ``n`` float32 numbers one after another, ``n * u``
    with ``u = 2**-24`` the unit roundoff (pairwise or blocked sums do better). A row
    inside it is used as it is; outside it, the row is renormalised or refused.
    """
    return max(int(n_columns), 1) * _FLOAT32_UNIT_ROUNDOFF


def input_precision(array) -> float:
    """Relative precision (machine epsilon) of the values ``array`` was given in.

    float16 inputs are computed in float32 but carry float16 rounding; integer inputs
    (unusual) are counted as float32. Used to put noise floors above the input's rounding.
    """
    dtype = np.asarray(array).dtype if not hasattr(array, "dtype") else np.dtype(array.dtype)
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float32).eps)


def check_grid(grid, n_tokens: int | None = None) -> tuple[int, int]:
    """Return ``grid`` as ``(h, w)`` ints; raise ValueError if it is not two positive
    integers or does not hold ``n_tokens`` tokens."""
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (rows, cols), got {grid!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(grid):
        raise ValueError(f"grid must be two positive integers, got {grid!r}")
    if n_tokens is not None and h * w != n_tokens:
        raise ValueError(
            f"grid {h}x{w} holds {h * w} tokens but the attention map has {n_tokens}; "
            "pass the grid the map was computed on"
        )
    return h, w


def check_attention(attention, grid=None, name: str = "attention") -> np.ndarray:
    """Validate a row-stochastic ``(N, N)`` attention map and return it as float32.

    Rows whose sums are off by more than float32 rounding but within
    `ROW_SUM_TOLERANCE` are renormalised (in a copy; the caller's array is never
    changed). Raises ValueError naming the problem: not 2-D, not square, not numeric,
    NaN or inf, negative entries, rows that do not sum to 1, or a grid that does not
    match ``N``.
    """
    array = np.asarray(attention)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (N, N) matrix, got shape {array.shape}; average the heads first"
        )
    if array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be square (N, N), got shape {array.shape}")
    if grid is not None:
        check_grid(grid, array.shape[0])
    given = array
    array = array.astype(np.float32, copy=False)
    # min/max propagate NaN and expose inf without a full boolean temporary.
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if low < 0:
        raise ValueError(f"{name} has negative entries; pass probabilities, not scores")
    # numpy sums rows pairwise: its own rounding (~log2(N) u) is far inside the tolerance
    row_sums = array.sum(axis=1).astype(np.float64)
    deviation = np.abs(row_sums - 1.0)
    worst = float(deviation.max())
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name} is not row-stochastic: a row sums to "
            f"{row_sums[np.argmax(deviation)]:.4g} (expected 1, within "
            f"{ROW_SUM_TOLERANCE:g}); apply softmax over the key axis"
        )
    if worst > rounding_tolerance(array.shape[1]):
        off = deviation > rounding_tolerance(array.shape[1])
        fixed = array.copy() if array is given else array
        fixed[off] /= row_sums[off, None].astype(np.float32)
        array = fixed
    return array
