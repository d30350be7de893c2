"""Correspondences between two images from their cross self-attention, and how far to trust them.

Given ``A_st`` (source queries over target keys) and ``A_ts`` (the reverse), both ``(N, N)``
row-stochastic on an ``h x w`` grid, this module computes the inverse-mapping metrics of the
method (cycle error and IMS, inverse mapping entropy IME, mapping density MD, NIMS), dense
and sparse matches with sub-token refinement, a confidence in ``[0, 1]`` and an automatic
reliability cut, interactive point queries, keypoint transfer, and the aggregation of maps
from several layers or resolutions. Formulas and conventions: ``docs/method.md``.

Coordinates are ``(row, col)`` grid coordinates: token ``k`` is centred at
``(k // w, k % w)``. Pure numpy; imports neither torch nor Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ._correspondence_ops import (
    aggregate_attention,
    check_pair,
    confidence_score,
    refine_peaks,
    spread_select,
)
from ._reliability import (
    ReliabilityCut,
    cut_between,
    cycle_classes,
    round_trips,
    row_summary,
)
from .maps import token_coordinates
from .point_query import QueryResult, TransferredPoints, query, transfer_points

__all__ = [
    "InverseMapping",
    "Matches",
    "QueryResult",
    "ReliabilityCut",
    "TransferredPoints",
    "aggregate_attention",
    "inverse_mapping",
    "match",
    "query",
    "reliability_cut",
    "transfer_points",
]


@dataclass(frozen=True)
class InverseMapping:
    """Hard and soft inverse-mapping metrics of one ordered image pair.

    Per *source* token ``i``: `forward`, `has_peak`, `cycle_error`, `soft_cycle_error`,
    `return_probability`, `forward_entropy`, `confidence`. Per *target* token ``j``: `backward`,
    `target_has_peak`, `entropy` (IME), `density` (MD), `nims`. All arrays have length
    ``N`` in token order; reshape to ``grid`` (or call `as_images`) to see them as maps.

    Attributes
    ----------
    forward : numpy.ndarray
        ``(N,)`` int, ``f(i) = argmax_j A_st[i, j]`` (the first maximum).
    backward : numpy.ndarray
        ``(N,)`` int, ``g(j) = argmax_i A_ts[j, i]``.
    cycle_error : numpy.ndarray
        ``(N,)`` float, ``||p(i) - p(g(f(i)))||`` in grid cells; NaN where the cycle is
        undefined (row ``i`` of ``A_st`` or row ``f(i)`` of ``A_ts`` has no peak).
    ims : float
        Inverse mapping score, the mean of the defined cycle errors (NaN if none is).
    entropy : numpy.ndarray
        ``(N,)`` float, IME ``-sum_i A_ts[j, i] log A_ts[j, i]`` (natural log), in
        ``[0, log N]``.
    density : numpy.ndarray
        ``(N,)`` int, MD ``#{i : f(i) = j}`` over the source tokens that have a peak.
    nims : numpy.ndarray
        ``(N,)`` float, ``IME / log(1 + MD)``; NaN where ``MD == 0``.
    soft_cycle_error : numpy.ndarray
        ``(N,)`` float, ``||p(i) - (A_st A_ts P)[i]||``: the distance to the expected
        position after going to the target and back with the full distributions.
    forward_entropy : numpy.ndarray
        ``(N,)`` float, ``-sum_j A_st[i, j] log A_st[i, j]``.
    confidence : numpy.ndarray
        ``(N,)`` float in ``[0, 1]``: confidence of the match of each source token (see
        `match`); 0 where the cycle is undefined.
    grid : tuple of int
        ``(h, w)``.
    has_peak : numpy.ndarray
        ``(N,)`` bool: row ``i`` of ``A_st`` has a peak (its maximum is not a tie, see
        ``docs/method.md``). A source token without one is never matched.
    target_has_peak : numpy.ndarray
        ``(N,)`` bool: the same for the rows of ``A_ts``.
    return_probability : numpy.ndarray
        ``(N,)`` float, ``(A_st A_ts)[i, i]``: how often a round trip drawn from the
        attention comes back to token ``i`` exactly; about ``1 / N`` for a row that
        carries no information.
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
    has_peak: np.ndarray
    target_has_peak: np.ndarray
    return_probability: np.ndarray

    def as_images(self) -> dict[str, np.ndarray]:
        """Every per-token metric reshaped to the ``(h, w)`` grid, keyed by field name.

        ``cycle_error``, ``soft_cycle_error``, ``return_probability``, ``forward_entropy``
        and ``confidence`` live on the source image; ``entropy``, ``density`` and
        ``nims`` on the target image.
        """
        names = (
            "cycle_error",
            "soft_cycle_error",
            "return_probability",
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
        If a map is not square, not row-stochastic (within ``1e-2``; rows off by more
        than float32 rounding are renormalised), contains NaN, or does not match the
        grid, or if the two maps differ in size.
    """
    a_st, a_ts, grid = check_pair(a_st, a_ts, grid)
    return inverse_mapping_checked(a_st, a_ts, grid, cycle_scale)


def inverse_mapping_checked(
    a_st: np.ndarray, a_ts: np.ndarray, grid: tuple[int, int], cycle_scale: float
) -> InverseMapping:
    """`inverse_mapping` on maps that `check_pair` has already validated."""
    h, w = grid
    n = h * w
    positions = token_coordinates((h, w))
    forward, has_peak, forward_entropy = row_summary(a_st, (h, w))
    backward, target_has_peak, entropy = row_summary(a_ts, (h, w))
    cycle_error = np.linalg.norm(positions - positions[backward[forward]], axis=1)
    defined = has_peak & target_has_peak[forward]
    cycle_error[~defined] = np.nan
    density = np.bincount(forward[has_peak], minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        nims = np.where(density > 0, entropy / np.log1p(density), np.nan)
    # A_st @ (A_ts @ P) and diag(A_st A_ts) in one tiled pass, no N x N temporary
    round_trip, returned = round_trips(a_st, a_ts, positions)
    soft_cycle_error = np.linalg.norm(positions - round_trip, axis=1)
    confidence = confidence_score(
        np.where(defined, cycle_error, 0.0),
        np.maximum(forward_entropy, entropy[forward]),
        density[forward],
        n,
        cycle_scale,
    )
    confidence[~defined] = 0.0
    return InverseMapping(
        forward=forward,
        backward=backward,
        cycle_error=cycle_error,
        ims=float(cycle_error[defined].mean()) if defined.any() else float("nan"),
        entropy=entropy,
        density=density,
        nims=nims,
        soft_cycle_error=soft_cycle_error,
        forward_entropy=forward_entropy,
        confidence=confidence,
        grid=(h, w),
        has_peak=has_peak,
        target_has_peak=target_has_peak,
        return_probability=returned,
    )


def reliability_cut(inverse: InverseMapping) -> ReliabilityCut:
    """The confidence above which this pair's matches are supported: ``"auto"`` of `match`.

    The pair's own cycles label its source tokens. A cycle is *closed* when the hard
    round trip ``g(f(i))`` comes back to ``i`` itself and the soft round trip returns to
    ``i`` more often than chance (`InverseMapping.return_probability` above ``1 / N``:
    a diffuse row that closes by coincidence does not count). It is *broken* when the
    round trip lands more than one token away (beyond the 8 neighbours: the tolerance a
    match is judged by), is undefined, or returns no more often than chance. Cycles that
    come back to a neighbour are left out: the cut decides them, they do not place it.
    The cut is the confidence that separates closed from broken best, misplacing the
    fewest tokens (closed below it, broken at or above it); among equally good cuts, the
    lowest. Nothing is tuned: the labels, the chance level and the confidences all come
    from the pair. Tokens whose row has no peak take no part and are never matched.

    Parameters
    ----------
    inverse : InverseMapping
        From `inverse_mapping`.

    Returns
    -------
    ReliabilityCut
        ``threshold`` is the cut; ``match(..., min_confidence=cut.threshold)`` keeps the
        same matches as ``"auto"``.
    """
    eligible = inverse.has_peak
    closed, broken = cycle_classes(
        inverse.cycle_error[eligible],
        inverse.return_probability[eligible],
        inverse.forward.size,
    )
    return cut_between(inverse.confidence[eligible], closed, broken)


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
        ``(K,)`` float, hard cycle error of the source token, grid cells (NaN where the
        target's reverse row has no peak).
    entropy : numpy.ndarray
        ``(K,)`` float, IME of the matched target token.
    source_token, target_token : numpy.ndarray
        ``(K,)`` int token indices (``target_token`` is the peak ``f(i)``).
    grid : tuple of int
        ``(h, w)``.
    min_confidence : float
        The confidence floor that was applied: with ``min_confidence="auto"`` the cut
        chosen for this pair (reusable as a number), else the number given.
    """

    source: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    cycle_error: np.ndarray
    entropy: np.ndarray
    source_token: np.ndarray
    target_token: np.ndarray
    grid: tuple[int, int]
    min_confidence: float = 0.0

    def __len__(self) -> int:
        return len(self.source_token)

    def __getitem__(self, key) -> Matches:
        return self.select(key)

    def select(self, key) -> Matches:
        """The matches picked by a boolean mask, an integer index array or a slice."""
        if isinstance(key, int | np.integer):
            key = [key]  # keep (K, 2) / (K,) shapes for a single match
        values = {
            f.name: (
                getattr(self, f.name)
                if f.name in ("grid", "min_confidence")
                else getattr(self, f.name)[key]
            )
            for f in fields(self)
        }
        return Matches(**values)


def _check_min_confidence(min_confidence) -> bool:
    """True for "auto"; raise ValueError unless a number >= 0."""
    if isinstance(min_confidence, str):
        if min_confidence != "auto":
            raise ValueError(
                f'min_confidence must be "auto" or a number >= 0, got {min_confidence!r}'
            )
        return True
    try:
        value = float(min_confidence)
    except (TypeError, ValueError):
        raise ValueError(
            f'min_confidence must be "auto" or a number >= 0, got {min_confidence!r}'
        ) from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f'min_confidence must be "auto" or a number >= 0, got {min_confidence!r}')
    return False


def match(
    a_st,
    a_ts,
    grid,
    *,
    mutual: bool = False,
    min_confidence: float | str = "auto",
    max_matches: int | None = None,
    window: int = 1,
    cycle_scale: float = 1.0,
    inverse: InverseMapping | None = None,
) -> Matches:
    """Match the source tokens to the target, rate each match and keep the supported ones.

    The target of source token ``i`` is its peak ``f(i)``, refined to sub-token precision
    by the soft-argmax of ``A_st[i]`` over the ``(2 window + 1)^2`` tokens around the peak.
    The confidence multiplies three factors in ``[0, 1]``:

    - cycle: ``exp(-d^2 / (2 s^2))`` with ``d`` the hard cycle error, ``s = cycle_scale``;
    - entropy: ``1 - max(H_fwd(i), IME(f(i))) / log N``, the less certain direction;
    - density: ``log 2 / log(1 + MD(f(i)))``, 1 for a one-to-one target, lower for a
      target many sources collapse onto.

    By default (``min_confidence="auto"``) only matches at or above the pair's
    `reliability_cut` are returned: the confidence that best separates tokens whose
    cycle closes from those whose cycle breaks. ``min_confidence=0`` returns every
    source token that has a peak; a row with no peak (a uniform row, a tie) is never a
    match.

    Parameters
    ----------
    a_st, a_ts : array_like
        ``(N, N)`` row-stochastic maps (source over target, target over source).
    grid : tuple of int
        ``(h, w)`` with ``h * w == N``.
    mutual : bool
        Keep only mutual nearest neighbours, ``g(f(i)) == i``.
    min_confidence : "auto" or float
        Drop matches below this confidence; "auto" chooses it from the pair (the value
        used is `Matches.min_confidence`).
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
    auto = _check_min_confidence(min_confidence)
    a_st, a_ts, checked_grid = check_pair(a_st, a_ts, grid)
    if inverse is None:
        inverse = inverse_mapping_checked(a_st, a_ts, checked_grid, cycle_scale)
    elif tuple(inverse.grid) != checked_grid:
        raise ValueError(
            f"inverse was computed on grid {inverse.grid}, the maps are on {checked_grid}; "
            "recompute it with inverse_mapping(a_st, a_ts, grid)"
        )
    h, w = inverse.grid
    floor = reliability_cut(inverse).threshold if auto else float(min_confidence)
    keep = inverse.has_peak & (inverse.confidence >= floor)
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
        min_confidence=float(floor),
    )
