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
    """Arg-max of every row and whether the row has a peak at all.

    A row has a peak unless its maximum is shared: entries within two float32 units in
    the last place of the maximum count as tied. Ties between adjacent tokens (all tied
    entries inside one 2 x 2 block of the grid: the peak sits between token centres) are
    one peak; any other tie, a uniform row first of all, is no peak. A row without a peak
    gives no match: its arg-max would only be numpy's lowest tied index.

    Returns
    -------
    argmax : numpy.ndarray
        ``(rows,)`` int64, the first maximum of each row.
    has_peak : numpy.ndarray
        ``(rows,)`` bool.
    """
    n_rows, n_cols = matrix.shape
    h, w = grid
    argmax = np.empty(n_rows, dtype=np.int64)
    has_peak = np.ones(n_rows, dtype=bool)
    token_row, token_col = np.divmod(np.arange(n_cols), w)
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        block = matrix[start : start + step]
        best = np.argmax(block, axis=1)
        argmax[start : start + step] = best
        top = block[np.arange(block.shape[0]), best]
        floor = top - 2 * np.spacing(top.astype(np.float32))
        tied = block >= floor[:, None]
        count = tied.sum(axis=1)
        several = np.flatnonzero(count > 1)
        if several.size == 0:
            continue
        sub = tied[several]
        row_span = np.where(sub, token_row, -1).max(axis=1) - np.where(sub, token_row, h).min(
            axis=1
        )
        col_span = np.where(sub, token_col, -1).max(axis=1) - np.where(sub, token_col, w).min(
            axis=1
        )
        one_peak = (row_span <= 1) & (col_span <= 1) & (count[several] < n_cols)
        has_peak[start + several] = one_peak
    return argmax, has_peak


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


def return_probability(a_st: np.ndarray, a_ts: np.ndarray) -> np.ndarray:
    """``(A_st A_ts)[i, i]``: the chance that a round trip drawn from the attention itself
    (to the target with ``A_st[i]``, back with ``A_ts``) comes back to token ``i``.

    An uninformative forward row returns with probability about ``1 / N``, whatever its
    arg-max does; a sharp, consistent match far more often. Row chunks, no ``N x N``
    temporary.
    """
    n_rows = a_st.shape[0]
    out = np.empty(n_rows, dtype=np.float64)
    step = max(1, _CHUNK_ENTRIES // max(a_st.shape[1], 1))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        out[start:stop] = np.einsum(
            "ij,ji->i", a_st[start:stop], a_ts[:, start:stop], dtype=np.float64
        )
    return out


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
