"""Input checks shared by the numpy core: one clear ValueError per kind of bad input."""

from __future__ import annotations

import numpy as np

#: Largest allowed deviation of a row sum from 1. Loose enough for float16 maps
#: upcast to float32, tight enough to catch unnormalised scores or logits.
ROW_SUM_TOLERANCE = 1e-2


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

    Raises ValueError naming the problem: not 2-D, not square, not numeric, NaN or inf,
    negative entries, rows that do not sum to 1, or a grid that does not match ``N``.
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
    array = array.astype(np.float32, copy=False)
    # min/max propagate NaN and expose inf without a full boolean temporary.
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if low < 0:
        raise ValueError(f"{name} has negative entries; pass probabilities, not scores")
    # float32 pairwise summation is accurate to ~1e-6 here, far inside the tolerance.
    row_sums = array.sum(axis=1)
    worst = float(np.abs(row_sums - 1.0).max())
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name} is not row-stochastic: a row sums to "
            f"{row_sums[np.argmax(np.abs(row_sums - 1))]:.4g} (expected 1); "
            "apply softmax over the key axis"
        )
    if grid is not None:
        check_grid(grid, array.shape[0])
    return array
