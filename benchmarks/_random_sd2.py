"""Full-size SD2.1-base components with random weights, for the benchmarks (no download)."""

from __future__ import annotations


def random_components(image_size: int = 512):
    """SD2.1-base's UNet, VAE and scheduler from the shipped configurations, random weights
    (seed 0), in eval mode without gradients, with a random text embedding.

    `bench_collection_extract.random_engine` builds the same in its own body: Dask ships
    that function to its workers, where this folder is not importable.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from napari_corrseg.engine.models import Components, shipped_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(shipped_config("sd2-base", "unet"))
    vae = AutoencoderKL.from_config(shipped_config("sd2-base", "vae"))
    scheduler = DDPMScheduler.from_config(shipped_config("sd2-base", "scheduler"))
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    identity = {"model": "random-sd2-base", "revision": "bench", "dtype": "float32"}
    embedding = torch.randn((1, 77, 1024))
    return Components(unet, vae, scheduler, embedding, identity, image_size)
