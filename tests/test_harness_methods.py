"""The methods behind one interface, on synthetic attention with a known warp."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.harness.methods import (
    AttentionMethod,
    _follow_nearest_match,
    bilinear_matrix,
    cosine_argmax_upsampled,
    make_method,
)
from napari_corrseg.synthetic.warps import make_pair, translation

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("n_out", "n_in"), [(13, 4), (8, 8), (5, 9), (1, 3)])
def test_bilinear_matrix_matches_torch_upsampling(n_out, n_in):
    values = torch.arange(n_in, dtype=torch.float32)[None, None, :, None].repeat(1, 1, 1, 2)
    expected = torch.nn.functional.interpolate(
        values, size=(n_out, 2), mode="bilinear", align_corners=False
    )[0, 0, :, 0].numpy()
    np.testing.assert_allclose(bilinear_matrix(n_out, n_in) @ np.arange(n_in), expected, atol=1e-5)


def test_cosine_argmax_equals_brute_force_on_upsampled_features():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(5, 4, 6)), rng.normal(size=(5, 3, 5))
    source_shape, target_shape = (13, 17), (11, 19)
    points = np.array([[0.0, 0.0], [6.4, 9.6], [12.0, 16.0]])
    got = cosine_argmax_upsampled(source, target, points, source_shape, target_shape)

    def upsample(features, shape):
        tensor = torch.from_numpy(features.astype(np.float32))[None]
        return torch.nn.functional.interpolate(tensor, size=shape, mode="bilinear")[0].numpy()

    up_s, up_t = upsample(source, source_shape), upsample(target, target_shape)
    for k, (r, c) in enumerate(np.rint(points).astype(int)):
        vector = up_s[:, r, c] / np.linalg.norm(up_s[:, r, c])
        cosine = np.einsum("c,chw->hw", vector, up_t) / np.linalg.norm(up_t, axis=0)
        best = np.unravel_index(cosine.argmax(), cosine.shape)
        np.testing.assert_array_equal(got.points[k], best)
        assert got.confidence[k] == pytest.approx(cosine.max(), abs=1e-5)


def test_follow_nearest_match_moves_points_with_the_nearest_anchor():
    geometry = ImageGeometry((8, 8), (8, 8))  # one pixel per token
    prediction = _follow_nearest_match(
        np.array([[1.0, 1.0], [6.0, 6.0]]),
        np.array([[0.0, 0.0], [6.0, 5.0]]),
        np.array([[2.0, 3.0], [4.0, 4.0]]),
        np.array([0.8, 0.5]),
        (8, 8),
        geometry,
    )
    np.testing.assert_allclose(prediction.points, [[3.0, 4.0], [4.0, 5.0]])
    np.testing.assert_allclose(prediction.confidence, [0.8 / (1 + np.sqrt(2)), 0.5 / 2])


class _SyntheticEngine:
    """Returns attention maps of a known grid translation, whatever the images."""

    def __init__(self, shift, grid=(8, 8), pixels_per_token=8):
        self.pair = make_pair(grid, translation(shift), temperature=0.5)
        self.grid = grid
        self.image_shape = (grid[0] * pixels_per_token, grid[1] * pixels_per_token)

    def extract(self, images, pairs, **options):
        geometry = ImageGeometry(self.image_shape, self.grid)
        maps = {
            (0, 1): self.pair.a_st,
            (1, 0): self.pair.a_ts,
            (0, 0): self.pair.a_ss,
            (1, 1): self.pair.a_tt,
        }
        return AttentionMaps(self.grid, [geometry, geometry], maps)


@pytest.mark.parametrize("mutual", [False, True])
def test_attention_methods_follow_a_known_translation(mutual):
    engine = _SyntheticEngine(shift=(1, 2))
    image = np.zeros((*engine.image_shape, 3), dtype=np.uint8)
    # token centres of source tokens whose shifted counterpart stays inside the grid
    tokens = np.array([[1, 1], [3, 2], [5, 4], [2, 5]], dtype=float)
    points = tokens * 8 + 3.5
    prediction = AttentionMethod(engine, mutual=mutual).predict(image, image, points)
    np.testing.assert_allclose(prediction.points, points + np.array([8.0, 16.0]), atol=2.0)
    assert prediction.confidence.shape == (4,)
    assert (prediction.confidence > 0).all()


def test_make_method_names():
    assert make_method("attention", None).name == "attention"
    assert make_method("attention+mutual", None, timestep=100).describe() == {
        "method": "attention+mutual",
        "timestep": 100,
    }
    with pytest.raises(ValueError, match="attention, attention\\+mutual, dift"):
        make_method("sift", None)
