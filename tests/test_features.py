"""DIFT features on the tiny model: shapes, recipe, early exit, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.errors import Cancelled

torch = pytest.importorskip("torch")
features = pytest.importorskip("napari_corrseg.engine.features")
DiftSettings, extract_dift_features = features.DiftSettings, features.extract_dift_features

pytestmark = pytest.mark.slow
SMALL = {"image_size": 64, "ensemble_size": 2}


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    return (255 * rng.random((40, 56, 3))).astype(np.uint8)


def test_up_block_1_is_one_sixteenth_of_the_input(tiny_engine, image):
    (feat,) = extract_dift_features(tiny_engine, [image], DiftSettings(**SMALL))
    channels = tiny_engine.unet.up_blocks[1].resnets[-1].out_channels
    assert feat.shape == (channels, 64 // 16, 64 // 16)
    assert feat.dtype == np.float32 and np.isfinite(feat).all()
    (finer,) = extract_dift_features(tiny_engine, [image], DiftSettings(**SMALL, up_ft_index=2))
    assert finer.shape[1:] == (64 // 8, 64 // 8)


def test_ensemble_is_one_batch_and_the_unet_stops_after_the_block(tiny_engine, image):
    unet = tiny_engine.unet
    batches, later_calls = [], []
    hooks = [
        unet.conv_in.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0])),
        unet.up_blocks[2].register_forward_hook(lambda *a: later_calls.append(1)),
    ]
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    try:
        extract_dift_features(tiny_engine, [image], DiftSettings(image_size=64, ensemble_size=3))
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == [3]
    assert later_calls == []  # early exit: nothing after up_blocks[1] ran
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_same_seed_same_features_other_seed_or_ensemble_differs(tiny_engine, image):
    def run(**kw):
        return extract_dift_features(tiny_engine, [image], DiftSettings(**{**SMALL, **kw}))[0]

    first = run()
    np.testing.assert_array_equal(first, run())
    assert not np.allclose(first, run(seed=1))
    assert not np.allclose(first, run(ensemble_size=1))


def test_dift_maps_an_image_onto_itself(tiny_engine, image):
    from napari_corrseg.harness.methods import make_method

    # inside the outermost feature-cell centres, where upsampled features are not constant
    points = np.array([[5.0, 7.0], [20.0, 30.0], [30.0, 45.0]])
    prediction = make_method("dift", tiny_engine, **SMALL).predict(image, image, points)
    np.testing.assert_allclose(prediction.points, points)
    np.testing.assert_allclose(prediction.confidence, 1.0, atol=1e-5)


def test_progress_cancel_and_bad_settings(tiny_engine, image):
    calls = []
    extract_dift_features(
        tiny_engine,
        [image, image],
        DiftSettings(image_size=64, ensemble_size=1),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 2), (2, 2)]
    with pytest.raises(Cancelled):
        extract_dift_features(tiny_engine, [image], DiftSettings(**SMALL), cancel=lambda: True)
    with pytest.raises(ValueError, match="up-blocks"):
        extract_dift_features(tiny_engine, [image], DiftSettings(**SMALL, up_ft_index=9))
    with pytest.raises(ValueError, match="multiple of 8"):
        DiftSettings(image_size=100)
    with pytest.raises(ValueError, match="ensemble_size"):
        DiftSettings(ensemble_size=0)
