"""PCK per image / per point and the precision-coverage curve, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.harness.pck import (
    PairResult,
    correct_mask,
    precision_coverage,
    summarize_pck,
)


def _results():
    # alpha 0.1: thresholds 2, 5 and 1 px -> correct [T F F], [T F], [F]
    return [
        PairResult("a", "cat", [1.0, 3.0, 6.0], 20.0, [0.9, 0.5, 0.1]),
        PairResult("b", "cat", [0.0, 10.0], 50.0, [0.8, 0.2]),
        PairResult("c", "dog", [2.0], 10.0, [0.3]),
    ]


def test_pck_per_image_and_per_point_by_hand():
    rows = {(r.category, r.alpha): r for r in summarize_pck(_results(), alphas=(0.1, 0.2))}
    cat = rows[("cat", 0.1)]
    assert (cat.n_pairs, cat.n_points) == (2, 5)
    assert cat.pck_per_image == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert cat.pck_per_point == pytest.approx(2 / 5)
    overall = rows[("all", 0.1)]
    assert (overall.n_pairs, overall.n_points) == (3, 6)
    assert overall.pck_per_image == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert overall.pck_per_point == pytest.approx(2 / 6)
    # alpha 0.2: thresholds 4, 10, 2 -> [T T F], [T T], [T]
    assert rows[("all", 0.2)].pck_per_point == pytest.approx(5 / 6)
    assert rows[("dog", 0.2)].pck_per_image == 1.0
    assert [r.category for r in summarize_pck(_results())] == ["cat", "dog", "all"]


def test_distance_equal_to_threshold_counts_as_correct():
    np.testing.assert_array_equal(correct_mask([1.0, 1.0001], 10.0, 0.1), [True, False])
    with pytest.raises(ValueError, match="alpha"):
        correct_mask([1.0], 10.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        correct_mask([np.nan], 10.0, 0.1)


def test_pair_result_validates_its_inputs():
    with pytest.raises(ValueError, match="one confidence per keypoint"):
        PairResult("x", "cat", [1.0, 2.0], 10.0, [0.5])
    with pytest.raises(ValueError, match="positive"):
        PairResult("x", "cat", [1.0], 0.0, [0.5])
    with pytest.raises(ValueError, match="empty"):
        summarize_pck([])


def test_pair_without_keypoints_counts_as_pair_but_not_in_averages():
    results = [*_results(), PairResult("d", "dog", [], 10.0, [])]
    rows = {(r.category, r.alpha): r for r in summarize_pck(results)}
    assert rows[("dog", 0.1)].n_pairs == 2
    assert rows[("dog", 0.1)].pck_per_image == 0.0
    assert rows[("all", 0.1)].pck_per_image == pytest.approx((1 / 3 + 1 / 2) / 3)


def test_precision_coverage_by_hand():
    coverage, precision = precision_coverage(
        [True, False, True, False], [0.9, 0.8, 0.7, 0.1], n_steps=4
    )
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])


def test_precision_coverage_ranks_nan_last_and_informative_confidence_decreases():
    _, precision = precision_coverage([False, True], [np.nan, 0.1], n_steps=2)
    np.testing.assert_allclose(precision, [1.0, 0.5])
    rng = np.random.default_rng(0)
    confidence = rng.random(400)
    correct = rng.random(400) < confidence  # surer -> more often right
    _, precision = precision_coverage(correct, confidence, n_steps=10)
    assert precision[0] > precision[-1] + 0.2
    with pytest.raises(ValueError, match="confidences"):
        precision_coverage([True], [0.1, 0.2])
