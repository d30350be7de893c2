"""Segmentation metrics on small hand-made examples whose values were worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.evaluation import (
    adjusted_rand_index,
    dataset_scores,
    hungarian_match,
    hungarian_miou,
    jaccard,
    pixel_accuracy,
)

TRUTH = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
PRED = np.array([[5, 5, 5, 7], [5, 5, 5, 7]])


def test_hungarian_matching_by_hand():
    # IoU(1,5) = 4/6, IoU(2,7) = 2/4, IoU(2,5) = 2/8: the best one-to-one is 1->5, 2->7
    match = hungarian_match(PRED, TRUTH)
    assert match.pairs == {1: 5, 2: 7}
    np.testing.assert_allclose(match.iou, [4 / 6, 2 / 4])
    assert hungarian_miou(PRED, TRUTH) == pytest.approx(7 / 12)
    assert pixel_accuracy(PRED, TRUTH) == pytest.approx(6 / 8)


def test_unmatched_truth_ids_score_zero():
    truth = np.array([[1, 2, 3, 3]])
    pred = np.array([[1, 1, 2, 2]])
    # three truth ids, two predicted: one of ids 1 and 2 stays unmatched
    assert hungarian_miou(pred, truth) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert pixel_accuracy(pred, truth) == pytest.approx(3 / 4)


def test_perfect_prediction_with_other_ids():
    truth = np.array([[0, 0, 1], [2, 2, 1]])
    pred = truth * 10 + 3
    assert hungarian_miou(pred, truth) == 1.0
    assert pixel_accuracy(pred, truth) == 1.0
    assert adjusted_rand_index(pred, truth) == pytest.approx(1.0)


def test_ignore_index_leaves_pixels_out():
    truth = np.array([[1, 1, 255, 255]])
    pred = np.array([[4, 4, 4, 9]])
    # counted as a class, 255 takes id 9 and id 4 spills over it: (2/3 + 1/2) / 2
    assert hungarian_miou(pred, truth) == pytest.approx(7 / 12)
    assert hungarian_miou(pred, truth, ignore_index=255) == 1.0
    assert pixel_accuracy(pred, truth, ignore_index=255) == 1.0


def test_dataset_protocols_differ_as_worked_out():
    truths = [np.ones((3, 3), int), np.array([[1, 1, 2, 2]])]
    preds = [np.ones((3, 3), int), np.array([[3, 3, 3, 3]])]
    per_image = dataset_scores(preds, truths, "per-image")
    pooled = dataset_scores(preds, truths, "pooled")
    # image 2: id 1 -> IoU 2/4, id 2 unmatched -> mIoU 0.25, accuracy 2/4
    assert per_image.miou == pytest.approx((1.0 + 0.25) / 2)
    assert per_image.pixel_accuracy == pytest.approx((1.0 + 0.5) / 2)
    # pooled: id 1 -> (9 + 2) / (9 + 4), id 2 -> 0 / 2; accuracy (9 + 2) / 13
    assert pooled.miou == pytest.approx((11 / 13 + 0.0) / 2)
    assert pooled.pixel_accuracy == pytest.approx(11 / 13)
    assert per_image.n_images == pooled.n_images == 2


def test_adjusted_rand_index_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])
    # sum C(n_ij, 2) = 2, rows 6, cols 3, C(6, 2) = 15: (2 - 1.2) / (4.5 - 1.2)
    assert adjusted_rand_index(pred, truth) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(truth, pred) == pytest.approx(0.8 / 3.3)
    # a split that ignores the truth entirely scores below zero
    assert adjusted_rand_index(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) < 0
    assert adjusted_rand_index(np.zeros(5, int), np.zeros(5, int)) == 1.0


def test_jaccard_by_hand():
    a = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a.astype(int), a.astype(int)) == 1.0
    assert jaccard(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differs from truth shape"):
        hungarian_miou(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer label map"):
        pixel_accuracy(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="every pixel ignored"):
        hungarian_miou(np.zeros((2, 2), int), np.full((2, 2), 255), ignore_index=255)
    with pytest.raises(ValueError, match="boolean or 0/1"):
        jaccard(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="protocol must be one of"):
        dataset_scores([TRUTH], [TRUTH], "mean")
    with pytest.raises(ValueError, match="same positive number"):
        dataset_scores([TRUTH], [TRUTH, TRUTH])
