"""Synthetic cross self-attention built from a known warp, so that tests can score.

The model behind these maps is the simplest one that behaves like attention between two
views of the same scene. Source token ``i`` sits at ``p_s(i)`` on the grid and its content
appears in the target at the warped position ``u(i) = W(p_s(i))``. Query/key similarity is
a Gaussian kernel between ``u(i)`` and the target token positions ``p_t(j)``:

.. math::

    L_{ij} = -\\frac{\\lVert u(i) - p_t(j) \\rVert^2}{2 \\tau^2}

with ``tau`` the *temperature* (kernel width in grid cells; larger is more diffuse).
``A_st = softmax_rows(L + noise)`` and ``A_ts = softmax_rows(L^T + noise')``, with
independent noise in each direction (real ``Q_s K_t^T`` and ``Q_t K_s^T`` are not
transposes of each other).

Occlusion: a source token has *no counterpart* when its warped position falls outside the
target grid or inside an occluded target region. Such a token attends diffusely: its
logits are ``diffuse_level + N(0, diffuse_spread)``, a nearly flat row with a random peak.
Occluded target tokens show other content: visible source tokens do not attend to them
(their logits drop by ``occluded_penalty``), and they attend diffusely themselves.

Example
-------
>>> from napari_corrseg.synthetic.warps import make_pair, translation
>>> pair = make_pair((16, 16), translation((2, -3)), temperature=0.7, seed=0)
>>> pair.a_st.shape, pair.true_target.shape, int(pair.visible.sum())
((256, 256), (256, 2), 182)

numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.maps import token_coordinates

__all__ = [
    "SyntheticPair",
    "Warp",
    "affine",
    "flip",
    "identity",
    "make_pair",
    "scaling",
    "smooth_warp",
    "translation",
]


@dataclass(frozen=True)
class Warp:
    """A named map from source grid coordinates to target grid coordinates.

    Parameters
    ----------
    name : str
        Short description, used in test ids and figure titles.
    function : callable
        ``function(points, grid) -> points``: ``(P, 2)`` ``(row, col)`` source grid
        coordinates to ``(P, 2)`` target grid coordinates (floats, may leave the grid).
    """

    name: str
    function: Callable[[np.ndarray, tuple[int, int]], np.ndarray]

    def __call__(self, points: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.function(np.asarray(points, dtype=np.float64), grid))


def identity() -> Warp:
    """The identity warp: the target is the source."""
    return Warp("identity", lambda p, grid: p.copy())


def translation(shift: tuple[float, float]) -> Warp:
    """Shift by ``(d_row, d_col)`` grid cells; content shifted out of frame is lost."""
    offset = np.asarray(shift, dtype=np.float64)
    return Warp(f"translation{tuple(float(s) for s in shift)}", lambda p, grid: p + offset)


def flip(axis: str = "col") -> Warp:
    """Mirror the image: ``axis="col"`` flips left-right, ``"row"`` up-down."""
    if axis not in ("row", "col"):
        raise ValueError(f"axis must be 'row' or 'col', got {axis!r}")
    k = 0 if axis == "row" else 1

    def apply(p: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        out = p.copy()
        out[:, k] = (grid[k] - 1) - p[:, k]
        return out

    return Warp(f"flip-{axis}", apply)


def scaling(factor: float, centre: tuple[float, float] | None = None) -> Warp:
    """Scale about ``centre`` (default the grid centre).

    ``factor > 1`` zooms in (the border of the source leaves the frame); ``factor < 1``
    zooms out (several source tokens land on one target token: mapping density > 1).
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")

    def apply(p: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        c = np.asarray(
            centre if centre is not None else ((grid[0] - 1) / 2, (grid[1] - 1) / 2),
            dtype=np.float64,
        )
        return c + factor * (p - c)

    return Warp(f"scaling({factor:g})", apply)


def affine(
    matrix, shift: tuple[float, float] = (0.0, 0.0), centre: tuple[float, float] | None = None
) -> Warp:
    """A general affine warp: ``c + M (p - c) + shift`` about ``centre`` (default the grid
    centre), e.g. a rotation by ``a``: ``M = [[cos a, -sin a], [sin a, cos a]]``.

    ``matrix`` is the ``2 x 2`` matrix ``M`` acting on ``(row, col)``; ``shift`` is in
    grid cells.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 2) or not np.isfinite(m).all():
        raise ValueError(f"matrix must be a finite 2 x 2 array, got {matrix!r}")
    offset = np.asarray(shift, dtype=np.float64)

    def apply(p: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        c = np.asarray(
            centre if centre is not None else ((grid[0] - 1) / 2, (grid[1] - 1) / 2),
            dtype=np.float64,
        )
        return c + (p - c) @ m.T + offset

    return Warp("affine", apply)


def smooth_warp(amplitude: float = 1.5, wavelength: float | None = None, seed: int = 0) -> Warp:
    """A smooth nonlinear warp: sinusoidal displacement of ``amplitude`` grid cells.

    ``d_row = a sin(2 pi col / L + phi_1)`` and ``d_col = a sin(2 pi row / L + phi_2)``
    with wavelength ``L`` (default the larger grid side) and random phases. The warp is
    invertible while ``2 pi a / L < 1``.
    """
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=2)

    def apply(p: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        length = float(wavelength if wavelength is not None else max(grid))
        d_row = amplitude * np.sin(2 * np.pi * p[:, 1] / length + phases[0])
        d_col = amplitude * np.sin(2 * np.pi * p[:, 0] / length + phases[1])
        return p + np.stack([d_row, d_col], axis=1)

    return Warp(f"smooth(a={amplitude:g})", apply)


@dataclass(frozen=True)
class SyntheticPair:
    """Attention maps of a synthetic image pair with the true correspondence.

    Attributes
    ----------
    a_st, a_ts : numpy.ndarray
        ``(N, N)`` row-stochastic cross self-attention (source queries over target keys,
        and the reverse).
    a_ss, a_tt : numpy.ndarray or None
        ``(N, N)`` self-attention of each image (Gaussian kernel over the grid, same
        temperature); None when built with ``self_attention=False``.
    grid : tuple of int
        ``(h, w)``, shared by both images.
    true_target : numpy.ndarray
        ``(N, 2)`` float: where each source token truly lands, in target grid coordinates.
    visible : numpy.ndarray
        ``(N,)`` bool: source tokens whose counterpart is visible in the target.
    target_visible : numpy.ndarray
        ``(N,)`` bool: target tokens that are not occluded.
    warp : Warp
        The warp that produced the pair.
    """

    a_st: np.ndarray
    a_ts: np.ndarray
    a_ss: np.ndarray | None
    a_tt: np.ndarray | None
    grid: tuple[int, int]
    true_target: np.ndarray
    visible: np.ndarray
    target_visible: np.ndarray
    warp: Warp


def _occlusion_mask(occlusion, grid: tuple[int, int]) -> np.ndarray:
    """Target-token occlusion as an ``(h, w)`` bool mask from None, a mask or a box."""
    h, w = grid
    if occlusion is None:
        return np.zeros((h, w), dtype=bool)
    array = np.asarray(occlusion)
    if array.dtype == bool:
        if array.shape != (h, w):
            raise ValueError(f"occlusion mask has shape {array.shape}; the grid is {(h, w)}")
        return array.copy()
    if array.shape != (4,):
        raise ValueError(
            "occlusion must be None, an (h, w) bool mask or a box "
            f"(row_start, col_start, row_stop, col_stop); got {occlusion!r}"
        )
    r0, c0, r1, c1 = (int(v) for v in array)
    mask = np.zeros((h, w), dtype=bool)
    mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def _softmax_rows_inplace(logits: np.ndarray) -> np.ndarray:
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def _kernel_logits(a: np.ndarray, b: np.ndarray, temperature: float) -> np.ndarray:
    """``-||a_i - b_j||^2 / (2 tau^2)`` as float32 ``(len(a), len(b))``."""
    d2 = (
        np.square(a[:, None, 0] - b[None, :, 0], dtype=np.float32)
        + np.square(a[:, None, 1] - b[None, :, 1], dtype=np.float32)
    ).astype(np.float32, copy=False)
    d2 *= np.float32(-0.5 / temperature**2)
    return d2


def make_pair(
    grid: tuple[int, int],
    warp: Warp,
    *,
    temperature: float = 0.7,
    noise: float = 0.0,
    occlusion=None,
    diffuse_level: float = -6.0,
    diffuse_spread: float = 0.5,
    occluded_penalty: float = 20.0,
    seed: int = 0,
    self_attention: bool = True,
) -> SyntheticPair:
    """Build ``A_st``, ``A_ts``, ``A_ss`` and ``A_tt`` for a known warp.

    Parameters
    ----------
    grid : tuple of int
        ``(h, w)`` of the token grid of both images.
    warp : Warp
        Source-to-target warp, e.g. ``translation((2, 0))``, ``flip()``,
        ``scaling(1.3)`` or ``smooth_warp(1.5)``.
    temperature : float
        Kernel width in grid cells: 0.5 is sharp (nearly one-hot), 2 is diffuse.
    noise : float
        Standard deviation of independent Gaussian noise added to the logits of each map.
    occlusion : None, (h, w) bool array or (row_start, col_start, row_stop, col_stop)
        Target tokens that show other content; source tokens that land there (or outside
        the target grid) have no counterpart and attend diffusely.
    diffuse_level, diffuse_spread : float
        Mean and spread of the logits of tokens without a counterpart. The level sits
        below the kernel peak (0) so that diffuse tokens never win a visible token's
        argmax.
    occluded_penalty : float
        How much lower a visible token's logits to occluded tokens are.
    seed : int
        Seed for the noise and the diffuse rows.
    self_attention : bool
        Also build ``a_ss`` and ``a_tt``; ``False`` leaves them ``None`` (saves two
        ``N x N`` maps in benchmarks).

    Returns
    -------
    SyntheticPair
        The four maps (float32), the true target position of every source token and the
        visibility masks.
    """
    h, w = (int(v) for v in grid)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    rng = np.random.default_rng(seed)
    positions = token_coordinates((h, w))
    true_target = warp(positions, (h, w))
    occluded = _occlusion_mask(occlusion, (h, w)).ravel()

    nearest = np.rint(true_target).astype(np.int64)
    in_frame = (
        (true_target[:, 0] >= -0.5)
        & (true_target[:, 0] <= h - 0.5)
        & (true_target[:, 1] >= -0.5)
        & (true_target[:, 1] <= w - 0.5)
    )
    nearest[:, 0] = np.clip(nearest[:, 0], 0, h - 1)
    nearest[:, 1] = np.clip(nearest[:, 1], 0, w - 1)
    visible = in_frame & ~occluded[nearest[:, 0] * w + nearest[:, 1]]

    logits = _kernel_logits(true_target, positions, temperature)  # (source, target)
    logits[:, occluded] -= np.float32(occluded_penalty)
    n = h * w
    lost_rows = np.flatnonzero(~visible)
    logits[lost_rows] = diffuse_level + diffuse_spread * rng.standard_normal(
        (lost_rows.size, n), dtype=np.float32
    )
    logits_ts = np.ascontiguousarray(logits.T)
    # occluded target tokens show unrelated content: they attend diffusely too
    lost_cols = np.flatnonzero(occluded)
    logits_ts[lost_cols] = diffuse_level + diffuse_spread * rng.standard_normal(
        (lost_cols.size, n), dtype=np.float32
    )
    if noise > 0:
        logits += np.float32(noise) * rng.standard_normal((n, n), dtype=np.float32)
        logits_ts += np.float32(noise) * rng.standard_normal((n, n), dtype=np.float32)
    a_st = _softmax_rows_inplace(logits)
    a_ts = _softmax_rows_inplace(logits_ts)
    a_ss = a_tt = None
    if self_attention:
        a_ss = _softmax_rows_inplace(_kernel_logits(positions, positions, temperature))
        a_tt = a_ss.copy()
    return SyntheticPair(
        a_st=a_st,
        a_ts=a_ts,
        a_ss=a_ss,
        a_tt=a_tt,
        grid=(h, w),
        true_target=true_target,
        visible=visible,
        target_visible=~occluded,
        warp=warp,
    )
