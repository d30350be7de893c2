"""Segmentation metrics: Hungarian-matched mIoU and pixel accuracy, Jaccard, ARI.

Unsupervised segmentations carry arbitrary ids, so a prediction is first matched to the
truth one-to-one (Hungarian algorithm on the IoU matrix, `hungarian_match`). Published
numbers mix two ways of averaging over a dataset, and both are given here by name:

- ``"per-image"``: the metric of each image, then the mean over images;
- ``"pooled"``: matching per image, then intersections, unions and correct pixels summed
  over the whole dataset before dividing (large images weigh more).

Label maps are integer arrays of the same shape; pixels equal to ``ignore_index`` in the
truth are left out everywhere. numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DatasetScores",
    "HungarianMatch",
    "adjusted_rand_index",
    "dataset_scores",
    "hungarian_match",
    "hungarian_miou",
    "jaccard",
    "pixel_accuracy",
]

PROTOCOLS = ("per-image", "pooled")


@dataclass
class HungarianMatch:
    """One-to-one matching of predicted ids to truth ids.

    Attributes
    ----------
    truth_ids, pred_ids : numpy.ndarray
        The distinct ids of each map (after ignoring pixels).
    pairs : dict
        ``{truth_id: pred_id}`` for the matched pairs.
    intersection : numpy.ndarray
        ``(n_truth,)`` pixels shared by each truth id and its match (0 if unmatched).
    union : numpy.ndarray
        ``(n_truth,)`` union of each truth id with its match (the truth area if
        unmatched).
    n_pixels : int
        Number of pixels counted.
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    pairs: dict[int, int]
    intersection: np.ndarray
    union: np.ndarray
    n_pixels: int

    @property
    def iou(self) -> np.ndarray:
        """IoU of every truth id with its match (0 when unmatched)."""
        return self.intersection / np.maximum(self.union, 1)

    @property
    def miou(self) -> float:
        """Mean IoU over the truth ids."""
        return float(self.iou.mean())

    @property
    def accuracy(self) -> float:
        """Fraction of pixels whose predicted id is matched to their truth id."""
        return float(self.intersection.sum() / max(self.n_pixels, 1))


def _flatten_pair(pred, truth, ignore_index) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from truth shape {truth.shape}; "
            "resize the prediction to the truth (nearest neighbour) first"
        )
    for name, array in (("prediction", pred), ("truth", truth)):
        if array.dtype.kind not in "iub":
            raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype}")
    pred, truth = pred.reshape(-1), truth.reshape(-1)
    if ignore_index is not None:
        keep = truth != ignore_index
        pred, truth = pred[keep], truth[keep]
    if truth.size == 0:
        raise ValueError("no pixels left to score (empty maps, or every pixel ignored)")
    return pred, truth


def _contingency(pred: np.ndarray, truth: np.ndarray):
    truth_ids, truth_index = np.unique(truth, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    table = np.zeros((truth_ids.size, pred_ids.size), dtype=np.int64)
    np.add.at(table, (truth_index, pred_index), 1)
    return truth_ids, pred_ids, table


def hungarian_match(pred, truth, *, ignore_index: int | None = None) -> HungarianMatch:
    """Match predicted ids to truth ids one-to-one, maximising the total IoU.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Integer label maps of the same shape.
    ignore_index : int, optional
        Truth value of pixels to leave out (e.g. 255 for "unlabelled").

    Returns
    -------
    HungarianMatch
    """
    pred, truth = _flatten_pair(pred, truth, ignore_index)
    truth_ids, pred_ids, table = _contingency(pred, truth)
    area_truth = table.sum(axis=1)
    area_pred = table.sum(axis=0)
    iou = table / (area_truth[:, None] + area_pred[None, :] - table)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    intersection = np.zeros(truth_ids.size, dtype=np.int64)
    union = area_truth.copy()
    intersection[rows] = table[rows, cols]
    union[rows] = area_truth[rows] + area_pred[cols] - table[rows, cols]
    pairs = {int(truth_ids[r]): int(pred_ids[c]) for r, c in zip(rows, cols, strict=True)}
    return HungarianMatch(truth_ids, pred_ids, pairs, intersection, union, int(truth.size))


def hungarian_miou(pred, truth, *, ignore_index: int | None = None) -> float:
    """Mean IoU over the truth ids after Hungarian matching (unmatched truth ids score 0)."""
    return hungarian_match(pred, truth, ignore_index=ignore_index).miou


def pixel_accuracy(pred, truth, *, ignore_index: int | None = None) -> float:
    """Fraction of pixels whose predicted id is Hungarian-matched to their truth id."""
    return hungarian_match(pred, truth, ignore_index=ignore_index).accuracy


@dataclass
class DatasetScores:
    """mIoU and pixel accuracy over a dataset under one protocol ("per-image"/"pooled")."""

    protocol: str
    miou: float
    pixel_accuracy: float
    n_images: int


def dataset_scores(
    preds: Sequence, truths: Sequence, protocol: str = "per-image", *, ignore_index=None
) -> DatasetScores:
    """Hungarian-matched mIoU and pixel accuracy over a dataset.

    Parameters
    ----------
    preds, truths : sequence of numpy.ndarray
        One prediction and one truth label map per image.
    protocol : {"per-image", "pooled"}
        "per-image": mean over images of each image's mIoU and accuracy. "pooled":
        each truth id's intersections and unions summed over images (matching still
        per image), IoU per truth id, then the mean over ids; accuracy is total matched
        pixels over total pixels.
    ignore_index : int, optional
        Truth value of pixels to leave out.

    Returns
    -------
    DatasetScores
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if len(preds) != len(truths) or len(preds) == 0:
        raise ValueError(
            f"need the same positive number of predictions and truths, "
            f"got {len(preds)} and {len(truths)}"
        )
    matches = [
        hungarian_match(p, t, ignore_index=ignore_index)
        for p, t in zip(preds, truths, strict=True)
    ]
    if protocol == "per-image":
        miou = float(np.mean([m.miou for m in matches]))
        accuracy = float(np.mean([m.accuracy for m in matches]))
    else:
        inter: dict[int, int] = {}
        union: dict[int, int] = {}
        for m in matches:
            for tid, i, u in zip(m.truth_ids, m.intersection, m.union, strict=True):
                inter[int(tid)] = inter.get(int(tid), 0) + int(i)
                union[int(tid)] = union.get(int(tid), 0) + int(u)
        miou = float(np.mean([inter[k] / max(union[k], 1) for k in inter]))
        accuracy = float(
            sum(int(m.intersection.sum()) for m in matches) / sum(m.n_pixels for m in matches)
        )
    return DatasetScores(protocol, miou, accuracy, len(matches))


def jaccard(pred_mask, truth_mask) -> float:
    """Jaccard index (IoU) of two foreground masks; 1.0 when both are empty.

    Parameters
    ----------
    pred_mask, truth_mask : numpy.ndarray
        Boolean (or 0/1) arrays of the same shape, True for foreground.
    """
    pred_mask, truth_mask = np.asarray(pred_mask), np.asarray(truth_mask)
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} and {truth_mask.shape}")
    for name, mask in (("prediction", pred_mask), ("truth", truth_mask)):
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} mask must be boolean or 0/1; threshold label maps first")
    pred_mask, truth_mask = pred_mask.astype(bool), truth_mask.astype(bool)
    union = np.logical_or(pred_mask, truth_mask).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred_mask, truth_mask).sum() / union)


def adjusted_rand_index(pred, truth, *, ignore_index: int | None = None) -> float:
    """Adjusted Rand index between two label maps (1 identical partitions, ~0 chance).

    Independent of the id values, so no matching is needed. Two single-cluster
    partitions score 1.0.
    """
    pred, truth = _flatten_pair(pred, truth, ignore_index)
    _, _, table = _contingency(pred, truth)
    n = table.sum()

    def pairs(x):
        x = np.asarray(x, dtype=np.float64)
        return (x * (x - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    maximum = 0.5 * (rows + cols)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
