"""The planner's memory estimate: its parts, and agreement with the measured peaks.

The full-size model is built on torch's "meta" device: the configuration and the modules
exist, no weight is allocated, so the estimate for SD2.1-base at 512 px is computed here
exactly as on a real machine and compared with the peaks measured by
``benchmarks/bench_planner_memory.py`` (``benchmarks/results/planner.md``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_corrseg.engine.capture import select_layers  # noqa: E402
from napari_corrseg.engine.planner import (  # noqa: E402
    estimate_encoder_bytes,
    plan_passes,
    scratch_bytes,
)

MIB = 2**20
#: Peak beyond the weights of one UNet pass of B images + maps, pairs="all", measured by
#: benchmarks/bench_planner_memory.py on 2026-12-03 (MiB).
MEASURED_PASS_PEAK = {1: 243, 2: 393, 4: 696}
#: Peak of one 512 px VAE encode, same run (MiB).
MEASURED_ENCODE_PEAK = 659


@pytest.fixture(scope="module")
def full_size():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from napari_corrseg.engine.models import shipped_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(shipped_config("sd2-base", "unet"))
        vae = AutoencoderKL.from_config(shipped_config("sd2-base", "vae"))
    return unet, vae


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_estimate_is_within_25_percent_of_the_measured_peak(full_size, batch):
    unet, _ = full_size
    layers = select_layers(unet, 512, "auto")
    plan = plan_passes(
        unet,
        512,
        torch.float32,
        layers,
        batch,
        batch * (batch - 1),
        device=torch.device("cpu"),
        batch_size=batch,
    )
    ratio = plan.peak_bytes / (MEASURED_PASS_PEAK[batch] * MIB)
    assert 0.75 <= ratio <= 1.25, f"batch {batch}: estimate / measured = {ratio:.2f}"


def test_encoder_estimate_matches_the_measured_vae_peak(full_size):
    _, vae = full_size
    estimate = estimate_encoder_bytes(vae, 512, torch.float32)
    assert estimate == 512 * 512 * 128 * 4 * 5  # five full-resolution activations
    assert 0.75 <= estimate / (MEASURED_ENCODE_PEAK * MIB) <= 1.25
    assert estimate_encoder_bytes(object(), 512, torch.float32) == 0  # unknown encoder


def test_scratch_is_sized_by_partners_per_image_not_by_all_pairs(full_size):
    unet, _ = full_size
    layers = select_layers(unet, 512, "auto")
    heads, tokens = 10, 32 * 32
    assert scratch_bytes(unet, layers, 0) == 2 * 4 * heads * tokens * tokens
    assert scratch_bytes(unet, layers, 1) == 2 * 2 * 4 * heads * tokens * tokens
    star = plan_passes(unet, 512, torch.float32, layers, 8, 14, device=torch.device("cpu"))
    every = plan_passes(unet, 512, torch.float32, layers, 8, 56, device=torch.device("cpu"))
    # 1-vs-7 and all pairs: the reference (or every image) has 7 partners either way
    assert star.pass_fixed_bytes == every.pass_fixed_bytes
    assert every.maps_bytes * (8 + 14) == star.maps_bytes * (8 + 56)  # maps: one per pair


def test_the_extraction_counts_the_encoder_only_when_it_ran(tiny_engine):
    rng = np.random.default_rng(12345)
    images = [rng.random((40, 56, 3)).astype(np.float32) for _ in range(2)]
    tiny_engine.extract(images)
    first = tiny_engine.last_plan
    assert first.encode_bytes == estimate_encoder_bytes(
        tiny_engine.encoder, tiny_engine.image_size, tiny_engine.dtype
    )
    assert first.extraction_peak_bytes == max(first.encode_bytes, first.peak_bytes)
    tiny_engine.extract(images)  # latents cached: no encoder
    assert tiny_engine.last_plan.encode_bytes == 0
