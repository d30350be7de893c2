"""Synthetic queries and keys behave like diffusion self-attention, with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.correspondence import transfer_points
from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.maps import token_coordinates
from napari_corrseg.core.segmentation import segment
from napari_corrseg.synthetic.tokens import TokenCollection


def test_images_are_generated_on_demand_and_reproducibly():
    collection = TokenCollection(10**6, grid=(16, 16))  # costs nothing until asked
    q, k = collection.query_key(123_456)
    assert q.shape == k.shape == (10, 256, 64) and q.dtype == np.float32
    again = TokenCollection(10**6, grid=(16, 16))
    again.query_key(5)  # asking for another image first changes nothing
    np.testing.assert_array_equal(again.query_key(123_456)[0], q)
    layered = TokenCollection(4, grid=(16, 16), layers=3, dtype=np.float16)
    assert layered.query_key(1)[1].shape == (3, 10, 256, 64)
    assert layered.query_key(1)[1].dtype == np.float16
    with pytest.raises(IndexError, match="no image 4"):
        layered.labels(4)


def test_parts_differ_in_size_go_missing_and_one_is_seen_once():
    collection = TokenCollection(60, grid=(32, 32))
    present = [set(np.unique(collection.labels(i)).tolist()) for i in range(60)]
    lone = collection.unique_ids[0]
    assert [i for i in range(60) if lone in present[i]] == [0]
    shared = range(2, 2 + collection.n_parts)
    assert all(p in present[0] for p in shared)  # image 0 shows every part
    for part in shared:
        assert 0.5 < np.mean([part in p for p in present]) < 1.0  # missing from some
    areas = [int((collection.labels(0) == p).sum()) for p in shared]
    assert max(areas) > 2 * min(areas)


def test_attention_follows_parts_and_correspondences():
    collection = TokenCollection(4, grid=(32, 32))
    maps = collection.maps()
    labels = collection.labels(1).reshape(-1)
    self_attention = maps.self(1)
    own = (self_attention * (labels[:, None] == labels[None, :])).sum(axis=1)
    assert own.mean() > 0.8  # a token attends mostly to its own part
    for i in range(4):
        found = segment(maps.self(i), (32, 32)).labels
        assert adjusted_rand_index(found, collection.labels(i)) == 1
    # cross attention carries every token to its known position in the other image
    points = token_coordinates((32, 32))
    truth = collection.corresponding(1, 2, points)
    seen = ~np.isnan(truth[:, 0])
    moved = transfer_points(points[seen], maps.cross(1, 2), maps.cross(2, 1), (32, 32))
    error = np.abs(moved.target - truth[seen]).max(axis=1)
    assert np.median(error) < 0.5 and np.mean(error <= 1) > 0.95


def test_float16_storage_barely_changes_the_maps():
    full = TokenCollection(2, grid=(32, 32))
    half = TokenCollection(2, grid=(32, 32), dtype=np.float16)
    difference = np.abs(full.maps().cross(0, 1) - half.maps().cross(0, 1))
    assert difference.max() < 1e-3
