"""The only part of napari-corrseg that imports torch and diffusers.

``load_engine`` picks and loads a Stable Diffusion 2 model; the returned `Engine` turns
images into `napari_corrseg.core.maps.AttentionMaps`, each image encoded once (latent cache)
and through the UNet once (passes planned to fit memory). `model_identity` and
`LazyEngine` answer the cache key's questions without loading the weights.
"""

from __future__ import annotations

import logging

import torch

from ..files.latent_cache import LatentCache, default_latent_dir
from .encoders import ENCODER_ALIASES, load_encoder, save_tiny_autoencoder
from .extract import Engine
from .identity import LazyEngine, model_identity
from .models import ENV_VAR, MODEL_ALIASES, load_components, resolve_device, resolve_dtype
from .planner import PassPlan, plan_passes
from .tiny import save_tiny_model

__all__ = [
    "ENCODER_ALIASES",
    "ENV_VAR",
    "MODEL_ALIASES",
    "Engine",
    "LatentCache",
    "LazyEngine",
    "PassPlan",
    "load_engine",
    "model_identity",
    "plan_passes",
    "save_tiny_autoencoder",
    "save_tiny_model",
]

logger = logging.getLogger(__name__)


def load_engine(
    model: str = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    *,
    encoder: str | None = "vae",
    latent_cache: LatentCache | bool | None = True,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    channels_last: bool | None = None,
) -> Engine:
    """Load a Stable Diffusion 2 model and return an `Engine` that extracts attention.

    Parameters
    ----------
    model : str
        ``"auto"`` (the value of ``$NAPARI_CORRSEG_MODEL`` if set; else SD2.1-base when
        cached or downloadable; else the tiny model, with a loud warning),
        ``"sd2-base"`` (SD2.1-base, 512 px), ``"sd2"`` (SD2.1, 768 px, v-prediction), a
        diffusers hub id, a local diffusers folder, a single-file ``.safetensors``
        checkpoint (configs ship with the package; a name containing ``768`` selects
        SD2.1, otherwise SD2.1-base), or ``"tiny"`` (random weights: NOT semantic).
    device : str or torch.device
        ``"auto"`` picks cuda, then mps, then cpu.
    dtype : str or torch.dtype, optional
        Default float16 on a GPU, float32 on the CPU.
    encoder : str
        ``"vae"`` (the model's own, default), ``"tiny-ae"`` (TAESD, ``madebyollin/taesd``:
        ~10x cheaper on a CPU, approximate latents), another AutoencoderTiny hub id or a local
        folder. A fast encoder is recorded in ``identity``, so cached maps never mix.
    latent_cache : LatentCache, bool or None
        ``True``: memory plus disk in ``<cache dir>/latents`` (`default_latent_dir`);
        ``False``/None: memory only; or pass a `LatentCache`.
    batch_size : int, optional
        Images per UNet pass; default chosen per call from ``memory_budget``.
    memory_budget : int, optional
        Bytes an extraction may use beyond the weights; default half the free memory.
    channels_last : bool, optional
        Store the UNet and encoder weights channels-last. Default: on the CPU only, where
        it saves ~13 % of a VAE encode, ~30 % of a TAESD encode and ~5 % of the UNet
        (``benchmarks/results/throughput.md``); not measured on GPUs.

    Returns
    -------
    Engine

    Raises
    ------
    napari_corrseg.errors.ModelLoadError
        The model cannot be loaded; the message names it and says how to fix it.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    components = load_components(model, resolved_device, resolved_dtype)
    fast_encoder, encoder_identity = load_encoder(encoder, resolved_device, resolved_dtype)
    if latent_cache is True:
        latent_cache = LatentCache(default_latent_dir())
    elif latent_cache is False or latent_cache is None:
        latent_cache = LatentCache()
    if channels_last is None:
        channels_last = resolved_device.type == "cpu"
    if channels_last:
        for module in (components.unet, components.vae, fast_encoder):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    engine = Engine(
        components,
        resolved_device,
        resolved_dtype,
        encoder=fast_encoder,
        encoder_identity=encoder_identity,
        latent_cache=latent_cache,
        batch_size=batch_size,
        memory_budget=memory_budget,
    )
    logger.info("loaded %r", engine)
    return engine
