"""segment(): automatic-threshold clustering of self-attention, checked against known regions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.segmentation import (
    Segmentation,
    anchor_tokens,
    pool_keys,
    segment,
    symmetric_kl,
    widest_log_gap,
)
from napari_corrseg.synthetic.regions import (
    attention_from_labels,
    block_labels,
    region_scene,
    split_region_labels,
    voronoi_labels,
)


@pytest.mark.parametrize("side", [16, 24, 40])
@pytest.mark.parametrize("kind", ["blocks", "voronoi", "split"])
def test_auto_threshold_recovers_known_regions(kind, side):
    # one criterion, no per-case settings: all nine cases must pass with the defaults
    for seed in (0, 1):
        scene = region_scene(kind, (side, side), seed=seed)
        result = segment(scene.attention, scene.grid)
        ari = adjusted_rand_index(result.labels, scene.labels)
        assert ari >= 0.9, f"{kind} {side}x{side} seed {seed}: ARI {ari:.3f}"
        assert result.n_segments == scene.labels.max()


def test_rectangular_grid_and_result_fields():
    labels = block_labels((12, 20), blocks=(2, 2))
    result = segment(attention_from_labels(labels, seed=3), (12, 20))
    assert isinstance(result, Segmentation)
    assert result.labels.shape == (12, 20)
    assert result.labels.dtype == np.int32
    # ids are exactly 1..n: every token assigned, no gaps
    assert set(np.unique(result.labels)) == set(range(1, result.n_segments + 1))
    assert adjusted_rand_index(result.labels, labels) >= 0.9
    assert result.auto
    assert np.all(np.diff(result.merge_distances) >= 0)
    assert result.merge_distances.size == result.anchors.size - 1
    # the chosen threshold sits strictly inside the gap it reports
    below = result.merge_distances[result.merge_distances < result.threshold]
    above = result.merge_distances[result.merge_distances > result.threshold]
    assert np.isclose(above.min() / below.max(), result.gap_ratio)
    assert result.gap_ratio > 3


def test_levels_offer_each_cut_and_rank_auto_first():
    scene = region_scene("blocks", (16, 16), seed=2)
    result = segment(scene.attention, scene.grid)
    levels = result.levels(max_segments=8)
    assert [n for n, _, _ in levels] == list(range(2, 9))
    best = max(levels, key=lambda level: level[2])
    assert best[0] == result.n_segments and np.isclose(best[1], result.threshold)
    # each offered threshold really gives that many segments on these clean maps
    for n_clusters, threshold, _ in levels[:5]:
        assert segment(scene.attention, scene.grid, threshold=threshold).n_segments == n_clusters


def test_returned_threshold_reproduces_the_auto_result():
    scene = region_scene("voronoi", (20, 20), seed=4)
    auto = segment(scene.attention, scene.grid)
    again = segment(scene.attention, scene.grid, threshold=auto.threshold)
    assert not again.auto
    np.testing.assert_array_equal(auto.labels, again.labels)


def test_numeric_threshold_controls_granularity():
    scene = region_scene("split", (20, 20), seed=0)
    auto = segment(scene.attention, scene.grid)
    coarse = segment(scene.attention, scene.grid, threshold=auto.merge_distances[-1] * 2)
    fine = segment(scene.attention, scene.grid, threshold=auto.merge_distances[-10] / 2)
    assert coarse.n_segments == 1
    assert fine.n_segments > auto.n_segments


def test_disconnected_region_is_one_segment():
    labels = split_region_labels((24, 24))
    result = segment(attention_from_labels(labels, seed=5), (24, 24))
    left, right = result.labels[0, 0], result.labels[0, -1]
    assert left == right
    assert result.labels[0, 12] != left


def test_multi_resolution_input_is_aggregated():
    fine_labels = voronoi_labels((24, 24), n_cells=4, seed=2)
    coarse_labels = fine_labels[::2, ::2]
    maps = [
        attention_from_labels(fine_labels, seed=1),
        attention_from_labels(coarse_labels, seed=2),
    ]
    result = segment(maps, [(24, 24), (12, 12)])
    assert result.labels.shape == (24, 24)
    assert adjusted_rand_index(result.labels, fine_labels) >= 0.9


def test_anchor_options():
    assert anchor_tokens((64, 64)).size == 256
    assert anchor_tokens((8, 10)).size == 80  # one per token when the grid is small
    np.testing.assert_array_equal(anchor_tokens((4, 4), 2), [5, 7, 13, 15])
    np.testing.assert_array_equal(anchor_tokens((4, 4), np.array([[0, 1], [3, 3]])), [1, 15])
    scene = region_scene("blocks", (24, 24), seed=0)
    result = segment(scene.attention, scene.grid, anchors=(6, 6))
    assert result.anchors.size == 36
    assert adjusted_rand_index(result.labels, scene.labels) >= 0.9


def test_pool_keys_sums_blocks_exactly():
    rng = np.random.default_rng(1)
    attention = rng.dirichlet(np.ones(64 * 64), size=5).astype(np.float32)
    pooled = pool_keys(attention, (64, 64), 2)
    expected = attention.reshape(5, 32, 2, 32, 2).sum(axis=(2, 4)).reshape(5, -1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    # a factor that does not divide the grid leaves smaller last blocks
    ragged = pool_keys(attention[:, :35], (5, 7), 3)
    cube = attention[:, :35].reshape(5, 5, 7)
    expected = np.add.reduceat(np.add.reduceat(cube, [0, 3], axis=1), [0, 3, 6], axis=2)
    np.testing.assert_allclose(ragged, expected.reshape(5, -1), rtol=1e-6)
    assert pool_keys(attention, (64, 64), 1) is attention


def test_symmetric_kl_matches_definition():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=3).astype(np.float32)
    q = rng.dirichlet(np.ones(7), size=2).astype(np.float32)
    expected = np.array([[0.5 * np.sum((a - b) * (np.log(a) - np.log(b))) for b in q] for a in p])
    np.testing.assert_allclose(symmetric_kl(p, q), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.diag(symmetric_kl(p)), 0, atol=1e-5)


def test_widest_log_gap_on_known_sequence():
    # two tight groups of merges, then a jump by 50x, then two larger merges
    n_clusters, threshold, ratio = widest_log_gap(np.array([0.01, 0.011, 0.012, 0.6, 0.9]))
    assert n_clusters == 3
    assert 0.012 < threshold < 0.6
    assert np.isclose(ratio, 50)


@pytest.mark.parametrize(
    ("attention", "grid", "threshold", "message"),
    [
        (np.full((16, 16), 1 / 16), (4, 5), "auto", "holds 20 tokens"),
        (np.full((16, 8), 1 / 8), (4, 4), "auto", "square"),
        (np.full((16, 16), 1.0), (4, 4), "auto", "row-stochastic"),
        (np.full((16, 16), 1 / 16), (4, 4), "best", 'threshold must be "auto"'),
        (np.full((16, 16), 1 / 16), (4, 4), -1.0, "positive"),
        (np.full((16, 16), 1 / 16), (4, 4), float("nan"), "positive"),
    ],
)
def test_bad_input_is_named(attention, grid, threshold, message):
    with pytest.raises(ValueError, match=message):
        segment(attention, grid, threshold)


def test_bad_anchors_are_named():
    attention = np.full((16, 16), 1 / 16)
    with pytest.raises(ValueError, match="does not fit"):
        segment(attention, (4, 4), anchors=9)
    with pytest.raises(ValueError, match="lie on the 4x4 grid"):
        segment(attention, (4, 4), anchors=np.array([[0, 0], [4, 0]]))
    with pytest.raises(ValueError, match="one grid per map"):
        segment([attention, attention], [(4, 4)])
