"""Merge distances above the rounding noise, and the "no clear structure" flag.

Maps with no structure must give one segment, a gap ratio near 1 and the flag; maps with
regions must be untouched by the floor and the flag.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.segmentation import (
    CLEAR_GAP_RATIO,
    is_clear_gap,
    merge_levels,
    segment,
    symmetric_kl,
    widest_log_gap,
)
from napari_corrseg.synthetic.regions import attention_from_labels, region_scene

GRID = (24, 24)
N = GRID[0] * GRID[1]


def _noise_map(sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = np.exp(sigma * rng.standard_normal((N, N)))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _same_rows(seed: int = 0) -> np.ndarray:
    row = np.random.default_rng(seed).random(N).astype(np.float32)
    return np.tile(row / row.sum(), (N, 1))


STRUCTURELESS = {
    "uniform": lambda: np.full((N, N), 1.0 / N, dtype=np.float32),
    "identical rows": _same_rows,
    "identical rows, float16": lambda: _same_rows(1).astype(np.float16),
    # float32 rounding once made 50+ "segments" of these (distances ~1e-7 nats)
    "1% noise": lambda: _noise_map(0.01),
    "10% noise": lambda: _noise_map(0.1),
    "strong noise": lambda: _noise_map(1.0),
    "distance decay, no regions": lambda: attention_from_labels(np.ones(GRID, int), seed=1),
}


@pytest.mark.parametrize("name", list(STRUCTURELESS))
def test_a_map_without_structure_gives_one_segment_and_the_flag(name):
    result = segment(STRUCTURELESS[name](), GRID)
    assert result.n_segments == 1, f"{name}: {result.n_segments} segments"
    assert result.no_clear_structure
    assert 1.0 <= result.gap_ratio < CLEAR_GAP_RATIO
    assert (result.labels == 1).all()
    # the returned threshold reproduces it
    again = segment(STRUCTURELESS[name](), GRID, threshold=result.threshold)
    assert again.n_segments == 1


@pytest.mark.parametrize("kind", ["blocks", "voronoi", "split"])
def test_maps_with_regions_are_clear_and_above_the_floor(kind):
    scene = region_scene(kind, GRID, seed=0)
    result = segment(scene.attention, GRID)
    assert not result.no_clear_structure and result.gap_ratio >= 2 * CLEAR_GAP_RATIO
    assert adjusted_rand_index(result.labels, scene.labels) >= 0.9
    # the floor sits far below every real merge
    assert 0 < result.noise_floor < 1e-6 * result.merge_distances.min()
    # float16 input: a higher floor, the same answer
    half = segment(scene.attention.astype(np.float16), GRID)
    assert half.noise_floor > result.noise_floor
    assert adjusted_rand_index(half.labels, result.labels) >= 0.99


def test_a_given_threshold_is_flagged_but_not_overruled():
    result = segment(_noise_map(1.0), GRID, threshold=1e-9)  # below every merge
    assert result.n_segments > 1 and not result.auto
    assert result.no_clear_structure  # nothing separates the pieces it was asked for


def test_symmetric_kl_is_float64_and_exact_for_identical_rows():
    rng = np.random.default_rng(0)
    p = rng.random((5, 300))
    p /= p.sum(axis=1, keepdims=True)
    q = p.copy()
    q[0] = np.roll(q[0], 1)
    d = symmetric_kl(np.vstack([p, q]))
    assert d.dtype == np.float64
    direct = 0.5 * np.sum((p[0] - q[0]) * (np.log(p[0]) - np.log(q[0])))
    assert d[0, 5] == pytest.approx(direct, rel=1e-10)
    # identical rows: arithmetic noise far below what float32 left (~3e-6)
    assert d[1, 6] < 1e-12 and d[2, 7] < 1e-12


def test_widest_log_gap_and_levels_respect_the_floor():
    inside = np.array([1e-15, 2e-15, 8e-15])
    assert widest_log_gap(inside, floor=1e-13) == (1, 2e-13, 1.0)
    # without a floor the rounding noise would make a "gap" of 4
    assert widest_log_gap(inside)[2] == pytest.approx(4.0)
    # two merges inside the floor (identical anchors), then real ones
    mixed = np.array([1e-15, 3e-15, 0.01, 0.012, 1.0])
    n_clusters, _, ratio = widest_log_gap(mixed, floor=1e-13)
    assert n_clusters == 4 and ratio == pytest.approx(0.01 / 1e-13)
    levels = {n: gap for n, _, gap in merge_levels(mixed, floor=1e-13)}
    assert levels[5] == 1.0  # the two noise merges are no gap at all
    assert levels[2] == pytest.approx(1 / 0.012)
    assert is_clear_gap(CLEAR_GAP_RATIO) and not is_clear_gap(1.9)
