"""Image preparation: every form napari holds, every refusal, and the resize."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.images import MIN_IMAGE_SIDE, prepare_image, resize_image
from napari_corrseg.errors import InputImageError


def test_grayscale_uint8_becomes_three_equal_channels():
    image = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40).astype(np.uint8)
    out = prepare_image(image)
    assert out.shape == (32, 40, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], image / 255.0, atol=1e-6)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_rgb_float_in_unit_range_is_kept():
    image = np.random.default_rng(0).random((20, 30, 3))
    np.testing.assert_allclose(prepare_image(image), image, atol=1e-6)


def test_uint16_and_out_of_range_floats_are_rescaled_by_their_range():
    image = np.full((20, 20), 1000, dtype=np.uint16)
    image[0, 0], image[5, 5] = 500, 3000
    out = prepare_image(image)[..., 0]
    assert out[0, 0] == 0.0 and out[5, 5] == 1.0
    np.testing.assert_allclose(out[1, 1], 500 / 2500, atol=1e-6)
    floats = prepare_image(np.linspace(-2, 6, 400).reshape(20, 20))
    assert floats.min() == 0.0 and floats.max() == 1.0


def test_constant_image_becomes_mid_gray_and_bool_becomes_zero_one():
    assert np.all(prepare_image(np.full((20, 20), 7, dtype=np.int32)) == 0.5)
    mask = np.zeros((20, 20), dtype=bool)
    mask[:10] = True
    out = prepare_image(mask)
    assert out[0, 0, 0] == 1.0 and out[-1, 0, 0] == 0.0


def test_rgba_is_composited_on_white():
    image = np.zeros((20, 20, 4), dtype=np.uint8)
    image[..., 0] = 255  # red
    image[:10, :, 3] = 255  # top half opaque, bottom half transparent
    out = prepare_image(image)
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[-1, 0], [1, 1, 1])


def test_other_channel_counts_are_reduced_to_gray():
    two = np.zeros((20, 20, 2), dtype=np.float32)
    two[..., 1] = 1.0
    np.testing.assert_allclose(prepare_image(two), 0.5)
    five = np.random.default_rng(0).random((20, 20, 5))
    with pytest.warns(UserWarning, match="5 channels"):
        out = prepare_image(five)
    np.testing.assert_allclose(out[..., 1], five.mean(axis=2), atol=1e-6)
    single = prepare_image(np.ones((20, 20, 1), dtype=np.uint8) * 255)
    assert single.shape == (20, 20, 3) and np.all(single == 1.0)


def test_leading_singleton_axes_are_dropped():
    image = np.random.default_rng(0).random((1, 1, 20, 24, 3))
    np.testing.assert_allclose(prepare_image(image), image[0, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((5, 64, 64)), "pick a plane"),
        (np.zeros((2, 64, 64, 3)), "pick a plane"),
        (np.zeros((64, 64, 40)), "pick a plane"),
        (np.full((32, 32), np.nan), "NaN"),
        (np.full((32, 32), np.inf), "infinite"),
        (np.zeros((8, 64)), f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"),
        (np.zeros((0, 0)), "empty"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((32, 32), dtype=complex), "numeric"),
    ],
)
def test_bad_images_get_a_clear_error(array, fragment):
    with pytest.raises(InputImageError, match=f"(?i){fragment}") as info:
        prepare_image(array, name="layer 'cells'")
    assert "layer 'cells'" in str(info.value)


def test_huge_images_are_refused_before_any_copy():
    huge = np.broadcast_to(np.uint8(0), (12_000, 9_000))  # 108 MP, no memory used
    with pytest.raises(InputImageError, match="downsample or crop"):
        prepare_image(huge)
    with pytest.raises(InputImageError, match="megapixels"):
        prepare_image(np.zeros((40, 40)), max_pixels=1000)


def test_resize_matches_torch_antialiased_bilinear():
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(3).random((97, 203, 3)).astype(np.float32)
    for size in [(32, 32), (150, 40), (256, 256)]:
        ours = resize_image(image, size)
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None],
            size=size,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].permute(1, 2, 0)
        assert ours.shape == (*size, 3)
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)


def test_resize_keeps_constants_and_linear_ramps():
    assert np.allclose(resize_image(np.full((50, 70, 3), 0.3), 64), 0.3)
    ramp = np.tile(np.arange(40, dtype=np.float32)[:, None], (1, 40))
    up = resize_image(ramp, (80, 40))
    # pixel-centre aligned: output row r sits at input row (r + 0.5) / 2 - 0.5
    interior = slice(2, 78)
    expected = (np.arange(80) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[interior, 5], expected[interior], atol=1e-5)
