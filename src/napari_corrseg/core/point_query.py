"""Point queries and keypoint transfer between two images from their cross self-attention.

`query` answers "where does this position go?" from the (up to) four rows around it;
`transfer_points` carries keypoints to the other image and back, for a sub-token cycle
error and a confidence. Both are re-exported by `napari_corrseg.core.correspondence`
(their documented home). Formulas: ``docs/method.md``. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._correspondence_ops import (
    bilinear_rows,
    check_pair,
    check_points,
    check_rows,
    confidence_score,
    refine_peaks,
    row_entropy,
    window_mass,
)
from ._reliability import peak_tokens
from ._validation import check_grid

__all__ = ["QueryResult", "TransferredPoints", "query", "transfer_points"]


@dataclass(frozen=True)
class QueryResult:
    """Where one position of one image lands in the other.

    Attributes
    ----------
    heatmap : numpy.ndarray
        ``(h, w)`` float, the attention of the queried position over the other image
        (bilinear blend of the 4 nearest rows); sums to 1.
    best : numpy.ndarray
        ``(2,)`` refined grid coordinates of the peak.
    score : float
        Probability mass inside the refinement window around the peak, in ``[0, 1]``.
    peak_token : int
        Token index of the heatmap's maximum.
    """

    heatmap: np.ndarray
    best: np.ndarray
    score: float
    peak_token: int


def query(attention, point, grid, *, window: int = 1) -> QueryResult:
    """Look up where ``point`` of one image lands in the other.

    ``query(a_st, p, grid)`` goes from source to target, ``query(a_ts, p, grid)`` back.
    Only the (up to) 4 rows around ``point`` are read and checked, so a call takes well
    under a millisecond per thousand tokens; the full matrix is not validated.

    Parameters
    ----------
    attention : array_like
        ``(N, N)`` row-stochastic map whose rows are the queried image's tokens.
    point : array_like
        ``(row, col)`` grid coordinates, any real position within half a cell of the grid.
    grid : tuple of int
        ``(h, w)`` with ``h * w == N``.
    window : int
        Radius of the soft-argmax refinement window, in tokens.

    Returns
    -------
    QueryResult
    """
    attention = np.asarray(attention)
    if attention.ndim != 2 or attention.shape[0] != attention.shape[1]:
        raise ValueError(f"attention must be a square (N, N) matrix, got shape {attention.shape}")
    h, w = check_grid(grid, attention.shape[0])
    points = check_points(point, (h, w), name="point")
    if points.shape[0] != 1:
        raise ValueError(f"query takes one (row, col) point, got {points.shape[0]}")
    rows, weights = bilinear_rows(points, (h, w))
    check_rows(attention, rows[0], "attention")
    heat = weights[0] @ attention[rows[0]].astype(np.float64)
    peak = int(np.argmax(heat))
    best = refine_peaks(heat[None], np.array([0]), np.array([peak]), (h, w), window)[0]
    score = window_mass(heat, peak, (h, w), window)
    return QueryResult(heatmap=heat.reshape(h, w), best=best, score=score, peak_token=peak)


@dataclass(frozen=True)
class TransferredPoints:
    """Points carried from the source image to the target image.

    Attributes
    ----------
    target : numpy.ndarray
        ``(P, 2)`` refined target positions, grid coordinates.
    confidence : numpy.ndarray
        ``(P,)`` in ``[0, 1]``, the same formula as `match` with the sub-token cycle error;
        0 where the blended attention row of either direction has no peak (is flat).
    cycle_error : numpy.ndarray
        ``(P,)`` distance from each point to its round trip, grid cells (sub-token).
    round_trip : numpy.ndarray
        ``(P, 2)`` where each point lands when its target is queried back.
    """

    target: np.ndarray
    confidence: np.ndarray
    cycle_error: np.ndarray
    round_trip: np.ndarray


def transfer_points(
    points,
    a_st,
    a_ts,
    grid,
    *,
    window: int = 1,
    cycle_scale: float = 1.0,
) -> TransferredPoints:
    """Carry keypoints from the source to the target, each with a confidence.

    Each point is queried forward (`query` on ``A_st``), its refined target is queried
    back (`query` on ``A_ts``), and the round trip gives a sub-token cycle error.

    Parameters
    ----------
    points : array_like
        ``(P, 2)`` (or one ``(2,)``) ``(row, col)`` source grid coordinates, any positions
        within half a cell of the grid.
    a_st, a_ts : array_like
        ``(N, N)`` row-stochastic maps.
    grid : tuple of int
        ``(h, w)`` with ``h * w == N``.
    window : int
        Radius of the refinement window, in tokens.
    cycle_scale : float
        Cycle error at which the cycle factor falls to ``exp(-1/2)``.

    Returns
    -------
    TransferredPoints
    """
    a_st, a_ts, grid = check_pair(a_st, a_ts, grid)
    points = check_points(points, grid, name="points")
    return transfer_points_checked(
        points, a_st, a_ts, grid, window=window, cycle_scale=cycle_scale
    )


def transfer_points_checked(
    points: np.ndarray,
    a_st: np.ndarray,
    a_ts: np.ndarray,
    grid: tuple[int, int],
    *,
    window: int = 1,
    cycle_scale: float = 1.0,
) -> TransferredPoints:
    """`transfer_points` on maps (`check_pair`) and points (`check_points`) already
    validated: for callers that checked them where they entered."""
    h, w = grid
    n = h * w
    forward, has_peak = peak_tokens(a_st, (h, w))
    density = np.bincount(forward[has_peak], minlength=n)
    rows, weights = bilinear_rows(points, (h, w))
    heat = np.einsum("pk,pkn->pn", weights, a_st[rows], dtype=np.float64)
    peaks, heat_has_peak = peak_tokens(heat, (h, w))
    everything = np.arange(len(points))
    target = refine_peaks(heat, everything, peaks, (h, w), window)
    forward_entropy = row_entropy(heat)

    back_rows, back_weights = bilinear_rows(np.clip(target, 0, [h - 1, w - 1]), (h, w))
    back_heat = np.einsum("pk,pkn->pn", back_weights, a_ts[back_rows], dtype=np.float64)
    back_peaks, back_has_peak = peak_tokens(back_heat, (h, w))
    round_trip = refine_peaks(back_heat, everything, back_peaks, (h, w), window)
    cycle_error = np.linalg.norm(points - round_trip, axis=1)
    confidence = confidence_score(
        cycle_error,
        np.maximum(forward_entropy, row_entropy(back_heat)),
        density[peaks],
        n,
        cycle_scale,
    )
    # a flat heatmap (no peak) in either direction supports no position
    confidence[~(heat_has_peak & back_has_peak)] = 0.0
    return TransferredPoints(
        target=target, confidence=confidence, cycle_error=cycle_error, round_trip=round_trip
    )
