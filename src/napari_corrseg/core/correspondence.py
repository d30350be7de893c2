"""Correspondences between two images from their cross self-attention, and how far to trust them.

Given ``A_st`` (source queries over target keys) and ``A_ts`` (the reverse), both ``(N, N)``
row-stochastic on an ``h x w`` grid, this module computes the inverse-mapping metrics of the
method (cycle error and IMS, inverse mapping entropy IME, mapping density MD, NIMS), dense
and sparse matches with sub-token refinement and a confidence in ``[0, 1]``, interactive
point queries, keypoint transfer, and the aggregation of maps from several layers or
resolutions. Formulas and conventions: ``docs/method.md``.

Coordinates are ``(row, col)`` grid coordinates: token ``k`` is centred at
``(k // w, k % w)``. Pure numpy; imports neither torch nor Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ._correspondence_ops import (
    aggregate_attention,
    bilinear_rows,
    check_pair,
    check_points,
    check_rows,
    confidence_score,
    refine_peaks,
    row_entropy,
    spread_select,
    window_mass,
)
from ._validation import check_grid
from .maps import token_coordinates

__all__ = [
    "InverseMapping",
    "Matches",
    "QueryResult",
    "TransferredPoints",
    "aggregate_attention",
    "inverse_mapping",
    "match",
    "query",
    "transfer_points",
]


@dataclass(frozen=True)
class InverseMapping:
    """Hard and soft inverse-mapping metrics of one ordered image pair.

    Per *source* token ``i``: `forward`, `cycle_error`, `soft_cycle_error`,
    `forward_entropy`, `confidence`. Per *target* token ``j``: `backward`, `entropy`
    (IME), `density` (MD), `nims`. All arrays have length ``N`` in token order; reshape
    to ``grid`` (or call `as_images`) to see them as maps.

    Attributes
    ----------
    forward : numpy.ndarray
        ``(N,)`` int, ``f(i) = argmax_j A_st[i, j]``.
    backward : numpy.ndarray
        ``(N,)`` int, ``g(j) = argmax_i A_ts[j, i]``.
    cycle_error : numpy.ndarray
        ``(N,)`` float, ``||p(i) - p(g(f(i)))||`` in grid cells.
    ims : float
        Inverse mapping score, the mean cycle error.
    entropy : numpy.ndarray
        ``(N,)`` float, IME ``-sum_i A_ts[j, i] log A_ts[j, i]`` (natural log), in
        ``[0, log N]``.
    density : numpy.ndarray
        ``(N,)`` int, MD ``#{i : f(i) = j}``; sums to ``N``.
    nims : numpy.ndarray
        ``(N,)`` float, ``IME / log(1 + MD)``; NaN where ``MD == 0``.
    soft_cycle_error : numpy.ndarray
        ``(N,)`` float, ``||p(i) - (A_st A_ts P)[i]||``: the distance to the expected
        position after going to the target and back with the full distributions.
    forward_entropy : numpy.ndarray
        ``(N,)`` float, ``-sum_j A_st[i, j] log A_st[i, j]``.
    confidence : numpy.ndarray
        ``(N,)`` float in ``[0, 1]``: confidence of the match of each source token (see
        `match`).
    grid : tuple of int
        ``(h, w)``.
    """

    forward: np.ndarray
    backward: np.ndarray
    cycle_error: np.ndarray
    ims: float
    entropy: np.ndarray
    density: np.ndarray
    nims: np.ndarray
    soft_cycle_error: np.ndarray
    forward_entropy: np.ndarray
    confidence: np.ndarray
    grid: tuple[int, int]

    def as_images(self) -> dict[str, np.ndarray]:
        """Every per-token metric reshaped to the ``(h, w)`` grid, keyed by field name.

        ``cycle_error``, ``soft_cycle_error``, ``forward_entropy`` and ``confidence`` live
        on the source image; ``entropy``, ``density`` and ``nims`` on the target image.
        """
        names = (
            "cycle_error",
            "soft_cycle_error",
            "forward_entropy",
            "confidence",
            "entropy",
            "density",
            "nims",
        )
        return {name: getattr(self, name).reshape(self.grid) for name in names}


def inverse_mapping(a_st, a_ts, grid, *, cycle_scale: float = 1.0) -> InverseMapping:
    """Compute the inverse-mapping metrics of ``A_st`` and ``A_ts``.

    Parameters
    ----------
    a_st : array_like
        ``(N, N)`` row-stochastic map, source queries over target keys.
    a_ts : array_like
        ``(N, N)`` row-stochastic map, target queries over source keys.
    grid : tuple of int
        ``(h, w)`` with ``h * w == N``, shared by both images.
    cycle_scale : float
        Cycle error (grid cells) at which the cycle factor of the confidence falls to
        ``exp(-1/2)``.

    Returns
    -------
    InverseMapping

    Raises
    ------
    ValueError
        If a map is not square, not row-stochastic, contains NaN, or does not match the
        grid, or if the two maps differ in size.
    """
    a_st, a_ts, grid = check_pair(a_st, a_ts, grid)
    return _inverse_mapping_checked(a_st, a_ts, grid, cycle_scale)


def _inverse_mapping_checked(
    a_st: np.ndarray, a_ts: np.ndarray, grid: tuple[int, int], cycle_scale: float
) -> InverseMapping:
    """`inverse_mapping` on maps that `check_pair` has already validated."""
    h, w = grid
    n = h * w
    positions = token_coordinates((h, w))
    forward = np.argmax(a_st, axis=1)
    backward = np.argmax(a_ts, axis=1)
    cycle_error = np.linalg.norm(positions - positions[backward[forward]], axis=1)
    entropy = row_entropy(a_ts)
    forward_entropy = row_entropy(a_st)
    density = np.bincount(forward, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        nims = np.where(density > 0, entropy / np.log1p(density), np.nan)
    # A_st @ (A_ts @ P): two (N, N) x (N, 2) products, no N x N temporary
    round_trip = a_st @ (a_ts @ positions.astype(np.float32))
    soft_cycle_error = np.linalg.norm(positions - round_trip, axis=1)
    confidence = confidence_score(
        cycle_error,
        np.maximum(forward_entropy, entropy[forward]),
        density[forward],
        n,
        cycle_scale,
    )
    return InverseMapping(
        forward=forward,
        backward=backward,
        cycle_error=cycle_error,
        ims=float(cycle_error.mean()),
        entropy=entropy,
        density=density,
        nims=nims,
        soft_cycle_error=soft_cycle_error,
        forward_entropy=forward_entropy,
        confidence=confidence,
        grid=(h, w),
    )


@dataclass(frozen=True)
class Matches:
    """Token matches from a source image to a target image, in grid coordinates.

    Index with a boolean mask or integer array (``m[m.confidence > 0.5]``) or call
    `select` to keep a subset; ``len(m)`` is the number of matches ``K``.

    Attributes
    ----------
    source : numpy.ndarray
        ``(K, 2)`` float, source token centres.
    target : numpy.ndarray
        ``(K, 2)`` float, refined target positions (soft-argmax around the peak).
    confidence : numpy.ndarray
        ``(K,)`` float in ``[0, 1]``.
    cycle_error : numpy.ndarray
        ``(K,)`` float, hard cycle error of the source token, grid cells.
    entropy : numpy.ndarray
        ``(K,)`` float, IME of the matched target token.
    source_token, target_token : numpy.ndarray
        ``(K,)`` int token indices (``target_token`` is the peak ``f(i)``).
    grid : tuple of int
        ``(h, w)``.
    """

    source: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    cycle_error: np.ndarray
    entropy: np.ndarray
    source_token: np.ndarray
    target_token: np.ndarray
    grid: tuple[int, int]

    def __len__(self) -> int:
        return len(self.source_token)

    def __getitem__(self, key) -> Matches:
        return self.select(key)

    def select(self, key) -> Matches:
        """The matches picked by a boolean mask, an integer index array or a slice."""
        if isinstance(key, int | np.integer):
            key = [key]  # keep (K, 2) / (K,) shapes for a single match
        values = {
            f.name: (getattr(self, f.name) if f.name == "grid" else getattr(self, f.name)[key])
            for f in fields(self)
        }
        return Matches(**values)


def match(
    a_st,
    a_ts,
    grid,
    *,
    mutual: bool = False,
    min_confidence: float = 0.0,
    max_matches: int | None = None,
    window: int = 1,
    cycle_scale: float = 1.0,
    inverse: InverseMapping | None = None,
) -> Matches:
    """Match every source token to the target and rate each match.

    The target of source token ``i`` is its peak ``f(i)``, refined to sub-token precision
    by the soft-argmax of ``A_st[i]`` over the ``(2 window + 1)^2`` tokens around the peak.
    The confidence multiplies three factors in ``[0, 1]``:

    - cycle: ``exp(-d^2 / (2 s^2))`` with ``d`` the hard cycle error, ``s = cycle_scale``;
    - entropy: ``1 - max(H_fwd(i), IME(f(i))) / log N``, the less certain direction;
    - density: ``log 2 / log(1 + MD(f(i)))``, 1 for a one-to-one target, lower for a
      target many sources collapse onto.

    Parameters
    ----------
    a_st, a_ts : array_like
        ``(N, N)`` row-stochastic maps (source over target, target over source).
    grid : tuple of int
        ``(h, w)`` with ``h * w == N``.
    mutual : bool
        Keep only mutual nearest neighbours, ``g(f(i)) == i``.
    min_confidence : float
        Drop matches below this confidence.
    max_matches : int, optional
        Keep at most this many, spread over the source image: the best match in each cell
        of a grid of about ``max_matches`` cells first, then the next best overall.
    window : int
        Radius, in tokens, of the refinement window (0 disables refinement).
    cycle_scale : float
        See above; ignored when ``inverse`` is given (its confidence is used).
    inverse : InverseMapping, optional
        Precomputed `inverse_mapping` of the same maps, to skip recomputing it.

    Returns
    -------
    Matches
        In source token order.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if max_matches is not None and max_matches < 0:
        raise ValueError(f"max_matches must be >= 0, got {max_matches}")
    a_st, a_ts, checked_grid = check_pair(a_st, a_ts, grid)
    if inverse is None:
        inverse = _inverse_mapping_checked(a_st, a_ts, checked_grid, cycle_scale)
    elif tuple(inverse.grid) != checked_grid:
        raise ValueError(
            f"inverse was computed on grid {inverse.grid}, the maps are on {checked_grid}; "
            "recompute it with inverse_mapping(a_st, a_ts, grid)"
        )
    h, w = inverse.grid
    keep = inverse.confidence >= min_confidence
    if mutual:
        keep &= inverse.backward[inverse.forward] == np.arange(h * w)
    chosen = np.flatnonzero(keep)
    positions = token_coordinates((h, w))
    if max_matches is not None:
        picked = spread_select(positions[chosen], inverse.confidence[chosen], max_matches, (h, w))
        chosen = np.sort(chosen[picked])
    target_token = inverse.forward[chosen]
    target = refine_peaks(a_st, chosen, target_token, (h, w), window)
    return Matches(
        source=positions[chosen],
        target=target,
        confidence=inverse.confidence[chosen],
        cycle_error=inverse.cycle_error[chosen],
        entropy=inverse.entropy[target_token],
        source_token=chosen,
        target_token=target_token,
        grid=(h, w),
    )


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
        ``(P,)`` in ``[0, 1]``, the same formula as `match` with the sub-token cycle error.
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
    a_st, a_ts, (h, w) = check_pair(a_st, a_ts, grid)
    n = h * w
    points = check_points(points, (h, w), name="points")
    density = np.bincount(np.argmax(a_st, axis=1), minlength=n)
    rows, weights = bilinear_rows(points, (h, w))
    heat = np.einsum("pk,pkn->pn", weights, a_st[rows], dtype=np.float64)
    peaks = np.argmax(heat, axis=1)
    everything = np.arange(len(points))
    target = refine_peaks(heat, everything, peaks, (h, w), window)
    forward_entropy = row_entropy(heat)

    back_rows, back_weights = bilinear_rows(np.clip(target, 0, [h - 1, w - 1]), (h, w))
    back_heat = np.einsum("pk,pkn->pn", back_weights, a_ts[back_rows], dtype=np.float64)
    back_peaks = np.argmax(back_heat, axis=1)
    round_trip = refine_peaks(back_heat, everything, back_peaks, (h, w), window)
    cycle_error = np.linalg.norm(points - round_trip, axis=1)
    confidence = confidence_score(
        cycle_error,
        np.maximum(forward_entropy, row_entropy(back_heat)),
        density[peaks],
        n,
        cycle_scale,
    )
    return TransferredPoints(
        target=target, confidence=confidence, cycle_error=cycle_error, round_trip=round_trip
    )
