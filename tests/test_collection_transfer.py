"""transfer_collection: annotations of a few images carried to all others, best source wins."""

from __future__ import annotations

import numpy as np
import pytest

import napari_corrseg as nc
from napari_corrseg.collection.transfer import transfer_collection
from napari_corrseg.core.evaluation import jaccard
from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.synthetic.tokens import TokenCollection
from napari_corrseg.synthetic.warps import make_pair, scaling, smooth_warp, translation

GRID = (32, 32)


def _keypoints(collection, image):
    """The centre of every object of ``image`` and three background points."""
    boxes = collection.layout(image).boxes.values()
    centres = [[r + (sh - 1) / 2, c + (sw - 1) / 2] for r, c, sh, sw in boxes]
    return np.array([*centres, [1.0, 1.0], [1.0, 30.0], [30.0, 1.0]])


def _within_one_token(found, truth):
    return np.abs(found - truth).max(axis=1) <= 1.0


def test_points_and_labels_reach_their_known_positions_on_every_image():
    collection = TokenCollection(10, GRID, cache_items=10)
    points = _keypoints(collection, 0)
    result = transfer_collection(
        collection.maps(), keypoints={0: points}, labels={0: collection.labels(0)}
    )
    assert sorted(result.points) == sorted(result.labels) == list(range(1, 10))
    present_confidence, absent_confidence = [], []
    for target, proposal in result.points.items():
        truth = collection.corresponding(0, target, points)
        seen = ~np.isnan(truth[:, 0])
        assert _within_one_token(proposal.target[seen], truth[seen]).all(), target
        assert (proposal.source == 0).all()
        present_confidence += list(proposal.confidence[seen])
        absent_confidence += list(proposal.confidence[~seen])
        labels, truth_labels = result.labels[target].labels, collection.labels(target)
        for part in np.unique(truth_labels):
            assert jaccard(labels == part, truth_labels == part) >= 0.9, (target, part)
        assert collection.unique_ids[0] not in labels  # the part of image 0 alone
    # a point whose part is missing from the target is proposed with less confidence
    assert np.median(absent_confidence) < 0.2 * np.median(present_confidence)


def test_points_follow_known_warps():
    # a collection of warped views of one source, as dense maps of the pairs needed
    warps = [translation((2.0, -3.0)), scaling(1.15), smooth_warp(1.5, seed=2)]
    grid = (16, 16)
    maps, truths = {}, []
    for target, warp in enumerate(warps, start=1):
        pair = make_pair(grid, warp, temperature=0.7, seed=target, self_attention=False)
        maps[(0, target)], maps[(target, 0)] = pair.a_st, pair.a_ts
        truths.append(pair)
    dense = AttentionMaps(grid, [ImageGeometry(grid, grid)] * 4, maps)
    rows, cols = np.mgrid[3:13:3, 3:13:3]
    points = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(float)
    result = transfer_collection(dense, keypoints={0: points})
    for target, pair in enumerate(truths, start=1):
        index = points[:, 0].astype(int) * grid[1] + points[:, 1].astype(int)
        visible = pair.visible[index]
        proposal = result.points[target]
        assert _within_one_token(proposal.target[visible], pair.true_target[index][visible]).all()


def _warped_views(grid=(16, 16)):
    """Dense maps between a source (image 0) and two warped views of it."""
    maps = {}
    for target, warp in enumerate([translation((2.0, -3.0)), scaling(1.15)], start=1):
        pair = make_pair(grid, warp, temperature=0.7, seed=target, self_attention=False)
        maps[(0, target)], maps[(target, 0)] = pair.a_st, pair.a_ts
    return AttentionMaps(grid, [ImageGeometry(grid, grid)] * 3, maps)


def test_one_transfer_call_checks_each_map_once(attention_checks):
    dense = _warped_views()
    labels = np.zeros((16, 16), np.int32)
    labels[4:10, 4:10] = 1
    result = transfer_collection(
        dense, keypoints={0: [[5.0, 5.0], [8.0, 9.0]]}, labels={0: labels}
    )
    assert sorted(result.points) == sorted(result.labels) == [1, 2]
    # points and labels both read every map; each was validated once, where it entered
    assert sorted(attention_checks) == sorted(id(m) for m in dense.maps.values())


def test_a_bad_dense_map_is_named_where_it_enters():
    dense = _warped_views()
    dense.maps[(2, 0)] = np.full_like(dense.maps[(2, 0)], np.nan)
    with pytest.raises(ValueError, match=r"maps\.cross\(2, 0\) contains NaN"):
        transfer_collection(dense, keypoints={0: [[5.0, 5.0]]})


def _corrupted(collection, bad):
    """Lazy maps where image ``bad`` carries noise instead of its queries and keys."""
    rng = np.random.default_rng(7)

    def provider(i):
        queries, keys = collection.query_key(i)
        if i == bad:
            scale = np.abs(queries).mean()
            queries = (scale * rng.normal(size=queries.shape)).astype(queries.dtype)
            keys = (np.abs(keys).mean() * rng.normal(size=keys.shape)).astype(keys.dtype)
        return queries, keys

    return AttentionMaps.from_query_key(provider, grid=GRID, n_images=collection.n_images)


def test_the_best_supported_source_wins_per_point_and_per_token():
    collection = TokenCollection(8, GRID, cache_items=8)
    first, second = _keypoints(collection, 0), _keypoints(collection, 1)
    shared = [p for p in collection.layout(0).boxes if p in collection.layout(1).boxes]
    n_points = len(first)
    # the same keypoints on both sources: corresponding positions of image 0's points
    on_second = collection.corresponding(0, 1, first)
    unmarked = np.isnan(on_second[:, 0])
    assert unmarked.any() and shared  # some of image 0's parts are missing on image 1
    result = transfer_collection(collection.maps(), keypoints={0: first, 1: on_second})
    for target, proposal in result.points.items():
        assert (proposal.source[unmarked] == 0).all()  # only source 0 marked them
        truth = collection.corresponding(0, target, first)
        seen = ~np.isnan(truth[:, 0])
        assert _within_one_token(proposal.target[seen], truth[seen]).all()
    # a source whose tokens are noise loses nearly every point and token to the clean one
    noisy = _corrupted(collection, bad=1)
    marked = {0: first, 1: collection.corresponding(0, 1, first)}
    marked[1][np.isnan(marked[1][:, 0])] = second[0]  # fill the gaps with any point
    result = transfer_collection(
        noisy, keypoints=marked, labels={0: collection.labels(0), 1: collection.labels(1)}
    )
    chosen = np.concatenate([p.source for p in result.points.values()])
    assert np.mean(chosen == 0) > 0.9
    tokens = np.concatenate([p.source.ravel() for p in result.labels.values()])
    assert np.mean(tokens == 0) > 0.9
    assert result.sources == [0, 1] and n_points == len(first)


def test_the_ranking_puts_the_corrupted_image_first():
    collection = TokenCollection(8, GRID, cache_items=8)
    maps = _corrupted(collection, bad=5)
    seen = []
    result = transfer_collection(
        maps,
        keypoints={0: _keypoints(collection, 0)},
        labels={0: collection.labels(0)},
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )
    assert result.ranking[0][0] == 5
    scores = [score for _, score in result.ranking]
    assert scores == sorted(scores) and result.score(5) == scores[0]
    assert seen[0] == ("transfer", 0.0) and seen[-1] == ("transfer", 1.0)


def test_a_mapper_gives_identical_proposals_and_pixel_labels_are_accepted():
    collection = TokenCollection(5, (16, 16), cache_items=5)
    painted = np.kron(collection.labels(0), np.ones((16, 16), dtype=np.int32))  # 256 px
    options = {"keypoints": {0: _keypoints(collection, 0) / 2}, "labels": {0: painted}}
    expected = transfer_collection(collection.maps(), **options)

    def mapper(fn, arguments):
        return [fn(TokenCollection(5, (16, 16)).maps(), *args) for args in arguments]

    found = nc.transfer_collection(collection.maps(), **options, mapper=mapper, targets=[3, 1])
    assert sorted(found.points) == [1, 3]
    for target in (1, 3):
        np.testing.assert_array_equal(found.points[target].target, expected.points[target].target)
        np.testing.assert_array_equal(found.labels[target].labels, expected.labels[target].labels)


def test_bad_input_is_named():
    maps = TokenCollection(3, (16, 16)).maps()
    with pytest.raises(ValueError, match="nothing to transfer"):
        transfer_collection(maps)
    with pytest.raises(ValueError, match="names image 7"):
        transfer_collection(maps, keypoints={7: np.zeros((1, 2))})
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        transfer_collection(maps, keypoints={0: np.zeros((3,))})
    with pytest.raises(ValueError, match="outside the 16x16 grid"):
        transfer_collection(maps, keypoints={0: np.array([[40.0, 1.0]])})
    with pytest.raises(ValueError, match="same keypoints"):
        transfer_collection(maps, keypoints={0: np.zeros((2, 2)), 1: np.zeros((3, 2))})
    with pytest.raises(ValueError, match="names image -1"):
        transfer_collection(maps, labels={0: np.ones((16, 16), int)}, targets=[-1])
