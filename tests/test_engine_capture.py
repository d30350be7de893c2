"""Attention capture on the tiny model, checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_corrseg.engine.capture import AttentionRecorder, EarlyExit, select_layers
from napari_corrseg.errors import Cancelled, InputImageError

pytestmark = pytest.mark.slow

DECODER_LAYER = "up_blocks.2.attentions.1.transformer_blocks.0.attn1"


def _reference_maps(engine, images, layer_name, timestep=261, seed=0):
    """Maps computed from the layer's own input and q/k projections, in float64."""
    module = engine.unet.get_submodule(layer_name)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = module.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        latents, _ = engine.encode(images)
        noisy = engine.add_noise(latents, timestep, seed)
        steps = torch.full((len(images),), timestep)
        with torch.no_grad():
            engine.unet(noisy, steps, encoder_hidden_states=engine.prompt_embeddings(len(images)))
    finally:
        handle.remove()
    hidden = seen["hidden"]
    with torch.no_grad():
        query = module.to_q(hidden).double()
        key = module.to_k(hidden).double()
    batch, n_tokens, inner = query.shape
    heads, head_dim = module.heads, inner // module.heads
    query = query.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
    key = key.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
    maps = {}
    for i in range(batch):
        for j in range(batch):
            scores = query[i] @ key[j].transpose(1, 2) / np.sqrt(head_dim)
            maps[(i, j)] = scores.softmax(dim=-1).mean(dim=0).numpy()
    return maps


def test_maps_equal_an_independent_computation(tiny_engine, two_images):
    maps = tiny_engine.extract(two_images, layers=[DECODER_LAYER])
    reference = _reference_maps(tiny_engine, two_images, DECODER_LAYER)
    assert maps.grid == (16, 16) and maps.settings["layers"] == [DECODER_LAYER]
    for key in [(0, 0), (1, 1), (0, 1), (1, 0)]:
        np.testing.assert_allclose(maps.cross(*key), reference[key], atol=2e-6)
    # the maps must carry information: not uniform, and cross differs from self
    assert maps.self(0).max() > 5.0 / maps.n_tokens
    assert np.abs(maps.cross(0, 1) - maps.self(0)).max() > 1e-3


def test_default_maps_are_row_stochastic_with_geometry(tiny_engine, two_images):
    maps = tiny_engine.extract(two_images)
    assert maps.grid == (16, 16) and maps.n_images == 2
    assert sorted(maps.maps) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for value in maps.maps.values():
        assert value.dtype == np.float32 and value.shape == (256, 256)
        assert value.min() >= 0
        np.testing.assert_allclose(value.sum(axis=1), 1.0, atol=1e-5)
    assert [g.image_shape for g in maps.geometries] == [(96, 128), (80, 64)]
    assert all(g.grid == (16, 16) for g in maps.geometries)
    assert maps.settings["layers"] == [
        f"up_blocks.2.attentions.{k}.transformer_blocks.0.attn1" for k in range(3)
    ]
    assert maps.settings["timestep"] == 261 and maps.settings["seed"] == 0
    assert maps.settings["model"] == tiny_engine.identity
    json.dumps(maps.settings)


def test_cross_of_identical_images_equals_self(tiny_engine, two_images):
    maps = tiny_engine.extract([two_images[0], two_images[0].copy()])
    np.testing.assert_allclose(maps.cross(0, 1), maps.self(0), atol=1e-6)
    np.testing.assert_allclose(maps.self(1), maps.self(0), atol=1e-6)


def test_self_maps_do_not_depend_on_batch_companions(tiny_engine, two_images):
    alone = tiny_engine.extract([two_images[0]])
    together = tiny_engine.extract([two_images[1], two_images[0]])
    np.testing.assert_allclose(together.self(1), alone.self(0), atol=1e-5)


def test_early_exit_gives_identical_maps_and_skips_the_rest(tiny_engine, two_images):
    ran = []
    handle = tiny_engine.unet.conv_out.register_forward_hook(lambda *args: ran.append(1))
    try:
        early = tiny_engine.extract(two_images, early_exit=True)
        assert ran == []  # the UNet stopped before its output layer
        full = tiny_engine.extract(two_images, early_exit=False)
        assert ran == [1]
    finally:
        handle.remove()
    for key in full.maps:
        np.testing.assert_array_equal(early.maps[key], full.maps[key])


def test_capture_leaves_the_unet_output_unchanged(tiny_engine):
    unet = tiny_engine.unet
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn((2, 4, 32, 32), generator=generator)
    steps = torch.full((2,), 261)
    context = tiny_engine.prompt_embeddings(2)
    with torch.no_grad():
        plain = unet(latents, steps, encoder_hidden_states=context).sample
        processors = dict(unet.attn_processors)
        recorder = AttentionRecorder(select_layers(unet, 256, [8, 16]), 2, [(0, 1)])
        recorder.early_exit = False
        with recorder.attached(unet):
            captured = unet(latents, steps, encoder_hidden_states=context).sample
    assert torch.equal(plain, captured)
    assert len(recorder.recorded) == 10  # every 8x8 and 16x16 layer ran and was recorded
    assert dict(unet.attn_processors) == processors  # originals restored


def test_chunking_does_not_change_the_maps(tiny_engine):
    unet = tiny_engine.unet
    latents = torch.randn((2, 4, 32, 32), generator=torch.Generator().manual_seed(2))
    steps = torch.full((2,), 100)
    results = []
    layers = select_layers(unet, 256, [DECODER_LAYER])
    for chunk in (None, 5000):  # all 256 query rows at once vs 2 rows at a time
        recorder = AttentionRecorder(layers, 2, [(1, 0)], chunk_elements=chunk)
        with torch.no_grad(), recorder.attached(unet), pytest.raises(EarlyExit):
            unet(latents, steps, encoder_hidden_states=tiny_engine.prompt_embeddings(2))
        results.append(recorder.result()[16])
    assert sorted(results[0]) == [(0, 0), (1, 0), (1, 1)]
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], atol=1e-6)


def test_layers_of_one_side_are_averaged(tiny_engine, two_images):
    names = [f"up_blocks.2.attentions.{k}.transformer_blocks.0.attn1" for k in range(3)]
    every_16 = [layer.name for layer in select_layers(tiny_engine.unet, 256, 16)]
    assert every_16[2:] == names  # an int picks every layer of that side, in run order
    names = names[1:]
    each = [tiny_engine.extract(two_images, layers=[name]) for name in names]
    assert all(name.startswith("down_blocks.1.") for name in every_16[:2])
    decoder = tiny_engine.extract(two_images, layers=names)
    for key in decoder.maps:
        mean = np.mean([m.maps[key] for m in each], axis=0)
        np.testing.assert_allclose(decoder.maps[key], mean / mean.sum(1, keepdims=True), atol=1e-6)


def test_several_resolutions_are_aggregated_on_the_finest_grid(tiny_engine, two_images):
    aggregate = pytest.importorskip("napari_corrseg.core.correspondence").aggregate_attention
    coarse = tiny_engine.extract(two_images, layers=8, pairs=[(0, 1)])
    fine = tiny_engine.extract(two_images, layers=16, pairs=[(0, 1)])
    both = tiny_engine.extract(two_images, layers=[8, 16], pairs=[(0, 1)])
    assert both.grid == (16, 16) and both.settings["resolutions"] == [8, 16]
    expected = aggregate([coarse.cross(0, 1), fine.cross(0, 1)], [(8, 8), (16, 16)])
    np.testing.assert_allclose(both.cross(0, 1), expected, atol=1e-6)


def test_explicit_pairs_and_determinism(tiny_engine, two_images):
    one_way = tiny_engine.extract(two_images, pairs=[(0, 1)])
    assert one_way.has(0, 1) and not one_way.has(1, 0)
    again = tiny_engine.extract(two_images, pairs=[(0, 1)])
    np.testing.assert_array_equal(one_way.cross(0, 1), again.cross(0, 1))
    other_seed = tiny_engine.extract(two_images, pairs=[(0, 1)], seed=1)
    assert np.abs(other_seed.cross(0, 1) - one_way.cross(0, 1)).max() > 1e-4


def test_progress_and_cancel(tiny_engine, two_images):
    calls = []
    tiny_engine.extract(two_images, progress=lambda stage, f: calls.append((stage, f)))
    stages = [stage for stage, _ in calls]
    assert stages.index("load") < stages.index("encode") < stages.index("forward")
    assert calls[-1] == ("forward", 1.0)
    assert all(0.0 <= f <= 1.0 for _, f in calls)
    polls = []

    def cancel_after_encoding():
        polls.append(1)
        return len(polls) > 4

    with pytest.raises(Cancelled):
        tiny_engine.extract(two_images, cancel=cancel_after_encoding)
    # the processors must be restored even after a cancellation inside the UNet
    assert not any(
        type(p).__name__ == "RecordingProcessor" for p in tiny_engine.unet.attn_processors.values()
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"layers": 2}, "available grid sides: \\[4, 8, 16, 32\\]"),
        ({"layers": "up_blocks.9.attn1"}, "no self-attention layer named"),
        ({"layers": []}, "empty"),
        ({"pairs": [(0, 5)]}, "outside 0..1"),
        ({"pairs": "some"}, "'all' or a list"),
        ({"timestep": 1000}, "0..999"),
    ],
)
def test_bad_settings_are_refused(tiny_engine, two_images, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_engine.extract(two_images, **kwargs)


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((4, 64, 64)), "(?i)pick a plane"),
        (np.full((64, 64), np.nan), "NaN"),
        (np.zeros((8, 8)), "smallest usable image"),
    ],
)
def test_bad_images_are_refused(tiny_engine, two_images, image, fragment):
    with pytest.raises(InputImageError, match=fragment) as info:
        tiny_engine.extract([two_images[0], image])
    assert "image 1" in str(info.value)
    with pytest.raises(InputImageError, match="no images"):
        tiny_engine.extract([])


def test_building_blocks_for_other_engine_modules(tiny_engine, two_images):
    latents, geometries = tiny_engine.encode(two_images)
    assert latents.shape == (2, 4, 32, 32) and latents.dtype == tiny_engine.dtype
    assert [g.image_shape for g in geometries] == [(96, 128), (80, 64)]
    single, _ = tiny_engine.encode(two_images[1])  # a bare (H, W, 3) array is one image
    torch.testing.assert_close(single[0], latents[1])
    zeros = torch.zeros((2, 4, 32, 32))
    noisy = tiny_engine.add_noise(zeros, 261, seed=3)
    assert torch.equal(noisy[0], noisy[1])  # one noise field shared by every image
    assert torch.equal(noisy, tiny_engine.add_noise(zeros, 261, seed=3))
    assert not torch.equal(noisy, tiny_engine.add_noise(zeros, 261, seed=4))
    alpha = tiny_engine.scheduler.alphas_cumprod[261]
    assert abs(float(noisy.std()) - float((1 - alpha).sqrt())) < 0.05  # noise level at t
