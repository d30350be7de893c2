"""Synthetic per-head, per-layer attention scores of an image pair, for the recipe choices.

`napari_corrseg.synthetic.warps.make_pair` builds head-averaged maps. The paper's open
choices -- which layers, and eq. 2.3's partition normalisation -- act on what comes
before the average, so they need scores per head and per layer. The model here:

* every layer has ``heads`` heads; a share ``content_share`` of them are *content* heads:
  their cross scores follow the warp (a Gaussian kernel of width ``temperature`` around
  the true target, plus noise ``noise``) and their scores over the image's own keys are
  a kernel around the token itself of the same height; the others are *self-bound*
  heads: their own-image scores peak ``self_bias`` higher, their cross scores are noise
  around a flat level ``self_bias`` below (a head that looks at its own image and finds
  nothing in the other);
* source tokens with no counterpart (outside the target or in the occluded box) have
  diffuse cross scores in every head, as in `make_pair`;
* layers are independent noise draws of the same model; a *coarse* layer lives on a grid
  of half the side (the warp scaled accordingly).

It is a model built to show what each choice does, not a stand-in for SD2: which recipe
wins on real images is what ``napari-corrseg evaluate --sweep`` measures.

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.maps import token_coordinates
from .warps import Warp

__all__ = ["HeadScores", "head_scores"]


@dataclass(frozen=True)
class HeadScores:
    """Scores of one layer of a synthetic pair (``(heads, N, N)`` float32 each).

    ``cross_st`` source queries over target keys, ``own_s`` over the source's own keys;
    ``cross_ts`` and ``own_t`` the reverse. ``true_target`` ``(N, 2)`` and ``visible``
    ``(N,)`` are the truth on this layer's grid.
    """

    cross_st: np.ndarray
    own_s: np.ndarray
    cross_ts: np.ndarray
    own_t: np.ndarray
    grid: tuple[int, int]
    true_target: np.ndarray
    visible: np.ndarray


def _kernel(a: np.ndarray, b: np.ndarray, temperature: float) -> np.ndarray:
    d2 = np.square(a[:, None, 0] - b[None, :, 0]) + np.square(a[:, None, 1] - b[None, :, 1])
    return (-0.5 / temperature**2 * d2).astype(np.float32)


def head_scores(
    grid: tuple[int, int],
    warp: Warp,
    *,
    occlusion=None,
    heads: int = 8,
    content_share: float = 0.5,
    temperature: float = 0.9,
    noise: float = 0.5,
    self_bias: float = 3.0,
    seed: int = 0,
    coarse: bool = False,
) -> HeadScores:
    """One layer's per-head scores (see the module docstring).

    ``occlusion`` is a target box ``(row_start, col_start, row_stop, col_stop)`` on the
    FULL grid; with ``coarse=True`` the layer is on ``grid // 2`` and box and warp are
    scaled to it.
    """
    h, w = grid
    scale = 2.0 if coarse else 1.0
    if coarse:
        h, w = h // 2, w // 2
    rng = np.random.default_rng(seed)
    positions = token_coordinates((h, w))
    full_positions = (positions + 0.5) * scale - 0.5  # cell centres on the full grid
    true_target = (warp(full_positions, grid) + 0.5) / scale - 0.5
    occluded = np.zeros((h, w), dtype=bool)
    if occlusion is not None:
        r0, c0, r1, c1 = (round(v / scale) for v in occlusion)
        occluded[r0:r1, c0:c1] = True
    occluded = occluded.ravel()
    nearest = np.clip(np.rint(true_target), 0, [h - 1, w - 1]).astype(np.int64)
    in_frame = (
        (true_target[:, 0] >= -0.5)
        & (true_target[:, 0] <= h - 0.5)
        & (true_target[:, 1] >= -0.5)
        & (true_target[:, 1] <= w - 0.5)
    )
    visible = in_frame & ~occluded[nearest[:, 0] * w + nearest[:, 1]]
    n = h * w
    n_content = round(content_share * heads)
    base = _kernel(true_target, positions, temperature)  # (source, target)
    base[:, occluded] -= 20.0
    own = _kernel(positions, positions, temperature)

    def draws(kernel: np.ndarray, lost_rows: np.ndarray):
        cross = np.empty((heads, n, n), dtype=np.float32)
        selfs = np.empty((heads, n, n), dtype=np.float32)
        for head in range(heads):
            content = head < n_content
            if content:
                cross[head] = kernel + noise * rng.standard_normal((n, n), dtype=np.float32)
                selfs[head] = own + noise * rng.standard_normal((n, n), dtype=np.float32)
            else:
                cross[head] = -self_bias + noise * rng.standard_normal((n, n), dtype=np.float32)
                selfs[head] = (
                    own + self_bias + noise * rng.standard_normal((n, n), dtype=np.float32)
                )
            cross[head, lost_rows] = -6.0 + 0.5 * rng.standard_normal(
                (lost_rows.size, n), dtype=np.float32
            )
        return cross, selfs

    cross_st, own_s = draws(base, np.flatnonzero(~visible))
    cross_ts, own_t = draws(np.ascontiguousarray(base.T), np.flatnonzero(occluded))
    return HeadScores(cross_st, own_s, cross_ts, own_t, (h, w), true_target, visible)
