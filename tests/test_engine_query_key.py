"""The engine's collection form: per-image queries and keys, and the torch backend.

Tiny random-weight model (16x16 grid, 3 layers of 4 heads of 16). Measured on it: maps
formed from float16-stored queries and keys differ from the engine's dense float32 maps
by at most ~2.4e-4 (map values up to ~0.16; 0.1-0.2 % of the largest value), and the
row argmax (the forward match) agrees for >= 99.6 % of tokens. The tolerances below
(1e-3 absolute, 98 % of argmaxes) leave room for other CPUs, not for a wrong formula:
a missing 1/sqrt(d) or a scaled query stored gives errors of order the maps themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.collection.store import TokenStore, store_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:72, 0:96]
    smooth = np.stack([rows / 71, cols / 95, 0.3 + 0 * rows], axis=-1).astype(np.float32)
    return [smooth, rng.random((64, 48, 3)).astype(np.float32), smooth[::-1, ::-1].copy()]


@pytest.fixture(scope="module")
def extracted(tiny_engine, images):
    return tiny_engine.extract_query_key(images)


def test_shapes_geometry_and_unscaled_queries(tiny_engine, extracted, images):
    assert tiny_engine.query_key_shape("auto") == (3, 4, 256, 16)
    for (queries, keys, geometry), image in zip(extracted, images, strict=True):
        assert queries.shape == keys.shape == (3, 4, 256, 16)
        assert queries.dtype == np.float32
        assert geometry.image_shape == image.shape[:2] and geometry.grid == (16, 16)
    # unscaled: 1/sqrt(16) = 0.25 applied by the backend reproduces the engine exactly
    # (one image per pass in both: the CPU default of extract_query_key)
    dense = tiny_engine.extract(images, pairs="all", batch_size=1)
    backend = tiny_engine.attention_backend
    for i, j in [(0, 0), (0, 1), (1, 0), (2, 1)]:
        formed = backend(extracted[i][0], extracted[j][1])
        np.testing.assert_allclose(formed, dense.cross(i, j), rtol=0, atol=1e-6)
        np.testing.assert_allclose(formed.sum(axis=1), 1.0, atol=1e-5)
    wrong = backend(extracted[0][0] * 0.25, extracted[1][1])  # a scaled query stored
    assert np.abs(wrong - dense.cross(0, 1)).max() > 1e-2


def test_backend_takes_one_layer_and_float16(tiny_engine, extracted):
    backend = tiny_engine.attention_backend
    one = backend(extracted[0][0][1], extracted[1][1][1])  # (H, N, d)
    assert one.shape == (256, 256) and one.dtype == np.float32
    as16 = backend(extracted[0][0].astype(np.float16), extracted[1][1].astype(np.float16))
    assert as16.dtype == np.float32
    with pytest.raises(ValueError, match="same L and d"):
        backend(extracted[0][0], extracted[1][1][:, :, :, :8])


def test_maps_from_the_store_match_the_dense_maps(tmp_path, tiny_engine, extracted, images):
    settings = store_settings(tiny_engine.identity, tiny_engine.image_size)
    store = TokenStore(tmp_path / "store", settings)
    keys = [f"{n:064x}" for n in range(len(images))]
    for key, (queries, key_tokens, geometry) in zip(keys, extracted, strict=True):
        store.write(key, queries, key_tokens, geometry)
    maps = store.maps(keys, backend=tiny_engine.attention_backend)
    dense = tiny_engine.extract(images, pairs="all", batch_size=1)
    assert maps.grid == dense.grid and maps.geometries == dense.geometries
    worst, agreement = 0.0, []
    for i in range(3):
        for j in range(3):
            lazy, exact = maps.cross(i, j), dense.cross(i, j)
            worst = max(worst, float(np.abs(lazy - exact).max()))
            agreement.append(np.mean(lazy.argmax(axis=1) == exact.argmax(axis=1)))
    assert worst < 1e-3, worst  # float16 storage (measured ~2.4e-4)
    assert worst > 0  # it really went through float16
    assert min(agreement) >= 0.98, agreement


def test_passes_of_any_size_give_the_same_tokens_up_to_rounding(tiny_engine, images):
    """Batch composition changes CPU convolution rounding (~1e-5), never more."""
    together = tiny_engine.extract_query_key(images, batch_size=3)
    alone = tiny_engine.extract_query_key(images, batch_size=1)
    assert tiny_engine.last_plan.batch_size == 1 and tiny_engine.last_plan.n_passes == 3
    for (q3, k3, _), (q1, k1, _) in zip(together, alone, strict=True):
        np.testing.assert_allclose(q1, q3, atol=1e-4)
        np.testing.assert_allclose(k1, k3, atol=1e-4)


def test_iter_yields_each_image_as_its_pass_ends(tiny_engine, images):
    seen, stages = [], []
    for index, _queries, _, _ in tiny_engine.iter_query_key(
        images, batch_size=1, progress=lambda stage, f: stages.append((stage, f))
    ):
        seen.append((index, len(stages)))
    assert [index for index, _ in seen] == [0, 1, 2]
    assert seen[0][1] < seen[-1][1]  # progress went on between images
    assert stages[-1] == ("forward", 1.0)


def test_layers_of_several_grid_sides_are_refused(tiny_engine):
    with pytest.raises(ValueError, match="one grid side"):
        tiny_engine.query_key_layers([16, 32])
    from napari_corrseg.errors import Cancelled

    with pytest.raises(Cancelled):
        list(tiny_engine.iter_query_key([np.zeros((32, 32))], cancel=lambda: True))


def test_extract_lazy_gives_the_maps_extract_gives(tiny_engine, images):
    """The engine's collection form: every self and cross map on demand, equal to the
    dense maps of the same images (float32 tokens: the same arithmetic)."""
    dense = tiny_engine.extract(images, pairs="all")
    lazy = tiny_engine.extract_lazy(images, cache_items=2)
    assert lazy.is_lazy and lazy.n_images == len(images) and lazy.grid == dense.grid
    assert lazy.settings["layers"] == dense.settings["layers"]
    for i in range(len(images)):
        assert lazy.geometries[i] == dense.geometries[i]
        for j in range(len(images)):
            np.testing.assert_allclose(lazy.cross(i, j), dense.cross(i, j), atol=1e-5)
    assert lazy.cache_info()["maps"] <= 2
