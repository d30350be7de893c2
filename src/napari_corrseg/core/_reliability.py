"""Peaks of attention rows and the automatic reliability cut of `match`.

Private: the public names (`ReliabilityCut`, `reliability_cut`) are re-exported by
`napari_corrseg.core.correspondence`. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# rows processed at once: ~1 M entries keeps the temporaries small
_CHUNK_ENTRIES = 1 << 20
#: Squared hard cycle error (grid cells^2) up to which a cycle "closes": the round trip
#: lands on the token itself or one of its 8 neighbours (within one token along each
#: axis), the same one-token tolerance a match is judged by.
CLOSED_CYCLE_SQUARED = 2


def peak_tokens(matrix: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max of every row and whether the row has a peak at all (see `row_summary`)."""
    argmax, has_peak, _ = row_summary(matrix, grid, entropy=False)
    return argmax, has_peak


def row_summary(
    matrix: np.ndarray, grid: tuple[int, int], *, entropy: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Arg-max, peak and (optionally) entropy of every row, in one pass over the rows.

    A row has a peak unless its maximum is shared by several entries (exactly equal
    values, as in a uniform row). A tie between adjacent tokens (all tied entries inside
    one 2 x 2 block of the grid: the peak sits between token centres) is one peak; any
    other tie, a uniform row first of all, is no peak. A row without a peak
    gives no match: its arg-max would only be numpy's lowest tied index.

    Returns
    -------
    argmax : numpy.ndarray
        ``(rows,)`` int64, the first maximum of each row.
    has_peak : numpy.ndarray
        ``(rows,)`` bool.
    entropy : numpy.ndarray or None
        ``(rows,)`` float64 Shannon entropy (natural log, ``0 log 0 = 0``), clipped to
        ``[0, log N]``; None with ``entropy=False``.
    """
    n_rows, n_cols = matrix.shape
    h, w = grid
    argmax = np.empty(n_rows, dtype=np.int64)
    has_peak = np.ones(n_rows, dtype=bool)
    row_entropy = np.empty(n_rows, dtype=np.float64) if entropy else None
    tiny = np.finfo(matrix.dtype).tiny if matrix.dtype.kind == "f" else 1e-300
    token_row, token_col = np.divmod(np.arange(n_cols), w)
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        block = matrix[start : start + step]  # read once while it is in cache
        if entropy:
            log_block = np.log(np.maximum(block, tiny))
            row_entropy[start : start + step] = -np.einsum("ij,ij->i", block, log_block)
        best = np.argmax(block, axis=1)
        argmax[start : start + step] = best
        # a tie shows as a last maximum that is not the first: only those rows are looked at
        last = n_cols - 1 - np.argmax(block[:, ::-1], axis=1)
        several = np.flatnonzero(last != best)
        if several.size == 0:
            continue
        sub = block[several]
        tied = sub == sub[np.arange(several.size), best[several]][:, None]
        count = np.count_nonzero(tied, axis=1)
        row_span = np.where(tied, token_row, -1).max(axis=1) - np.where(tied, token_row, h).min(
            axis=1
        )
        col_span = np.where(tied, token_col, -1).max(axis=1) - np.where(tied, token_col, w).min(
            axis=1
        )
        one_peak = (row_span <= 1) & (col_span <= 1) & (count < n_cols)
        has_peak[start + several] = one_peak
    if entropy:
        np.clip(row_entropy, 0.0, np.log(n_cols) if n_cols > 1 else 0.0, out=row_entropy)
    return argmax, has_peak, row_entropy


@dataclass(frozen=True)
class ReliabilityCut:
    """The automatic confidence cut of one ordered image pair (see `reliability_cut`).

    Attributes
    ----------
    threshold : float
        Keep matches with ``confidence >= threshold``; pass it as ``min_confidence`` to
        reproduce the selection.
    n_closed : int
        Source tokens with a peak whose hard cycle closes (returns within one token).
    n_broken : int
        Source tokens with a peak whose cycle does not close (or is undefined).
    n_kept : int
        Source tokens at or above the cut.
    n_misplaced : int
        Closed cycles below the cut plus broken ones at or above it: what the cut gets
        wrong about the cycles, the smallest possible count.
    """

    threshold: float
    n_closed: int
    n_broken: int
    n_kept: int
    n_misplaced: int


def round_trips(
    a_st: np.ndarray, a_ts: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The soft round trip ``A_st A_ts P`` and the return probability ``(A_st A_ts)_ii``.

    ``return_probability[i]`` is the chance that a round trip drawn from the attention
    itself (to the target with ``A_st[i]``, back with ``A_ts``) comes back to token ``i``:
    about ``1 / N`` for an uninformative forward row whatever its arg-max does, far more
    for a sharp, consistent match. The return probability is one more pass over both
    maps in square tiles (the reverse map read transposed); no ``N x N`` temporary.

    Returns
    -------
    round_trip : numpy.ndarray
        ``(N, 2)`` expected position after the soft round trip.
    return_probability : numpy.ndarray
        ``(N,)`` float64.
    """
    # the soft round trip: two (N, N) x (N, 2) products (BLAS, one pass over each map)
    round_trip = a_st @ (a_ts @ positions.astype(np.float32))
    n = a_st.shape[0]
    returned = np.zeros(n, dtype=np.float64)
    tile = 128  # square tiles of both maps; the reverse tile is copied transposed
    flipped = np.empty((tile, tile), dtype=a_ts.dtype)
    for i in range(0, n, tile):
        rows = min(tile, n - i)
        for j in range(0, n, tile):
            cols = min(tile, n - j)
            reverse = flipped[:rows, :cols]
            reverse[...] = a_ts[j : j + cols, i : i + rows].T
            returned[i : i + rows] += np.einsum(
                "ij,ij->i", a_st[i : i + rows, j : j + cols], reverse
            )
    return round_trip, returned


def return_probability(a_st: np.ndarray, a_ts: np.ndarray) -> np.ndarray:
    """``(A_st A_ts)[i, i]`` for every source token (see `round_trips`)."""
    return round_trips(a_st, a_ts, np.zeros((a_st.shape[0], 2)))[1]


def cycle_classes(
    cycle_error: np.ndarray, return_chance: np.ndarray, n_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Closed and broken cycles of source tokens; the rest are left out of the cut.

    *Closed*: the hard round trip comes back to the token itself (``d == 0``) and the
    soft one does so more often than chance (``return_chance > 1 / N``), so the closure
    is not the coincidence of a diffuse row. *Broken*: the round trip lands more than one
    token away, is undefined, or comes back no more often than chance. Cycles that return
    to a neighbour with better than chance odds are neither: the cut decides them but
    they do not place it.
    """
    with np.errstate(invalid="ignore"):
        squared = np.rint(np.square(cycle_error))
        above_chance = return_chance > 1.0 / max(n_tokens, 1)
        closed = (squared == 0) & above_chance
        broken = ~((squared <= CLOSED_CYCLE_SQUARED) & above_chance)
    return closed, broken


def cut_between(confidence: np.ndarray, closed: np.ndarray, broken: np.ndarray) -> ReliabilityCut:
    """The confidence cut that best separates closed cycles from broken ones.

    Among all cuts, the one that misplaces the fewest tokens (closed cycles below it,
    broken cycles at or above it); among equals, the lowest. The threshold returned is
    the middle between the two confidence values it falls between. No number is chosen
    by hand: the pair's own cycles label the tokens, the pair's own confidences place
    the cut. All closed: the cut is 0 (keep everything); none closed: the cut is above
    the largest confidence (keep nothing).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    closed = np.asarray(closed, dtype=bool)
    broken = np.asarray(broken, dtype=bool)
    n_closed, n_broken = int(closed.sum()), int(broken.sum())
    if confidence.size == 0:
        return ReliabilityCut(0.0, 0, 0, 0, 0)
    values = np.unique(confidence)  # ascending; the cut keeps confidence >= values[k]
    closed_sorted = np.sort(confidence[closed])
    broken_sorted = np.sort(confidence[broken])
    # k = 0 .. len(values): keep values >= values[k] (k = len(values): keep nothing)
    edges = np.append(values, np.inf)
    closed_below = np.searchsorted(closed_sorted, edges, side="left")
    broken_kept = broken_sorted.size - np.searchsorted(broken_sorted, edges, side="left")
    misplaced = closed_below + broken_kept
    k = int(np.argmin(misplaced))
    if k == 0:
        threshold = 0.0
    elif k == values.size:
        threshold = float(np.nextafter(values[-1], np.inf))
    else:
        threshold = float(0.5 * (values[k - 1] + values[k]))
    n_kept = int((confidence >= threshold).sum())
    return ReliabilityCut(threshold, n_closed, n_broken, n_kept, int(misplaced[k]))
