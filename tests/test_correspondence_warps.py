"""Matching, queries, keypoint transfer and aggregation on synthetic maps of known warps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from napari_corrseg.core.correspondence import (
    aggregate_attention,
    inverse_mapping,
    match,
    query,
    transfer_points,
)
from napari_corrseg.synthetic.warps import (
    flip,
    identity,
    make_pair,
    scaling,
    smooth_warp,
    translation,
)

WARPS = [
    identity(),
    translation((2.0, -3.0)),
    flip("col"),
    flip("row"),
    scaling(1.3),
    scaling(0.75),
    smooth_warp(1.5, seed=3),
]
GRIDS = [(12, 12), (16, 20), (24, 24)]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def match_errors(pair, matches) -> np.ndarray:
    return np.linalg.norm(matches.target - pair.true_target[matches.source_token], axis=1)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("warp", WARPS, ids=lambda w: w.name)
def test_match_recovers_known_warp(warp, grid):
    pair = make_pair(grid, warp, temperature=0.8, noise=0.3, seed=7)
    matches = match(pair.a_st, pair.a_ts, grid, min_confidence=0)
    assert len(matches) == grid[0] * grid[1]
    errors = match_errors(pair, matches)[pair.visible]
    within = float((errors <= 1.0).mean())
    assert within >= 0.95, f"{warp.name} on {grid}: only {within:.1%} within 1 cell"


def test_sub_token_refinement_beats_the_peak():
    # a fractional shift: the true targets sit between token centres
    pair = make_pair((16, 16), translation((0.4, -0.3)), temperature=1.0, seed=1)
    refined = match_errors(pair, match(pair.a_st, pair.a_ts, pair.grid, window=1))
    peak = match_errors(pair, match(pair.a_st, pair.a_ts, pair.grid, window=0))
    visible = pair.visible
    assert refined[visible].mean() < 0.6 * peak[visible].mean(), (
        refined[visible].mean(),
        peak[visible].mean(),
    )


@pytest.mark.parametrize(
    ("warp", "occlusion", "noise"),
    [
        (identity(), (4, 4, 11, 11), 0.3),
        (translation((1.0, 2.0)), (0, 8, 16, 16), 0.5),
        (smooth_warp(1.5, seed=1), (5, 0, 12, 9), 0.8),
        (scaling(1.2), (2, 2, 8, 14), 0.5),
    ],
    ids=["identity", "translation", "smooth", "scaling"],
)
def test_confidence_ranks_correct_above_wrong_under_occlusion(warp, occlusion, noise):
    pair = make_pair((16, 16), warp, temperature=0.8, noise=noise, occlusion=occlusion, seed=2)
    matches = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=0)
    correct = (match_errors(pair, matches) <= 1.0) & pair.visible
    assert 0 < correct.sum() < len(correct), "the case needs both correct and wrong matches"
    score = auroc(matches.confidence, correct)
    assert score >= 0.9, f"AUROC of confidence for correct matches = {score:.3f}"
    # the paper's hard metrics separate them too: wrong matches have larger cycle errors
    inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
    assert inv.cycle_error[~correct].mean() > inv.cycle_error[correct].mean() + 1.0


def test_density_and_nims_show_collapse():
    # zooming out 2x: about four source tokens land on each central target token
    pair = make_pair((16, 16), scaling(0.5), temperature=0.8, seed=0)
    inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
    density = inv.density.reshape(16, 16)
    assert density[5:11, 5:11].mean() > 3.0
    assert (density[:3] == 0).all() and np.isnan(inv.nims.reshape(16, 16)[:3]).all()


def test_options_filter_and_spread():
    pair = make_pair((16, 16), smooth_warp(1.0, seed=5), temperature=0.8, noise=0.6, seed=4)
    inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
    mutual = match(pair.a_st, pair.a_ts, pair.grid, mutual=True, inverse=inv)
    np.testing.assert_array_equal(inv.backward[mutual.target_token], mutual.source_token)
    confident = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=0.3, inverse=inv)
    assert len(confident) == int((inv.confidence >= 0.3).sum()) > 0
    assert (confident.confidence >= 0.3).all()
    assert len(match(pair.a_st, pair.a_ts, pair.grid, max_matches=0)) == 0


def test_max_matches_spreads_over_the_image():
    grid = (16, 16)
    sharp = make_pair(grid, identity(), temperature=0.5, seed=0)
    soft = make_pair(grid, identity(), temperature=1.5, seed=0)
    corner = (np.arange(256) // 16 < 6) & (np.arange(256) % 16 < 6)
    # the top-left corner is a crisp texture that would win every top-k slot
    a_st = np.where(corner[:, None], sharp.a_st, soft.a_st)
    a_ts = np.where(corner[:, None], sharp.a_ts, soft.a_ts)
    inv = inverse_mapping(a_st, a_ts, grid)
    top16 = np.argsort(-inv.confidence)[:16]
    assert corner[top16].all(), "precondition: plain top-k piles up in the corner"
    picked = match(a_st, a_ts, grid, max_matches=16, inverse=inv)
    assert len(picked) == 16
    cells = {(int(r) // 4, int(c) // 4) for r, c in picked.source}
    assert len(cells) >= 14, f"16 matches cover only {len(cells)} of 16 image cells"


def test_query_off_grid_point_and_reverse():
    pair = make_pair((16, 16), translation((2.0, 1.0)), temperature=1.0, seed=0)
    point = np.array([5.5, 6.25])
    forward = query(pair.a_st, point, pair.grid)
    assert forward.heatmap.shape == (16, 16)
    assert forward.heatmap.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(forward.best - (point + np.array([2.0, 1.0]))) < 0.35, forward.best
    assert 0 < forward.score <= 1
    back = query(pair.a_ts, forward.best, pair.grid)
    assert np.linalg.norm(back.best - point) < 0.5, back.best


def test_transfer_points_tracks_keypoints_and_flags_occluded_ones():
    pair = make_pair(
        (16, 16), smooth_warp(1.5, seed=2), temperature=0.9, noise=0.3, occlusion=(9, 9, 16, 16)
    )
    rng = np.random.default_rng(0)
    points = rng.uniform(1, 7, size=(20, 2))  # the top-left quarter, far from the occluder
    hidden = np.array([[13.0, 13.0], [14.2, 12.7]])
    moved = transfer_points(np.concatenate([points, hidden]), pair.a_st, pair.a_ts, pair.grid)
    truth = pair.warp(points, pair.grid)
    errors = np.linalg.norm(moved.target[:20] - truth, axis=1)
    assert np.median(errors) < 0.4 and errors.max() < 1.0, errors
    assert np.median(moved.cycle_error[:20]) < 0.7 and moved.cycle_error[:20].max() < 1.5
    assert ((moved.confidence >= 0) & (moved.confidence <= 1)).all()
    assert moved.confidence[20:].max() < moved.confidence[:20].min()
    single = transfer_points(points[0], pair.a_st, pair.a_ts, pair.grid)
    np.testing.assert_allclose(single.target[0], moved.target[0])


def _upsampled_one_hot_row(index_1d: int) -> np.ndarray:
    # bilinear, half-pixel centres, 2 -> 4: samples at x = -.25, .25, .75, 1.25 (clamped)
    return np.array([[1.0, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 1.0]])[index_1d]


def test_aggregate_hand_worked_upsampling_and_default_weights():
    coarse = np.eye(4)  # 2x2 grid, every token attends to itself only
    fine = make_pair((4, 4), identity(), temperature=0.7).a_st
    up = aggregate_attention([coarse], [(2, 2)], out_grid=(4, 4))
    # fine token (1, 2) takes the query row of coarse token (0, 1)
    expected = np.outer(_upsampled_one_hot_row(0), _upsampled_one_hot_row(1)).ravel() / 4
    np.testing.assert_allclose(up[1 * 4 + 2], expected, atol=1e-6)
    np.testing.assert_allclose(up.sum(axis=1), 1, atol=1e-5)
    # default weights follow the grid side: 2 / (2 + 4) and 4 / (2 + 4)
    both = aggregate_attention([coarse, fine], [(2, 2), (4, 4)])
    np.testing.assert_allclose(both, up / 3 + fine * 2 / 3, atol=1e-6)
    same = aggregate_attention([fine], [(4, 4)], weights=[5.0])
    np.testing.assert_allclose(same, fine, atol=1e-6)


def test_aggregate_keeps_the_correspondence_and_downsamples():
    shift = translation((2.0, 2.0))
    fine = make_pair((16, 16), shift, temperature=0.8, seed=0)
    coarse = make_pair((8, 8), translation((1.0, 1.0)), temperature=0.8, seed=0)
    a_st = aggregate_attention([coarse.a_st, fine.a_st], [(8, 8), (16, 16)])
    a_ts = aggregate_attention([coarse.a_ts, fine.a_ts], [(8, 8), (16, 16)])
    matches = match(a_st, a_ts, (16, 16), min_confidence=0)
    errors = match_errors(fine, matches)[fine.visible]
    assert (errors <= 1.0).mean() >= 0.95
    down = aggregate_attention([fine.a_st], [(16, 16)], out_grid=(8, 8))
    assert down.shape == (64, 64)
    np.testing.assert_allclose(down.sum(axis=1), 1, atol=1e-5)
    # coarse token (2, 2) covers fine tokens 4..5; the shift by 2 fine cells is 1 coarse cell
    assert np.argmax(down[2 * 8 + 2]) == 3 * 8 + 3


def test_single_match_keeps_its_shape():
    pair = make_pair((6, 6), identity(), seed=0)
    one = match(pair.a_st, pair.a_ts, pair.grid)[7]
    assert len(one) == 1 and one.source.shape == (1, 2)
    np.testing.assert_allclose(one.source[0], [1, 1])


def test_synthetic_pair_truth_and_visibility():
    pair = make_pair((16, 16), translation((2, -3)), temperature=0.7, seed=0)
    for a in (pair.a_st, pair.a_ts, pair.a_ss, pair.a_tt):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a.sum(axis=1), 1, atol=1e-5)
    # rows 0..13 and cols 3..15 stay in frame after the shift
    assert int(pair.visible.sum()) == 14 * 13
    np.testing.assert_allclose(pair.true_target[0], [2, -3])
    mirrored = make_pair((4, 6), flip("col"), self_attention=False)
    np.testing.assert_allclose(mirrored.true_target[:6, 1], [5, 4, 3, 2, 1, 0])
    assert mirrored.a_ss is None and mirrored.visible.all()
    occluded = make_pair((8, 8), identity(), occlusion=(0, 0, 2, 8))
    assert int(occluded.target_visible.sum()) == 48 and int(occluded.visible.sum()) == 48
    # an occluded source row is nearly flat: its peak holds little mass
    assert occluded.a_st[:16].max() < 0.15 < occluded.a_st[16:].max(axis=1).min()


def test_synthetic_pair_rejects_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        make_pair((4, 4), identity(), temperature=0)
    with pytest.raises(ValueError, match="occlusion mask has shape"):
        make_pair((4, 4), identity(), occlusion=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="box"):
        make_pair((4, 4), identity(), occlusion=(0, 1))
    with pytest.raises(ValueError, match="axis"):
        flip("diagonal")
    with pytest.raises(ValueError, match="positive"):
        scaling(0)


def test_warps_docstring_example_runs():
    import doctest

    from napari_corrseg.synthetic import warps

    assert doctest.testmod(warps).failed == 0
