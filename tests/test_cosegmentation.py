"""cosegment() and propagate_labels(), checked against synthetic collections with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.collection.cosegment import cosegment
from napari_corrseg.core.cosegmentation import (
    Cosegmentation,
    label_fractions,
    propagate_labels,
    score_segments,
)
from napari_corrseg.core.evaluation import adjusted_rand_index, jaccard
from napari_corrseg.core.maps import token_coordinates
from napari_corrseg.synthetic.regions import attention_from_labels, moving_collection


def _truth_to_pred(co: Cosegmentation, truth: list[np.ndarray]) -> dict[int, set[int]]:
    """For every truth id, the set of predicted ids covering most of it in each image."""
    found: dict[int, set[int]] = {}
    for pred, true in zip(co.labels, truth, strict=True):
        for tid in np.unique(true):
            values, counts = np.unique(pred[true == tid], return_counts=True)
            found.setdefault(int(tid), set()).add(int(values[np.argmax(counts)]))
    return found


@pytest.mark.parametrize(
    ("n_images", "side", "seeds"),
    # (4, 36): keys pooled 2 x 2 to stay within the feature budget
    [(2, 20, (1, 2)), (2, 32, (1,)), (4, 24, (1, 2)), (4, 36, (3,))],
)
def test_corresponding_regions_share_ids_and_lone_region_is_flagged(n_images, side, seeds):
    for seed in seeds:
        col = moving_collection(n_images, (side, side), seed=seed)
        co = cosegment(col.self_maps, col.cross_maps, (side, side))
        # all images scored together: the same id must mean the same part everywhere
        ari = adjusted_rand_index(np.stack(co.labels), np.stack(col.labels))
        assert ari >= 0.9, f"{n_images} images {side}x{side} seed {seed}: ARI {ari:.3f}"
        mapping = _truth_to_pred(co, col.labels)
        assert all(len(ids) == 1 for ids in mapping.values()), mapping
        assert len({next(iter(ids)) for ids in mapping.values()}) == len(mapping)
        # the object seen in image 0 only is the one unmatched id
        lone = next(iter(mapping[col.unique_id]))
        assert co.unmatched == [lone]
        record = co.segments[lone - 1]
        assert record.images == [0] and not record.shared and np.isnan(record.consistency)
        shared = [s for s in co.segments if s.shared]
        assert len(shared) == len(mapping) - 1
        assert all(len(s.images) == n_images for s in shared)
        assert all(0.8 <= s.consistency <= 1.0 for s in shared)


def test_result_fields_and_reused_threshold():
    col = moving_collection(2, (16, 16), seed=3)
    co = cosegment(col.self_maps, col.cross_maps, (16, 16))
    assert [lab.shape for lab in co.labels] == [(16, 16), (16, 16)]
    used = np.unique(np.concatenate([lab.ravel() for lab in co.labels]))
    np.testing.assert_array_equal(used, np.arange(1, co.n_segments + 1))  # 0 never used
    assert [s.id for s in co.segments] == list(range(1, co.n_segments + 1))
    for s in co.segments:
        assert s.sizes == [int((lab == s.id).sum()) for lab in co.labels]
    again = cosegment(col.self_maps, col.cross_maps, (16, 16), threshold=co.threshold)
    for a, b in zip(co.labels, again.labels, strict=True):
        np.testing.assert_array_equal(a, b)


def test_consistency_score_drops_when_cross_maps_disagree():
    col = moving_collection(2, (20, 20), seed=1)
    good = score_segments(col.labels, col.cross_maps, (20, 20))
    assert all(s.consistency >= 0.9 for s in good if s.shared)
    assert np.isnan(good[col.unique_id - 1].consistency)
    # scramble the keys of one direction: round trips through the pair break
    rng = np.random.default_rng(0)
    scrambled = dict(col.cross_maps)
    scrambled[(1, 0)] = scrambled[(1, 0)][:, rng.permutation(400)]
    bad = score_segments(col.labels, scrambled, (20, 20))
    objects = [s.consistency for s in bad if s.shared and s.id != 1]
    assert max(objects) < 0.5
    with pytest.raises(ValueError, match="ids >= 1"):
        score_segments([lab - 1 for lab in col.labels], col.cross_maps, (20, 20))


def _warp_attention(source_mask, shift, angle_deg):
    """a_ts for a target that is the source rotated about the centre and shifted."""
    h, w = source_mask.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    target_points = token_coordinates((h, w))
    # where each target token comes from in the source: inverse of x -> R(x - c) + c + shift
    source_points = (target_points - centre - shift) @ rot + centre
    flat = np.ones((h, w), dtype=np.int32)  # no region cue: only the warp guides attention
    a_ts = attention_from_labels(flat, flat, source_points, affinity=0.0, decay=0.03, seed=9)
    rows = np.clip(np.round(source_points[:, 0]).astype(int), 0, h - 1)
    cols = np.clip(np.round(source_points[:, 1]).astype(int), 0, w - 1)
    inside = (source_points >= -0.5).all(1) & (source_points <= np.array([h, w]) - 0.5).all(1)
    warped = (source_mask[rows, cols] & inside).reshape(h, w)
    return a_ts, warped


def test_propagate_labels_follows_a_known_warp():
    h, w = 32, 32
    rr, cc = np.mgrid[:h, :w]
    source = np.zeros((h, w), dtype=np.int32)
    source[(rr - 12) ** 2 + (cc - 14) ** 2 <= 36] = 3  # a disk, id 3
    source[20:27, 6:16] = 7  # a bar, id 7
    a_ts, _ = _warp_attention(source > 0, shift=np.array([4.0, -3.0]), angle_deg=12)
    for value in (3, 7):
        _, expected = _warp_attention(source == value, np.array([4.0, -3.0]), 12)
        labels, confidence = propagate_labels(source, a_ts, (h, w))
        iou = jaccard(labels == value, expected)
        assert iou >= 0.8, f"label {value}: IoU {iou:.3f}"
    assert set(np.unique(labels)) == {0, 3, 7}  # ids kept, background stays 0
    assert confidence.shape == (h, w) and 0 <= confidence.min() <= confidence.max() <= 1
    # far from any edge the answer is clear; next to edges it is less so
    assert confidence[0, -1] > 0.9


def test_propagate_full_size_labels_between_collection_images():
    col = moving_collection(2, (24, 24), seed=2)
    # the truth of image 0 painted at 4x the grid size, as on the full image
    painted = np.kron(col.labels[0], np.ones((4, 4), dtype=np.int32))
    labels, _ = propagate_labels(painted, col.cross_maps[(1, 0)], (24, 24))
    for obj in np.unique(col.labels[1]):
        assert jaccard(labels == obj, col.labels[1] == obj) >= 0.8
    assert col.unique_id not in labels  # nothing in image 1 corresponds to it


def test_label_fractions_are_areas():
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, 0] = 5
    labels[0:2, 2:4] = 2
    fractions, values = label_fractions(labels, (2, 2))
    np.testing.assert_array_equal(values, [0, 2, 5])
    np.testing.assert_allclose(fractions[0], [0.75, 0.0, 0.25])
    np.testing.assert_allclose(fractions[1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(fractions.sum(1), 1.0)


def test_label_fractions_count_each_pixel_for_the_token_holding_its_centre():
    # 7 pixels over 3 tokens (7/3 px each): pixel 2 spans [2, 3] in edge coordinates, two
    # thirds of it in token 1 ([7/3, 14/3]); its centre 2.5 lies there too.
    labels = np.zeros((1, 7), dtype=np.int32)
    labels[0, 2] = 1
    fractions, values = label_fractions(labels, (1, 3))
    np.testing.assert_array_equal(values, [0, 1])
    np.testing.assert_allclose(fractions[:, 1], [0.0, 1 / 3, 0.0])


def test_bad_input_is_named():
    col = moving_collection(2, (16, 16), seed=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        cosegment(col.self_maps[:1], {}, (16, 16))
    with pytest.raises(ValueError, match=r"lacks the ordered pairs \[\(1, 0\)\]"):
        cosegment(col.self_maps, {(0, 1): col.cross_maps[(0, 1)]}, (16, 16))
    with pytest.raises(ValueError, match="holds 200 tokens"):
        cosegment(col.self_maps, col.cross_maps, (10, 20))
    with pytest.raises(ValueError, match="list with one"):
        cosegment(col.self_maps[0], col.cross_maps, (16, 16))
    with pytest.raises(ValueError, match='threshold must be "auto"'):
        cosegment(col.self_maps, col.cross_maps, (16, 16), threshold="high")
    with pytest.raises(ValueError, match="lacks the ordered pairs"):
        score_segments(col.labels, {(0, 1): col.cross_maps[(0, 1)]}, (16, 16))
    a_ts = col.cross_maps[(1, 0)]
    with pytest.raises(ValueError, match="smaller than the 16x16"):
        propagate_labels(np.zeros((8, 8), dtype=np.int32), a_ts, (16, 16))
    with pytest.raises(ValueError, match="integer label image"):
        propagate_labels(np.zeros((16, 16), dtype=float), a_ts, (16, 16))
    with pytest.raises(ValueError, match="negative"):
        propagate_labels(-np.ones((16, 16), dtype=np.int32), a_ts, (16, 16))
    with pytest.raises(ValueError, match="row-stochastic"):
        propagate_labels(np.zeros((16, 16), dtype=np.int32), a_ts * 2, (16, 16))


@pytest.mark.slow
def test_tiny_engine_maps_go_through_segment_and_cosegment(tiny_engine, two_images):
    # the tiny model is random, so only the contract is checked, not the segments
    from napari_corrseg.core.segmentation import segment

    maps = tiny_engine.extract(two_images)
    grid = maps.grid
    seg = segment(maps.self(0), grid)
    assert seg.labels.shape == grid
    assert set(np.unique(seg.labels)) == set(range(1, seg.n_segments + 1))
    co = cosegment([maps.self(0), maps.self(1)], {p: maps.cross(*p) for p in maps.pairs}, grid)
    assert [lab.shape for lab in co.labels] == [grid, grid]
    assert set(co.unmatched) == {s.id for s in co.segments if not s.shared}
    labels, confidence = propagate_labels(co.labels[0], maps.cross(1, 0), grid)
    assert labels.shape == grid and np.all((confidence >= 0) & (confidence <= 1))
