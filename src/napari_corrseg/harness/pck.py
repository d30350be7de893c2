"""PCK@alpha, per image and per point, per category and overall; precision vs coverage.

A predicted keypoint is *correct* when its distance to the annotated one is at most
``alpha * threshold_size`` (``<=``, as DIFT's ``eval_spair.py`` and weakalign count it).
Papers report two different averages and rarely say which:

* **per image** (per pair): PCK of each pair, then the mean over pairs;
* **per point**: correct keypoints over all keypoints, pooled.

Both are always reported, labelled. The "all" row averages over every pair (per image)
or every point (per point), not over category means.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PairResult",
    "PckRow",
    "correct_mask",
    "precision_coverage",
    "summarize_pck",
]

#: Category name of the row that pools every pair.
ALL = "all"


@dataclass(frozen=True)
class PairResult:
    """Prediction errors of one image pair.

    Parameters
    ----------
    pair_id, category : str
        From the dataset.
    distances : numpy.ndarray
        ``(P,)`` pixel distance between predicted and annotated target keypoints.
    threshold_size : float
        Length in pixels that ``alpha`` multiplies.
    confidence : numpy.ndarray
        ``(P,)`` the method's confidence in each prediction (higher is surer).
    """

    pair_id: str
    category: str
    distances: np.ndarray
    threshold_size: float
    confidence: np.ndarray

    def __post_init__(self) -> None:
        distances = np.asarray(self.distances, dtype=np.float64).reshape(-1)
        confidence = np.asarray(self.confidence, dtype=np.float64).reshape(-1)
        if distances.shape != confidence.shape:
            raise ValueError(
                f"pair {self.pair_id}: {distances.size} distances but {confidence.size} "
                "confidences; give one confidence per keypoint"
            )
        if not self.threshold_size > 0:
            raise ValueError(
                f"pair {self.pair_id}: threshold size must be positive, got {self.threshold_size}"
            )
        object.__setattr__(self, "distances", distances)
        object.__setattr__(self, "confidence", confidence)

    def correct(self, alpha: float) -> np.ndarray:
        """``(P,)`` bool: which keypoints are within ``alpha * threshold_size``."""
        return correct_mask(self.distances, self.threshold_size, alpha)


@dataclass(frozen=True)
class PckRow:
    """One line of the PCK table: a category (or ``"all"``) at one ``alpha``."""

    category: str
    alpha: float
    n_pairs: int
    n_points: int
    pck_per_image: float
    pck_per_point: float


def correct_mask(distances, threshold_size: float, alpha: float) -> np.ndarray:
    """Return which keypoints count as correct: ``distance <= alpha * threshold_size``.

    Parameters
    ----------
    distances : array_like
        ``(P,)`` pixel distances.
    threshold_size : float
        Reference length in pixels (bounding-box or image side).
    alpha : float
        Fraction of the reference length, e.g. 0.1.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` bool.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, e.g. 0.1; got {alpha}")
    distances = np.asarray(distances, dtype=np.float64)
    if np.isnan(distances).any():
        raise ValueError("distances contain NaN; every keypoint needs a prediction")
    return distances <= alpha * float(threshold_size)


def summarize_pck(results: Sequence[PairResult], alphas: Sequence[float] = (0.1,)):
    """PCK per category and overall at each ``alpha``, both per image and per point.

    Pairs without keypoints count in ``n_pairs`` but not in either average.

    Parameters
    ----------
    results : sequence of PairResult
    alphas : sequence of float

    Returns
    -------
    list of PckRow
        Categories in sorted order, then ``"all"``, for each alpha in turn.
    """
    if not results:
        raise ValueError("no pair results to summarise; was the dataset empty?")
    categories = sorted({r.category for r in results})
    rows = []
    for alpha in alphas:
        for category in [*categories, ALL]:
            chosen = [r for r in results if category in (ALL, r.category)]
            per_pair = [r.correct(alpha) for r in chosen]
            scored = [c for c in per_pair if c.size]
            n_points = int(sum(c.size for c in per_pair))
            rows.append(
                PckRow(
                    category=category,
                    alpha=float(alpha),
                    n_pairs=len(chosen),
                    n_points=n_points,
                    pck_per_image=float(np.mean([c.mean() for c in scored]))
                    if scored
                    else float("nan"),
                    pck_per_point=float(sum(c.sum() for c in per_pair) / n_points)
                    if n_points
                    else float("nan"),
                )
            )
    return rows


def precision_coverage(correct, confidence, n_steps: int = 20):
    """PCK among the most confident predictions, as a function of the fraction kept.

    Predictions are sorted by decreasing confidence; for a coverage ``c`` the first
    ``ceil(c * P)`` are kept and their fraction correct is the precision. If confidence
    means anything, precision falls as coverage grows; a flat curve means it does not.

    Parameters
    ----------
    correct : array_like
        ``(P,)`` bool, pooled over all pairs.
    confidence : array_like
        ``(P,)`` float, higher is surer. Ties keep their input order.
    n_steps : int
        Number of coverage levels, evenly spaced in ``(0, 1]``.

    Returns
    -------
    coverage, precision : numpy.ndarray
        ``(n_steps,)`` each.
    """
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if correct.shape != confidence.shape:
        raise ValueError(f"{correct.size} correctness flags but {confidence.size} confidences")
    if correct.size == 0:
        raise ValueError("no predictions to build a precision-coverage curve from")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    # NaN confidence (e.g. NIMS where undefined) ranks last.
    order = np.argsort(-np.nan_to_num(confidence, nan=-np.inf), kind="stable")
    cumulative = np.cumsum(correct[order])
    coverage = np.arange(1, n_steps + 1) / n_steps
    kept = np.maximum(np.ceil(coverage * correct.size - 1e-9).astype(int), 1)
    precision = cumulative[kept - 1] / kept
    return coverage, precision
