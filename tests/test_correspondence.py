"""Inverse-mapping metrics: hand-worked examples, invariants and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_corrseg.core.correspondence import (
    aggregate_attention,
    inverse_mapping,
    match,
    query,
    transfer_points,
)

LN = np.log

# --- a 2x2 grid worked by hand ---------------------------------------------------------
# tokens: 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1)
A_ST = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],  # f(0) = 0
        [0.1, 0.7, 0.1, 0.1],  # f(1) = 1
        [0.1, 0.7, 0.1, 0.1],  # f(2) = 1  (two sources collapse on target 1)
        [0.1, 0.1, 0.1, 0.7],  # f(3) = 3  (nothing lands on target 2)
    ]
)
A_TS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],  # g(0) = 0, IME = 0
        [0.0, 0.6, 0.4, 0.0],  # g(1) = 1, IME = -(.6 ln .6 + .4 ln .4)
        [0.4, 0.2, 0.2, 0.2],  # g(2) = 0, IME = -(.4 ln .4 + 3 * .2 ln .2)
        [0.0, 0.0, 0.1, 0.9],  # g(3) = 3, IME = -(.1 ln .1 + .9 ln .9)
    ]
)
IME = np.array(
    [
        0.0,
        -(0.6 * LN(0.6) + 0.4 * LN(0.4)),
        -(0.4 * LN(0.4) + 3 * 0.2 * LN(0.2)),
        -(0.1 * LN(0.1) + 0.9 * LN(0.9)),
    ]
)


def test_hand_worked_hard_metrics():
    inv = inverse_mapping(A_ST, A_TS, (2, 2))
    np.testing.assert_array_equal(inv.forward, [0, 1, 1, 3])
    np.testing.assert_array_equal(inv.backward, [0, 1, 0, 3])
    # source 2 at (1, 0) goes to target 1, which comes back to source 1 at (0, 1)
    np.testing.assert_allclose(inv.cycle_error, [0, 0, np.sqrt(2), 0])
    assert inv.ims == pytest.approx(np.sqrt(2) / 4)
    np.testing.assert_array_equal(inv.density, [1, 2, 0, 1])
    np.testing.assert_allclose(inv.entropy, IME, atol=1e-6)
    np.testing.assert_allclose(inv.nims, [0.0, IME[1] / LN(3), np.nan, IME[3] / LN(2)], atol=1e-6)


def test_hand_worked_soft_cycle_and_confidence():
    inv = inverse_mapping(A_ST, A_TS, (2, 2))
    # A_ts @ P: target 0 -> (0, 0), 1 -> (.4, .6), 2 -> (.4, .4), 3 -> (1, .9)
    # source 0: .7 (0, 0) + .1 (.4, .6) + .1 (.4, .4) + .1 (1, .9) = (.18, .19)
    assert inv.soft_cycle_error[0] == pytest.approx(np.hypot(0.18, 0.19), abs=1e-6)
    # source 0: cycle 0 -> 1; entropy max(H(A_st[0]), IME(0) = 0) = H(.7, .1, .1, .1);
    # density MD(0) = 1 -> 1
    forward_entropy_0 = -(0.7 * LN(0.7) + 3 * 0.1 * LN(0.1))
    assert inv.forward_entropy[0] == pytest.approx(forward_entropy_0, abs=1e-6)
    assert inv.confidence[0] == pytest.approx(1 - forward_entropy_0 / LN(4), abs=1e-6)
    # source 1: target 1 has MD = 2 -> density factor ln 2 / ln 3
    entropy_1 = max(forward_entropy_0, IME[1])
    expected_1 = (1 - entropy_1 / LN(4)) * LN(2) / LN(3)
    assert inv.confidence[1] == pytest.approx(expected_1, abs=1e-6)
    # source 2: cycle error sqrt(2) -> factor exp(-1)
    assert inv.confidence[2] == pytest.approx(expected_1 * np.exp(-1.0), abs=1e-6)


def test_hand_worked_match_refinement_and_selection():
    m = match(A_ST, A_TS, (2, 2), window=1)
    assert len(m) == 4
    # source 0's refined target: soft-argmax of .7, .1, .1, .1 over the whole 2x2 grid
    np.testing.assert_allclose(m.target[0], [0.2, 0.2])
    np.testing.assert_allclose(m.entropy, IME[[0, 1, 1, 3]], atol=1e-6)
    unrefined = match(A_ST, A_TS, (2, 2), window=0)
    np.testing.assert_array_equal(unrefined.target, [[0, 0], [0, 1], [0, 1], [1, 1]])
    mutual = match(A_ST, A_TS, (2, 2), mutual=True)
    np.testing.assert_array_equal(mutual.source_token, [0, 1, 3])
    subset = m[m.cycle_error > 0]
    np.testing.assert_array_equal(subset.source_token, [2])
    np.testing.assert_array_equal(m.select(np.array([3, 0])).target_token, [3, 0])


def test_query_hand_worked_bilinear_blend():
    # halfway between tokens 0 and 1: the average of rows 0 and 1 of A_st
    result = query(A_ST, (0.0, 0.5), (2, 2), window=0)
    np.testing.assert_allclose(result.heatmap.ravel(), [0.4, 0.4, 0.1, 0.1])
    assert result.peak_token == 0  # the tie goes to the first token
    np.testing.assert_allclose(result.best, [0, 0])
    assert result.score == pytest.approx(0.4)


# --- invariants ------------------------------------------------------------------------


def random_maps(h: int, w: int, seed: int, sharpness: float = 3.0):
    """Two random row-stochastic maps without ties."""
    rng = np.random.default_rng(seed)
    n = h * w
    maps = []
    for _ in range(2):
        logits = sharpness * rng.standard_normal((n, n))
        a = np.exp(logits - logits.max(axis=1, keepdims=True))
        maps.append(a / a.sum(axis=1, keepdims=True))
    return maps


grid_sides = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(h=grid_sides, w=grid_sides, seed=seeds)
def test_metric_ranges(h, w, seed):
    a_st, a_ts = random_maps(h, w, seed)
    n = h * w
    inv = inverse_mapping(a_st, a_ts, (h, w))
    assert inv.density.sum() == n
    assert (inv.entropy >= 0).all() and (inv.entropy <= np.log(n) + 1e-9).all()
    assert (inv.forward_entropy >= 0).all() and (inv.forward_entropy <= np.log(n) + 1e-9).all()
    assert ((inv.confidence >= 0) & (inv.confidence <= 1)).all()
    np.testing.assert_array_equal(np.isnan(inv.nims), inv.density == 0)
    assert inv.ims == pytest.approx(inv.cycle_error.mean())
    assert (inv.cycle_error <= np.hypot(h - 1, w - 1) + 1e-9).all()
    images = inv.as_images()
    assert images["nims"].shape == (h, w) and images["confidence"].shape == (h, w)


@settings(max_examples=30, deadline=None)
@given(h=grid_sides, w=grid_sides, seed=seeds, one_hot=st.booleans())
def test_identity_maps_have_zero_cycle_error(h, w, seed, one_hot):
    n = h * w
    if one_hot:
        a = np.eye(n)
    else:  # peaked on the diagonal, random elsewhere
        a = np.random.default_rng(seed).random((n, n)) * 0.5 / n
        a[np.arange(n), np.arange(n)] = 1.0
        a /= a.sum(axis=1, keepdims=True)
    inv = inverse_mapping(a, a, (h, w))
    np.testing.assert_array_equal(inv.cycle_error, 0)
    assert inv.ims == 0
    np.testing.assert_array_equal(inv.density, 1)
    if one_hot:
        np.testing.assert_array_equal(inv.entropy, 0)
        np.testing.assert_allclose(inv.confidence, 1)
        np.testing.assert_allclose(inv.soft_cycle_error, 0, atol=1e-6)


def grid_isometry(h: int, w: int, kind: int) -> np.ndarray:
    """Token permutation of a grid symmetry: 0 none, 1 row flip, 2 col flip, 3 rot180."""
    index = np.arange(h * w).reshape(h, w)
    index = [index, index[::-1], index[:, ::-1], index[::-1, ::-1]][kind]
    return index.ravel()


@settings(max_examples=40, deadline=None)
@given(h=grid_sides, w=grid_sides, seed=seeds, kind=st.integers(0, 3))
def test_invariance_to_consistent_token_permutation(h, w, seed, kind):
    a_st, a_ts = random_maps(h, w, seed)
    n = h * w
    # targets: any permutation (target positions never enter the cycle error);
    # sources: a grid isometry (cycle error measures source distances)
    sigma = np.random.default_rng(seed ^ 0x5EED).permutation(n)
    pi = grid_isometry(h, w, kind)
    b_st = a_st[pi][:, sigma]
    b_ts = a_ts[sigma][:, pi]
    base = inverse_mapping(a_st, a_ts, (h, w))
    moved = inverse_mapping(b_st, b_ts, (h, w))
    sigma_inverse = np.argsort(sigma)
    np.testing.assert_array_equal(moved.forward, sigma_inverse[base.forward[pi]])
    np.testing.assert_allclose(moved.cycle_error, base.cycle_error[pi])
    np.testing.assert_allclose(moved.entropy, base.entropy[sigma], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(moved.density, base.density[sigma])
    np.testing.assert_allclose(moved.confidence, base.confidence[pi], rtol=1e-5, atol=1e-7)
    assert moved.ims == pytest.approx(base.ims)


# --- validation ------------------------------------------------------------------------

GOOD = np.full((4, 4), 0.25)


@pytest.mark.parametrize(
    ("a_st", "grid", "message"),
    [
        (np.full((4, 3), 1 / 3), (2, 2), "square"),
        (np.full((4, 4), 0.3), (2, 2), "row-stochastic"),
        (np.where(np.eye(4) > 0, np.nan, 0.25), (2, 2), "NaN"),
        (GOOD, (1, 3), "grid 1x3 holds 3 tokens"),
        (GOOD, (2, -2), "positive"),
        (np.full((2, 2, 2), 0.5), (2, 2), "2-D"),
        (GOOD - np.eye(4) * 0.5 + 0.5 / 3 * (1 - np.eye(4)), (2, 2), "negative"),
    ],
)
def test_inverse_mapping_rejects_bad_input(a_st, grid, message):
    with pytest.raises(ValueError, match=message):
        inverse_mapping(a_st, GOOD, grid)
    with pytest.raises(ValueError, match=message):
        match(GOOD, a_st, grid)


def test_pair_of_different_sizes_is_rejected():
    with pytest.raises(ValueError, match="the attention map has 2"):
        transfer_points([[0, 0]], GOOD, np.full((2, 2), 0.5), (2, 2))


def test_point_and_option_validation():
    with pytest.raises(ValueError, match="outside the 2x2 grid"):
        query(GOOD, (2.0, 0.0), (2, 2))
    with pytest.raises(ValueError, match="NaN"):
        query(GOOD, (np.nan, 0.0), (2, 2))
    with pytest.raises(ValueError, match="one"):
        query(GOOD, [[0, 0], [1, 1]], (2, 2))
    with pytest.raises(ValueError, match="row-stochastic"):
        query(np.full((4, 4), 0.5), (0, 0), (2, 2))
    with pytest.raises(ValueError, match=r"shape \(P, 2\)"):
        transfer_points(np.zeros((3, 3)), GOOD, GOOD, (2, 2))
    with pytest.raises(ValueError, match="window"):
        match(GOOD, GOOD, (2, 2), window=-1)
    with pytest.raises(ValueError, match="cycle_scale"):
        inverse_mapping(GOOD, GOOD, (2, 2), cycle_scale=0)
    inv = inverse_mapping(GOOD, GOOD, (2, 2))
    with pytest.raises(ValueError, match="computed on grid"):
        match(GOOD, GOOD, (1, 4), inverse=inv)


def test_aggregate_validation():
    with pytest.raises(ValueError, match="one grid per map"):
        aggregate_attention([GOOD, GOOD], [(2, 2)])
    with pytest.raises(ValueError, match="single array"):
        aggregate_attention(GOOD, [(2, 2)])
    with pytest.raises(ValueError, match="non-negative"):
        aggregate_attention([GOOD], [(2, 2)], weights=[-1.0])
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        aggregate_attention([GOOD, np.full((4, 4), 0.5)], [(2, 2), (2, 2)])
    with pytest.raises(ValueError, match="empty"):
        aggregate_attention([], [])
