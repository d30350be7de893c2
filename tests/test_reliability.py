"""The automatic reliability cut of match(), rows without a peak, and the row-sum policy.

Every case is a synthetic pair whose true correspondence is known
(`napari_corrseg.synthetic.cases`): a warp, 30 % of the target occluded, noisy logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core._validation import (
    ROW_SUM_TOLERANCE,
    check_attention,
    rounding_tolerance,
)
from napari_corrseg.core.correspondence import (
    inverse_mapping,
    match,
    reliability_cut,
    transfer_points,
)
from napari_corrseg.synthetic.cases import GOAL_WARPS, goal_pair, score_matches
from napari_corrseg.synthetic.warps import identity, make_pair

SEEDS = range(5)


@pytest.mark.parametrize(("side", "noise"), [(16, 0.3), (24, 0.5), (32, 0.5)])
@pytest.mark.parametrize("warp", list(GOAL_WARPS))
def test_auto_cut_meets_the_goal_on_every_seed(warp, side, noise):
    # goal: >= 95 % of returned matches within one token, >= 80 % of matchable tokens kept
    for seed in SEEDS:
        pair = goal_pair(warp, (side, side), seed, noise=noise)
        found = match(pair.a_st, pair.a_ts, pair.grid)
        score = score_matches(pair, found.source_token, found.target)
        where = f"{warp} {side}x{side} noise {noise} seed {seed} (cut {found.min_confidence:.3f})"
        assert score.precision >= 0.95, f"{where}: precision {score.precision:.3f}"
        assert score.recall >= 0.80, f"{where}: recall {score.recall:.3f}"
        # and it is a real cut: without it, the occluded tokens come back as matches
        every = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=0)
        assert score_matches(pair, every.source_token, every.target).precision < 0.8


def test_auto_cut_beats_every_fixed_cut_on_recall_at_the_same_precision():
    for warp in GOAL_WARPS:
        pair = goal_pair(warp, (24, 24), seed=1, noise=0.5)
        inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
        auto = match(pair.a_st, pair.a_ts, pair.grid, inverse=inv)
        auto_score = score_matches(pair, auto.source_token, auto.target)
        for cut in (0.1, 0.3, 0.5):
            fixed = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=cut, inverse=inv)
            fixed_score = score_matches(pair, fixed.source_token, fixed.target)
            assert auto_score.recall > fixed_score.recall, (warp, cut)


def test_the_chosen_cut_is_reported_and_reusable_as_a_number():
    pair = goal_pair("smooth", (24, 24), seed=3)
    inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
    cut = reliability_cut(inv)
    auto = match(pair.a_st, pair.a_ts, pair.grid, inverse=inv)
    assert auto.min_confidence == cut.threshold and 0 < cut.threshold < 1
    again = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=cut.threshold)
    np.testing.assert_array_equal(again.source_token, auto.source_token)
    assert cut.n_kept == len(auto) and (auto.confidence >= cut.threshold).all()
    # the counts say what placed it: closed cycles, broken ones, and how many it misplaces
    assert cut.n_closed > 0 and cut.n_broken > 0 and cut.n_misplaced < 0.05 * inv.forward.size
    # subsets keep the cut they came from
    assert auto[:3].min_confidence == cut.threshold


def test_min_confidence_zero_returns_every_token_that_has_a_peak():
    pair = goal_pair("flip", (16, 16), seed=0)
    every = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=0)
    assert len(every) == 256 and every.min_confidence == 0.0


def test_a_perfect_pair_keeps_every_token():
    # no noise, no occlusion: every cycle closes, nothing is dropped
    pair = make_pair((12, 12), identity(), temperature=0.8, seed=0)
    found = match(pair.a_st, pair.a_ts, pair.grid)
    assert len(found) == 144 and found.min_confidence == 0.0


def test_maps_without_correspondence_give_almost_no_match():
    rng = np.random.default_rng(0)
    n = 400
    maps = []
    for _ in range(2):
        logits = np.exp(rng.standard_normal((n, n)))
        maps.append((logits / logits.sum(axis=1, keepdims=True)).astype(np.float32))
    found = match(maps[0], maps[1], (20, 20))
    assert len(found) <= 0.02 * n, f"{len(found)} matches from unrelated maps"


def test_uniform_rows_give_no_match_and_no_cycle():
    pair = goal_pair("shift", (16, 16), seed=2, occlusion=0.0)
    a_st, a_ts = pair.a_st.copy(), pair.a_ts.copy()
    flat_sources = np.arange(0, 256, 7)
    a_st[flat_sources] = 1.0 / 256  # no peak: argmax would say token 0
    a_ts[100] = 1.0 / 256  # a target row without a peak
    inv = inverse_mapping(a_st, a_ts, pair.grid)
    assert not inv.has_peak[flat_sources].any() and inv.has_peak.sum() == 256 - flat_sources.size
    assert not inv.target_has_peak[100]
    for floor in (0, "auto"):
        found = match(a_st, a_ts, pair.grid, min_confidence=floor)
        assert not np.isin(flat_sources, found.source_token).any()
    # uniform rows do not pile onto token 0 in the density
    assert inv.density.sum() == inv.has_peak.sum() and inv.density[0] <= 2
    # a source whose target row has no peak has no defined cycle, and no confidence
    through = np.flatnonzero(inv.has_peak & (inv.forward == 100))
    assert through.size and np.isnan(inv.cycle_error[through]).all()
    assert (inv.confidence[through] == 0).all() and np.isfinite(inv.ims)
    everything_flat = np.full((256, 256), 1.0 / 256, dtype=np.float32)
    assert len(match(everything_flat, everything_flat, (16, 16), min_confidence=0)) == 0
    assert np.isnan(inverse_mapping(everything_flat, everything_flat, (16, 16)).ims)


def test_ties_between_neighbours_are_one_peak_ties_far_apart_are_none():
    grid = (6, 6)
    a = np.full((36, 36), 0.01, dtype=np.float64)
    a[0, [14, 15]] = 0.5  # the peak sits between two adjacent tokens: still a peak
    a[1, [14, 21]] = 0.5  # diagonal neighbours: one peak
    a[2, [0, 35]] = 0.5  # opposite corners: no peak
    a /= a.sum(axis=1, keepdims=True)
    inv = inverse_mapping(a.astype(np.float32), a.astype(np.float32), grid)
    assert inv.has_peak[0] and inv.has_peak[1] and not inv.has_peak[2]
    assert not inv.has_peak[3:].any()  # the flat rows


def test_transfer_points_from_a_flat_row_gets_no_confidence():
    pair = make_pair((12, 12), identity(), temperature=0.8, seed=0)
    a_st = pair.a_st.copy()
    a_st[:24] = 1.0 / 144  # the top two rows of tokens attend to nothing in particular
    moved = transfer_points([[0.0, 3.0], [8.0, 8.0]], a_st, pair.a_ts, pair.grid)
    assert moved.confidence[0] == 0 and moved.confidence[1] > 0.1


@pytest.mark.parametrize("bad", ["often", -0.1, float("nan"), None])
def test_bad_min_confidence_is_named(bad):
    pair = make_pair((6, 6), identity(), seed=0)
    with pytest.raises(ValueError, match="min_confidence"):
        match(pair.a_st, pair.a_ts, pair.grid, min_confidence=bad)


# -- the row-sum policy: validated once, at the boundary ----------------------------------


def test_rows_within_float_rounding_are_used_as_given():
    pair = make_pair((8, 8), identity(), seed=0)
    assert check_attention(pair.a_st, (8, 8)) is pair.a_st  # no copy, no change


def test_rows_off_by_more_than_rounding_are_renormalised_in_a_copy():
    pair = goal_pair("affine", (16, 16), seed=0)
    off = pair.a_st.copy()
    rng = np.random.default_rng(0)
    off *= (1 + rng.uniform(-5e-3, 5e-3, size=(256, 1))).astype(np.float32)  # within 1e-2
    given = off.copy()
    fixed = check_attention(off, (16, 16))
    np.testing.assert_array_equal(off, given)  # the caller's array is not touched
    np.testing.assert_allclose(fixed.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)
    np.testing.assert_allclose(fixed, pair.a_st, rtol=1e-5, atol=1e-9)
    found = match(off, pair.a_ts, pair.grid)
    reference = match(pair.a_st, pair.a_ts, pair.grid)
    np.testing.assert_array_equal(found.source_token, reference.source_token)
    np.testing.assert_allclose(found.confidence, reference.confidence, atol=1e-5)


def test_float16_maps_are_accepted_and_renormalised():
    pair = goal_pair("flip", (16, 16), seed=4)
    half = pair.a_st.astype(np.float16)
    fixed = check_attention(half, (16, 16))
    assert fixed.dtype == np.float32
    sums = fixed.sum(axis=1, dtype=np.float64)
    assert np.abs(sums - 1).max() <= rounding_tolerance(256)  # float32 rounding of 256 terms
    found = match(half, pair.a_ts.astype(np.float16), pair.grid)
    score = score_matches(pair, found.source_token, found.target)
    assert score.precision >= 0.95 and score.recall >= 0.8


def test_rows_off_beyond_the_tolerance_are_refused_with_the_fix():
    pair = make_pair((8, 8), identity(), seed=0)
    off = pair.a_st.copy()
    off[5] *= 1 + 2 * ROW_SUM_TOLERANCE
    with pytest.raises(ValueError, match=r"a_st is not row-stochastic.*apply softmax"):
        match(off, pair.a_ts, pair.grid)
