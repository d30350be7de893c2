"""Task-level functions on synthetic attention whose right answer is known.

The images of a pair get different pixel sizes on purpose, so every test also checks
that grid <-> pixel conversion uses each image's own `ImageGeometry`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.errors import CorrsegError
from napari_corrseg.synthetic.warps import identity, make_pair, translation
from napari_corrseg.tasks.pipeline import (
    compute_maps,
    grid_labels_to_pixels,
    match_images,
    pixel_labels_to_grid,
    propagate_label_image,
    query_point,
    segment_image,
    transfer_keypoints,
)

GRID = (12, 12)
SHIFT = (2.0, -3.0)
SOURCE_SHAPE = (96, 144)  # 8 x 12 pixels per token
TARGET_SHAPE = (60, 36)  # 5 x 3 pixels per token


def _maps(warp, shapes=(SOURCE_SHAPE, TARGET_SHAPE)) -> tuple[AttentionMaps, object]:
    pair = make_pair(GRID, warp, temperature=0.5, seed=0)
    maps = {(0, 0): pair.a_ss, (1, 1): pair.a_tt, (0, 1): pair.a_st, (1, 0): pair.a_ts}
    geometries = [ImageGeometry(shape, GRID) for shape in shapes]
    return AttentionMaps(GRID, geometries, maps, {"synthetic": warp.name}), pair


def test_match_images_puts_visible_matches_at_the_true_target_in_pixels():
    maps, pair = _maps(translation(SHIFT))
    result = match_images(maps, 0, 1)
    source_tokens = np.rint(result.source_grid_points).astype(int)
    token = source_tokens[:, 0] * GRID[1] + source_tokens[:, 1]
    visible = pair.visible[token]
    assert visible.sum() > 50
    expected_grid = pair.true_target[token[visible]]
    expected_px = maps.geometries[1].grid_to_pixel(expected_grid)
    # sub-token refinement: within a third of a token, i.e. 5/3 px rows and 1 px cols
    error = np.abs(result.target_points[visible] - expected_px) / maps.geometries[1].scale
    assert np.median(error) < 0.34
    # source pixels are token centres of the SOURCE geometry, not the target's
    np.testing.assert_allclose(
        result.source_points, maps.geometries[0].grid_to_pixel(result.source_grid_points)
    )
    assert (result.cycle_error[visible] == 0).mean() > 0.9


def test_match_images_metric_maps_lie_on_the_right_image():
    maps, _ = _maps(translation(SHIFT))
    result = match_images(maps, 0, 1)
    assert set(result.metrics) == {"cycle_error", "entropy", "density", "nims"}
    assert result.metrics["cycle_error"].image == 0
    assert result.metrics["cycle_error"].geometry == maps.geometries[0]
    for name in ("entropy", "density", "nims"):
        assert result.metrics[name].image == 1
        assert result.metrics[name].values.shape == GRID
    # every source token maps somewhere: the density map counts all N of them
    assert result.metrics["density"].values.sum() == GRID[0] * GRID[1]
    nims = result.metrics["nims"].values
    assert np.isnan(nims[result.metrics["density"].values == 0]).all()


def test_match_images_filters_and_limits():
    maps, _ = _maps(translation(SHIFT))
    everything = match_images(maps, 0, 1)
    top = match_images(maps, 0, 1, max_matches=10)
    assert len(top) == 10
    # a subset of all matches (spread over the source image by `match`)
    all_pairs = {tuple(p) for p in everything.source_points.tolist()}
    assert {tuple(p) for p in top.source_points.tolist()} <= all_pairs
    confident = match_images(maps, 0, 1, min_confidence=0.5)
    assert (confident.confidence >= 0.5).all()
    assert 0 < len(confident) < len(everything)


def test_match_images_refuses_same_image_and_missing_pair():
    maps, _ = _maps(identity())
    with pytest.raises(CorrsegError, match="same image"):
        match_images(maps, 1, 1)
    with pytest.raises(CorrsegError, match=r"images 0\.\.1"):
        match_images(maps, 0, 5)
    partial = AttentionMaps(
        maps.grid,
        maps.geometries,
        {(0, 0): maps.self(0), (0, 1): maps.cross(0, 1), (1, 1): maps.self(1)},
    )
    with pytest.raises(CorrsegError, match=r"\(1, 0\)"):
        match_images(partial, 0, 1)


def test_transfer_keypoints_in_pixels():
    maps, _ = _maps(translation(SHIFT))
    geo_s, geo_t = maps.geometries
    tokens = [(5, 6), (7, 8), (4, 9)]
    points_px = geo_s.grid_to_pixel(np.array(tokens, dtype=float))
    moved = transfer_keypoints(maps, 0, 1, points_px)
    expected = geo_t.grid_to_pixel(np.array(tokens, dtype=float) + SHIFT)
    np.testing.assert_allclose(moved.target_points, expected, atol=0.34 * max(geo_t.scale))
    assert moved.target_points.shape == (3, 2)
    assert ((moved.confidence > 0) & (moved.confidence <= 1)).all()
    np.testing.assert_allclose(moved.cycle_error, 0, atol=0.34)
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        transfer_keypoints(maps, 0, 1, np.zeros((3, 3)))
    # the message speaks of the caller's pixels, not of the token grid
    with pytest.raises(ValueError, match=r"outside the 96x144 pixel image, e.g. \(100, 5\)"):
        transfer_keypoints(maps, 0, 1, np.array([[5.0, 5.0], [100.0, 5.0]]))
    edge = transfer_keypoints(maps, 0, 1, np.array([[-0.5, -0.5], [95.5, 143.5]]))
    assert edge.target_points.shape == (2, 2)  # the image's outer pixel edges are inside


def test_query_point_best_is_the_shifted_pixel():
    maps, _ = _maps(translation(SHIFT))
    geo_s, geo_t = maps.geometries
    answer = query_point(maps, 0, 1, geo_s.grid_to_pixel(np.array([6.0, 6.0])))
    np.testing.assert_allclose(answer.best, geo_t.grid_to_pixel(np.array([8.0, 3.0])), atol=2)
    assert answer.heatmap.shape == GRID
    assert answer.heatmap.argmax() == 8 * GRID[1] + 3
    with pytest.raises(ValueError, match="outside the 96x144 pixel image"):
        query_point(maps, 0, 1, (-1.0, 10.0))


def test_grid_labels_to_pixels_follows_the_geometry():
    geometry = ImageGeometry((30, 50), (3, 5))
    grid_labels = np.arange(15).reshape(3, 5)
    pixels = grid_labels_to_pixels(grid_labels, geometry)
    assert pixels.shape == (30, 50)
    # the pixel at each token centre carries that token's label
    centres = np.rint(
        geometry.grid_to_pixel(np.array([[r, c] for r in range(3) for c in range(5)]))
    ).astype(int)
    np.testing.assert_array_equal(pixels[centres[:, 0], centres[:, 1]], np.arange(15))
    # and pixel_labels_to_grid inverts it exactly
    np.testing.assert_array_equal(pixel_labels_to_grid(pixels, geometry), grid_labels)


def test_pixel_labels_to_grid_majority_vote_and_errors():
    geometry = ImageGeometry((4, 8), (1, 2))  # each token covers 4 x 4 pixels
    labels = np.zeros((4, 8), dtype=np.int32)
    labels[:3, :4] = 7  # 12 of 16 pixels of token 0
    labels[:1, 4:] = 3  # 4 of 16 pixels of token 1
    np.testing.assert_array_equal(pixel_labels_to_grid(labels, geometry), [[7, 0]])
    with pytest.raises(ValueError, match="integer"):
        pixel_labels_to_grid(labels.astype(float), geometry)
    with pytest.raises(ValueError, match="image is"):
        pixel_labels_to_grid(labels[:, :4], geometry)


def test_propagate_label_image_carries_regions_across_a_shift():
    pytest.importorskip("napari_corrseg.core.cosegmentation")
    maps, _ = _maps(translation((0.0, 2.0)))
    geo_s = maps.geometries[0]
    grid_labels = np.zeros(GRID, dtype=np.int64)
    grid_labels[3:9, 2:6] = 4
    result = propagate_label_image(maps, 0, 1, grid_labels_to_pixels(grid_labels, geo_s))
    expected = np.zeros(GRID, dtype=np.int64)
    expected[3:9, 4:8] = 4
    assert (result.labels_grid == expected).mean() > 0.9
    assert result.labels.shape == TARGET_SHAPE
    assert result.confidence.shape == TARGET_SHAPE
    with pytest.raises(ValueError, match="paint the labels"):
        propagate_label_image(maps, 0, 1, np.zeros((5, 5), np.int32))


def test_segment_image_gives_pixel_labels_of_the_image_shape():
    from napari_corrseg.synthetic.regions import attention_from_labels, block_labels

    truth = block_labels(GRID)
    maps = AttentionMaps(
        GRID, [ImageGeometry((48, 72), GRID)], {(0, 0): attention_from_labels(truth, seed=1)}
    )
    result = segment_image(maps, 0)
    assert result.labels.shape == (48, 72)
    assert result.n_segments == len(np.unique(truth))
    np.testing.assert_array_equal(
        result.labels, grid_labels_to_pixels(result.labels_grid, maps.geometries[0])
    )


def test_cosegment_images_ids_agree_across_images():
    pytest.importorskip("napari_corrseg.core.cosegmentation")
    from napari_corrseg.synthetic.regions import moving_collection
    from napari_corrseg.tasks.pipeline import cosegment_images

    grid = (16, 16)
    scene = moving_collection(2, grid, n_objects=2, seed=3)
    maps = {(i, i): m for i, m in enumerate(scene.self_maps)} | scene.cross_maps
    geometries = [ImageGeometry((64, 32), grid), ImageGeometry((32, 64), grid)]
    result = cosegment_images(AttentionMaps(grid, geometries, maps))
    assert [lab.shape for lab in result.labels] == [(64, 32), (32, 64)]
    # an object present in both images gets one id in both
    for obj in (2, 3):
        ids = [
            np.bincount(lg[truth == obj]).argmax()
            for lg, truth in zip(result.labels_grid, scene.labels, strict=True)
        ]
        assert ids[0] == ids[1]
    assert all("pixels" in segment for segment in result.segments)


class _CountingEngine:
    """Stands in for the model: returns fixed maps and counts extract calls."""

    image_size = 64
    is_tiny = True

    def __init__(self, maps: AttentionMaps):
        self.identity = {"model": "fake", "revision": "1"}
        self.maps, self.calls = maps, 0

    def extract(self, images, **settings):
        self.calls += 1
        return self.maps


def test_compute_maps_uses_the_cache(tmp_path):
    from napari_corrseg.files.cache import MapCache

    maps, _ = _maps(identity())
    engine = _CountingEngine(maps)
    images = [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)]
    cache = MapCache(tmp_path)
    stages = []
    first = compute_maps(engine, images, cache=cache)
    second = compute_maps(engine, images, cache=cache, progress=lambda s, f: stages.append(s))
    assert engine.calls == 1 and stages == ["cache"]
    np.testing.assert_array_equal(first.cross(0, 1), second.cross(0, 1))
    compute_maps(engine, images, cache=cache, seed=1)  # other settings: a miss
    compute_maps(engine, images, cache=False)
    assert engine.calls == 3


@settings(max_examples=40, deadline=None)
@given(
    grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    factor=st.tuples(st.floats(1.0, 7.0), st.floats(1.0, 7.0)),
    seed=st.integers(0, 1000),
)
def test_label_resampling_round_trips_for_any_geometry(grid, factor, seed):
    shape = (max(grid[0], round(grid[0] * factor[0])), max(grid[1], round(grid[1] * factor[1])))
    geometry = ImageGeometry(shape, grid)
    labels = np.random.default_rng(seed).integers(0, 5, grid)
    pixels = grid_labels_to_pixels(labels, geometry)
    assert pixels.shape == shape
    np.testing.assert_array_equal(pixel_labels_to_grid(pixels, geometry), labels)
