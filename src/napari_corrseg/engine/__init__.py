"""The only part of napari-corrseg that imports torch and diffusers.

``load_engine`` picks and loads a Stable Diffusion 2 model; the returned `Engine` turns
images into `napari_corrseg.maps.AttentionMaps` with one UNet pass.
"""

from __future__ import annotations

import logging

import torch

from .extract import Engine
from .models import ENV_VAR, MODEL_ALIASES, load_components, resolve_device, resolve_dtype
from .tiny import save_tiny_model

__all__ = ["ENV_VAR", "MODEL_ALIASES", "Engine", "load_engine", "save_tiny_model"]

logger = logging.getLogger(__name__)


def load_engine(
    model: str = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
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
    engine = Engine(components, resolved_device, resolved_dtype)
    logger.info("loaded %r", engine)
    return engine
