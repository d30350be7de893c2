"""DIFT features: the decoder up-block activations of one noised UNet pass (baseline).

This re-implements the recipe of Tang et al. (DIFT, ``Tsingularity/dift``,
``src/models/dift_sd.py``) on this project's engine so that it can be compared with the
attention method on the same model, images and preprocessing:

1. resize the image to ``image_size`` x ``image_size`` (DIFT: 768 for SD2.1), scale to
   ``[-1, 1]`` and encode it with the VAE;
2. draw ``ensemble_size`` latents from the VAE posterior and noise each to ``timestep``
   (DIFT: 261) with its own noise;
3. run the UNet on the batch with the empty prompt and keep the output of
   ``up_blocks[up_ft_index]`` (DIFT: 1, i.e. 1/16 of the input resolution, 1280
   channels for SD2.1), stopping the forward pass there;
4. average the features over the ensemble.

Two deliberate differences, both making the baseline cheaper, never more accurate: the
image goes through the VAE encoder once and the ensemble samples its posterior
``ensemble_size`` times (DIFT encodes ``ensemble_size`` copies of the image: the same
distribution at ``ensemble_size`` times the cost); and the prompt is the engine's empty
prompt (DIFT's SPair script uses ``"a photo of a <category>"``).

This is the one engine module the evaluation harness owns; it imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DiftSettings", "extract_dift_features"]


@dataclass(frozen=True)
class DiftSettings:
    """The DIFT recipe; the defaults are DIFT's for SD2.1 on SPair-71k."""

    image_size: int = 768
    timestep: int = 261
    up_ft_index: int = 1
    ensemble_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(
                f"image_size must be a positive multiple of 8 (the VAE's stride), "
                f"got {self.image_size}"
            )
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {self.ensemble_size}")
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be in [0, 1000), got {self.timestep}")


class _StopForward(Exception):
    """Raised by the feature hook: nothing after the chosen up-block is needed."""


@contextmanager
def _plain_attention(unet):
    """Run with diffusers' standard attention processor, restoring whatever was set.

    The engine may leave recording processors on the UNet; DIFT must not pay for them.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))  # diffusers pops entries: pass a copy


def _to_model_input(image: np.ndarray, size: int, device, dtype) -> torch.Tensor:
    """Any image napari holds -> ``(1, 3, size, size)`` in [-1, 1], with the engine's
    preprocessing (`napari_corrseg.core.images`: stretch to a square, no padding)."""
    from ..core.images import prepare_image, resize_image

    square = resize_image(prepare_image(image), size)
    tensor = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None]
    return (tensor * 2.0 - 1.0).clamp(-1.0, 1.0).to(device=device, dtype=dtype)


@torch.no_grad()
def _features_of_one(engine, image: np.ndarray, settings: DiftSettings, seed: int) -> np.ndarray:
    unet, vae = engine.unet, engine.vae
    if not 0 <= settings.up_ft_index < len(unet.up_blocks):
        raise ValueError(
            f"up_ft_index {settings.up_ft_index} is outside this UNet's "
            f"{len(unet.up_blocks)} up-blocks"
        )
    device, dtype = engine.device, engine.dtype
    generator = torch.Generator("cpu").manual_seed(int(seed))
    pixels = _to_model_input(image, settings.image_size, device, dtype)
    posterior = vae.encode(pixels).latent_dist
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
    draws = [posterior.sample(generator=generator) for _ in range(settings.ensemble_size)]
    latents = torch.cat(draws) * scaling
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    timesteps = torch.full((latents.shape[0],), settings.timestep, dtype=torch.long)
    noisy = engine.scheduler.add_noise(
        latents, noise.to(device=device, dtype=latents.dtype), timesteps.to(device)
    )
    captured: dict[str, torch.Tensor] = {}

    def keep_and_stop(module, inputs, output):
        captured["features"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    hook = unet.up_blocks[settings.up_ft_index].register_forward_hook(keep_and_stop)
    try:
        with _plain_attention(unet):
            unet(
                noisy,
                timesteps.to(device),
                encoder_hidden_states=engine.prompt_embeddings(latents.shape[0]),
            )
    except _StopForward:
        pass
    finally:
        hook.remove()
    if "features" not in captured:
        raise RuntimeError("the UNet finished without running the chosen up-block")
    features = captured["features"].float().mean(dim=0)
    return features.cpu().numpy().astype(np.float32)


def extract_dift_features(
    engine,
    images: Sequence[np.ndarray],
    settings: DiftSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[np.ndarray]:
    """DIFT feature maps of each image, one at a time (DIFT's batching: one image's ensemble).

    Parameters
    ----------
    engine : Engine
        From `napari_corrseg.load_engine`; needs ``unet``, ``vae``, ``scheduler``,
        ``device``, ``dtype`` and ``prompt_embeddings(batch_size)``.
    images : sequence of numpy.ndarray
        ``(H, W, 3)`` uint8 (or float in [0, 1]) RGB images of any size.
    settings : DiftSettings, optional
        The recipe; DIFT's SD2.1 defaults if omitted.
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.
    cancel : callable, optional
        Returns True to stop; raises `napari_corrseg.errors.Cancelled`.

    Returns
    -------
    list of numpy.ndarray
        One ``(C, h, w)`` float32 map per image, ``h = w = image_size / 16`` for
        ``up_ft_index = 1`` on SD2. Feature ``(r, c)`` sits at grid coordinate
        ``(r, c)`` of an `ImageGeometry` with grid ``(h, w)``.
    """
    from ..errors import Cancelled

    settings = settings or DiftSettings()
    features = []
    for index, image in enumerate(images):
        if cancel is not None and cancel():
            raise Cancelled("DIFT feature extraction was cancelled")
        # The same seed for every image: an image's features do not depend on its position.
        features.append(_features_of_one(engine, image, settings, settings.seed))
        if progress is not None:
            progress(index + 1, len(images))
    return features
