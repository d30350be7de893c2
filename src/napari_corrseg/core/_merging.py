"""Symmetric KL between attention distributions, the merge noise floor and the log-gap cut.

Private home of the distance and threshold helpers of
`napari_corrseg.core.segmentation` (which re-exports them); used by co-segmentation too.
numpy only.
"""

from __future__ import annotations

import numpy as np

#: Probabilities are floored here before logs; far below any attention value that matters.
LOG_FLOOR = 1e-12
#: A cut is clear when the merge distance at least doubles across it: the clusters it
#: separates are twice as far apart as the widest merge inside any of them. Structureless
#: synthetic maps (noise, a smooth kernel with no regions) reach at most 1.7; every
#: segmentable synthetic case of the tests and the threshold study at least 3.5.
CLEAR_GAP_RATIO = 2.0


def symmetric_kl(p: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
    """Pairwise symmetric KL, ``0.5 * (KL(p||q) + KL(q||p))``, between rows.

    Parameters
    ----------
    p : numpy.ndarray
        ``(K, N)`` distributions (rows sum to 1).
    q : numpy.ndarray, optional
        ``(M, N)`` distributions; defaults to ``p``.

    Returns
    -------
    numpy.ndarray
        ``(K, M)`` float64, non-negative, in nats.

    Notes
    -----
    Computed in float64 as ``p.log p + q.log q - p.log q - q.log p``: four matrix
    products whose sum cancels to the distance. In float32 that cancellation left noise
    of ~3e-6 nats, above the distances of maps with no structure; in float64 the
    arithmetic noise is bounded by `merge_noise_floor`.
    """
    p = np.asarray(p, dtype=np.float64)
    same = q is None
    q = p if same else np.asarray(q, dtype=np.float64)
    log_p = np.log(np.maximum(p, LOG_FLOOR))
    log_q = log_p if same else np.log(np.maximum(q, LOG_FLOOR))
    # sum (p - q)(log p - log q) = p.log p + q.log q - p.log q - q.log p
    p_log_p = np.sum(p * log_p, axis=1, dtype=np.float64)
    q_log_q = p_log_p if same else np.sum(q * log_q, axis=1, dtype=np.float64)
    p_log_q = p @ log_q.T
    # against itself q.log p is the transpose of p.log q: one product instead of two
    q_log_p = p_log_q.T if same else log_p @ q.T
    return np.maximum(0.5 * (p_log_p[:, None] + q_log_q[None, :] - p_log_q - q_log_p), 0.0)


def merge_noise_floor(rows: np.ndarray, pooled: np.ndarray, precision: float) -> float:
    """Largest merge distance that the rounding of the input and of the arithmetic can make.

    Two parts, both measured or bounded on this map, none chosen by hand:

    - input: every value perturbed by one unit of its precision (``x (1 +- eps)``,
      random signs, fixed seed); twice the largest symmetric KL this moves an anchor's
      proposal (two proposals that are equal up to rounding each carry such an error);
    - arithmetic: the float64 error bound of the four dot products of `symmetric_kl`
      (``2 M eps64`` times the largest ``sum p |log p|`` over ``M`` keys).

    Parameters
    ----------
    rows : numpy.ndarray
        ``(K, N)`` float64 attention rows of the anchors.
    pooled : numpy.ndarray
        ``(N, M)`` float64 attention with pooled keys.
    precision : float
        Relative precision of the input values (`input_precision`).

    Returns
    -------
    float
    """
    rng = np.random.default_rng(0)
    proposals = _normalised(rows @ pooled)
    shaken_rows = rows * (1.0 + precision * rng.choice([-1.0, 1.0], size=rows.shape))
    shaken = pooled * (1.0 + precision * rng.choice([-1.0, 1.0], size=pooled.shape))
    moved = _normalised(shaken_rows @ shaken)
    log_p = np.log(np.maximum(proposals, LOG_FLOOR))
    log_m = np.log(np.maximum(moved, LOG_FLOOR))
    # direct form: every term >= 0, no cancellation
    input_part = 2.0 * float(np.max(0.5 * np.sum((proposals - moved) * (log_p - log_m), axis=1)))
    magnitude = float(np.max(np.sum(proposals * np.abs(log_p), axis=1)))
    arithmetic_part = 2.0 * pooled.shape[1] * float(np.finfo(np.float64).eps) * magnitude
    return input_part + arithmetic_part


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return matrix / matrix.sum(axis=1, keepdims=True)


def _log_distances(merge_distances, floor: float = 0.0) -> np.ndarray:
    # floored at the noise floor, or at the smallest positive distance, so that ties at
    # zero (or inside the noise) stay finite and make no gap
    distances = np.asarray(merge_distances, dtype=np.float64)
    if floor > 0:
        return np.log(np.maximum(distances, floor))
    positive = distances[distances > 0]
    return np.log(np.maximum(distances, positive.min() if positive.size else 1.0))


def is_clear_gap(gap_ratio: float) -> bool:
    """Whether a cut with this gap ratio is a clear one (`CLEAR_GAP_RATIO`)."""
    return bool(gap_ratio >= CLEAR_GAP_RATIO)


def merge_levels(
    merge_distances, max_segments: int = 20, *, floor: float = 0.0
) -> list[tuple[int, float, float]]:
    """Every cut of a merge sequence into 2..``max_segments`` clusters.

    Returns ``(n_clusters, threshold, gap_ratio)`` per cut, by increasing
    ``n_clusters``; thresholds are geometric middles of the gaps, as "auto" uses.
    Distances below ``floor`` count as ``floor``.
    """
    logs = _log_distances(merge_distances, floor)
    levels = []
    for n_clusters in range(2, min(max_segments, logs.size) + 1):
        m = logs.size - n_clusters  # the gap between merges m and m + 1
        threshold = float(np.exp(0.5 * (logs[m] + logs[m + 1])))
        levels.append((n_clusters, threshold, float(np.exp(logs[m + 1] - logs[m]))))
    return levels


def widest_log_gap(merge_distances: np.ndarray, *, floor: float = 0.0) -> tuple[int, float, float]:
    """Position of the widest gap between successive merge distances on a log scale.

    Returns ``(n_clusters, threshold, gap_ratio)``: cutting inside the gap after merge
    ``m`` leaves ``n_anchors - m - 1`` clusters; the threshold is the geometric middle
    of the gap. Distances are floored at ``floor`` (the noise floor of the input, see
    `merge_noise_floor`), or with ``floor=0`` at the smallest positive one, so that ties
    at zero do not make an infinite gap. When every distance is inside the floor the
    answer is one cluster with a gap ratio of 1. Judge the gap with `is_clear_gap`.
    """
    distances = np.asarray(merge_distances, dtype=np.float64)
    if distances.size == 0:
        return 1, 0.0, 1.0
    if floor > 0 and distances.max() <= floor:  # nothing above the rounding noise
        return 1, 2.0 * float(floor), 1.0
    if distances.size == 1:  # two anchors: nothing to compare the one merge with
        return 1, float(distances[0]) * 2 + 1.0, 1.0
    logs = _log_distances(distances, floor)
    gaps = np.diff(logs)
    m = int(np.argmax(gaps))
    threshold = float(np.exp(0.5 * (logs[m] + logs[m + 1])))
    n_clusters = distances.size - m
    return n_clusters, threshold, float(np.exp(gaps[m]))
