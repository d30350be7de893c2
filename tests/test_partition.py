"""Eq. 2.3's partition normalisation: numpy and torch agree, and it does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg.core.partition import cross_attention, head_average
from napari_corrseg.synthetic.cases import GOAL_WARPS
from napari_corrseg.synthetic.heads import head_scores


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_joint_is_the_renormalised_latter_half_of_one_softmax():
    rng = np.random.default_rng(0)
    cross, own = rng.normal(size=(3, 5, 7)), rng.normal(size=(3, 5, 4))
    # the paper: softmax over [own keys, other keys] per head, average, keep the other
    # image's block and renormalise its rows
    joint = _softmax(np.concatenate([own, cross], axis=-1)).mean(axis=0)[:, 4:]
    expected = joint / joint.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(head_average(cross, own, "joint"), expected, rtol=1e-5)
    separate = _softmax(cross).mean(axis=0)
    np.testing.assert_allclose(head_average(cross, own), separate, rtol=1e-5)
    assert not np.allclose(expected, separate, rtol=1e-3)


def test_joint_weights_heads_by_the_share_they_give_the_other_image():
    cross = np.stack([np.log([[0.7, 0.1, 0.2]]), np.log([[0.1, 0.8, 0.1]])])
    own = np.stack([np.full((1, 3), -50.0), np.full((1, 3), 50.0)])  # head 2: own image only
    np.testing.assert_allclose(head_average(cross, own, "joint")[0], [0.7, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(head_average(cross, own)[0], [0.4, 0.45, 0.15], atol=1e-6)


def test_cross_attention_from_queries_and_keys():
    rng = np.random.default_rng(1)
    q, k_t, k_s = (rng.normal(size=(2, 3, 6, 4)) for _ in range(3))  # layers, heads, N, d
    for partition in ("separate", "joint"):
        got = cross_attention(q, k_t, own_keys=k_s, partition=partition)
        per_layer = [
            head_average(
                q[layer] @ k_t[layer].transpose(0, 2, 1) / 2.0,
                q[layer] @ k_s[layer].transpose(0, 2, 1) / 2.0,
                partition,
            )
            for layer in range(2)
        ]
        expected = np.mean(per_layer, axis=0)
        np.testing.assert_allclose(got, expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="own_keys"):
        cross_attention(q, k_t, partition="joint")
    with pytest.raises(ValueError, match="partition must be one of"):
        cross_attention(q, k_t, partition="both")


def test_torch_accumulation_matches_numpy():
    torch = pytest.importorskip("torch")
    from napari_corrseg.engine.capture import accumulate_attention, finish_sums

    rng = np.random.default_rng(2)
    heads, n, d = 4, 36, 8
    q = [rng.normal(size=(heads, n, d)) for _ in range(2)]
    k = [rng.normal(size=(heads, n, d)) for _ in range(2)]
    scale = 1 / np.sqrt(d)
    for partition in ("separate", "joint"):
        sums = {}
        accumulate_attention(
            sums,
            [torch.tensor(x * scale, dtype=torch.float32) for x in q],
            [torch.tensor(x, dtype=torch.float32) for x in k],
            {0: [0, 1], 1: [1, 0]},
            chunk_elements=heads * 2 * n * 10,  # several chunks of rows
            partition=partition,
        )
        maps = finish_sums({n: sums}, {n: 1})[n]
        np.testing.assert_allclose(
            maps[(0, 1)],
            cross_attention(q[0], k[1], own_keys=k[0], partition=partition),
            atol=1e-5,
        )
        np.testing.assert_allclose(maps[(0, 0)], cross_attention(q[0], k[0]), atol=1e-5)


def test_synthetic_heads_model_truth_and_shapes():
    warp = GOAL_WARPS["shift"]
    layer = head_scores((12, 12), warp, occlusion=(0, 0, 6, 6), heads=4, seed=0)
    assert layer.cross_st.shape == (4, 144, 144) and layer.own_s.shape == (4, 144, 144)
    np.testing.assert_allclose(layer.true_target[0], [3.0, 2.0])
    coarse = head_scores((12, 12), warp, occlusion=(0, 0, 6, 6), heads=4, seed=0, coarse=True)
    assert coarse.grid == (6, 6) and coarse.cross_st.shape == (4, 36, 36)
    np.testing.assert_allclose(coarse.true_target[0], [1.5, 1.0])  # the shift, halved

    # the content heads find the target (within a token), the self-bound ones do not
    def found(maps):
        peaks = np.stack(np.divmod(maps.argmax(axis=1), 12), axis=1)[layer.visible]
        return np.mean(np.abs(peaks - layer.true_target[layer.visible]).max(axis=1) <= 1)

    assert found(head_average(layer.cross_st[:2], layer.own_s[:2])) > 0.9
    assert found(head_average(layer.cross_st[2:], layer.own_s[2:])) < 0.2


@pytest.mark.slow
def test_engine_extracts_joint_maps_and_every_recipe_in_one_pass(tiny_engine, two_images):
    from napari_corrseg.engine.variants import ALL_VARIANTS, extract_variants, layer_choice

    pairs = [(0, 1), (1, 0)]
    separate = tiny_engine.extract(two_images, pairs=pairs)
    joint = tiny_engine.extract(two_images, pairs=pairs, partition="joint")
    assert joint.settings["partition"] == "joint" and "partition" not in separate.settings
    np.testing.assert_allclose(joint.self(0), separate.self(0), atol=1e-6)
    assert not np.allclose(joint.cross(0, 1), separate.cross(0, 1), atol=1e-4)
    np.testing.assert_allclose(joint.cross(0, 1).sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="partition must be one of"):
        tiny_engine.extract(two_images, partition="eq2.3")

    calls = []
    handle = tiny_engine.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        recipes = extract_variants(tiny_engine, two_images, ALL_VARIANTS, pairs=pairs)
    finally:
        handle.remove()
    assert len(calls) == 1, "every recipe must come from one UNet pass"
    np.testing.assert_allclose(recipes[("average", "separate")].cross(0, 1), separate.cross(0, 1))
    np.testing.assert_allclose(recipes[("average", "joint")].cross(0, 1), joint.cross(0, 1))
    middle = layer_choice(tiny_engine, "middle")
    alone = tiny_engine.extract(two_images, pairs=pairs, layers=[middle[0].name])
    np.testing.assert_allclose(recipes[("middle", "separate")].cross(1, 0), alone.cross(1, 0))
    both = recipes[("coarse+average", "separate")]
    assert both.grid == separate.grid and len(both.settings["resolutions"]) == 2
