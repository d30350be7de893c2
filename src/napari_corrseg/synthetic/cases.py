"""Synthetic pairs with a known answer for judging a reliability cut, and how to score it.

The cases the project's goal is stated on (issue 15): a smooth warp, an affine warp, a
shift and a flip, each with 30 % of the target occluded by a box at a random place, and
noisy logits. Tests and ``benchmarks/bench_correspondence.py`` use the same cases.

Scoring, against the truth of `napari_corrseg.synthetic.warps.SyntheticPair`:

- *precision*: the share of returned matches whose refined target lies within one token
  (``<= 1`` grid cell) of the true position;
- *recall*: the share of *matchable* source tokens (their counterpart is visible in the
  target) that are returned and correct.

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .warps import SyntheticPair, Warp, affine, flip, make_pair, smooth_warp, translation

__all__ = [
    "GOAL_WARPS",
    "MatchScore",
    "goal_pair",
    "occlusion_box",
    "score_matches",
]


def _rotation(degrees: float, scale: float = 1.0, shear: float = 0.0) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rotate @ np.array([[scale, shear], [0.0, scale]])


#: The warp kinds of the goal: name -> warp.
GOAL_WARPS: dict[str, Warp] = {
    "smooth": smooth_warp(1.5, seed=1),
    "affine": affine(_rotation(10.0, scale=1.05, shear=0.05), shift=(0.5, -1.0)),
    "shift": translation((3.0, 2.0)),
    "flip": flip("col"),
}


def occlusion_box(
    grid: tuple[int, int], fraction: float, seed: int = 0
) -> tuple[int, int, int, int]:
    """A box ``(row_start, col_start, row_stop, col_stop)`` covering about ``fraction`` of
    the grid, as square as the grid allows, at a random place (seeded)."""
    h, w = grid
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    rows = max(1, min(h, round(h * np.sqrt(fraction))))
    cols = max(1, min(w, round(fraction * h * w / rows)))
    rng = np.random.default_rng(seed)
    r0 = int(rng.integers(0, h - rows + 1))
    c0 = int(rng.integers(0, w - cols + 1))
    return r0, c0, r0 + rows, c0 + cols


def goal_pair(
    warp: Warp | str,
    grid: tuple[int, int] = (24, 24),
    seed: int = 0,
    *,
    occlusion: float = 0.3,
    noise: float = 0.5,
    temperature: float = 0.9,
) -> SyntheticPair:
    """One pair of the goal's kind: ``warp`` (or a `GOAL_WARPS` name), ``occlusion`` of
    the target hidden by a box, logit noise ``noise``; ``seed`` sets box and noise."""
    if isinstance(warp, str):
        warp = GOAL_WARPS[warp]
    box = occlusion_box(grid, occlusion, seed=1000 + seed) if occlusion > 0 else None
    return make_pair(
        grid,
        warp,
        temperature=temperature,
        noise=noise,
        occlusion=box,
        seed=seed,
        self_attention=False,
    )


@dataclass(frozen=True)
class MatchScore:
    """Precision and recall of one set of matches (see the module docstring)."""

    precision: float
    recall: float
    n_returned: int
    n_matchable: int


def score_matches(pair: SyntheticPair, source_token, target) -> MatchScore:
    """Score matches given as source token indices and ``(K, 2)`` refined targets."""
    source_token = np.asarray(source_token, dtype=np.int64)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    error = np.linalg.norm(target - pair.true_target[source_token], axis=1)
    correct = (error <= 1.0) & pair.visible[source_token]
    n_matchable = int(pair.visible.sum())
    precision = float(correct.mean()) if correct.size else 1.0
    recall = float(correct.sum() / n_matchable) if n_matchable else 1.0
    return MatchScore(precision, recall, int(correct.size), n_matchable)
