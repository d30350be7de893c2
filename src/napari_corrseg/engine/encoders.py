"""Image encoders: the model's own VAE (default) or the fast TAESD encoder.

``encoder="tiny-ae"`` loads diffusers' `AutoencoderTiny` with the TAESD weights
(``madebyollin/taesd``, trained to reproduce the SD1/SD2 VAE's *scaled* latents). Its
encoder is ~10x cheaper than the VAE's on a CPU (0.8 s against 8.5 s at 512 px, channels-last),
but its latents only approximate the VAE's, so
maps differ a little; how much that changes results can only be measured with real
weights (see ``benchmarks/results/throughput.md``). It loads like the model does: an
alias, a hub id (local Hugging Face cache first, then the network unless offline), or a
local folder written by ``save_pretrained``; safetensors only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

__all__ = [
    "ENCODER_ALIASES",
    "encode_pixels",
    "encoder_source",
    "load_encoder",
    "save_tiny_autoencoder",
]

#: Short names -> hub ids of fast encoders.
ENCODER_ALIASES = {"tiny-ae": "madebyollin/taesd", "taesd": "madebyollin/taesd"}
_DEFAULT = {None, "", "vae", "default"}
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*")
_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]


def encoder_source(encoder: str | None) -> tuple[str, str | None] | None:
    """Resolve ``encoder`` without loading: None for the model's VAE, else
    ``(name, local folder or None when only the hub can provide it)``.

    Raises
    ------
    napari_corrseg.errors.ModelLoadError
        For a name that is neither the VAE, an alias, a folder nor a hub id.
    """
    if encoder in _DEFAULT:
        return None
    name = ENCODER_ALIASES.get(str(encoder), str(encoder))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path)
    if not _HUB_ID.fullmatch(name):
        raise ModelLoadError(
            f"unknown encoder {encoder!r}: use 'vae' (the model's own, default), 'tiny-ae' "
            "(TAESD, fast), a hub id or a folder holding an AutoencoderTiny"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=_PATTERNS, local_files_only=True)
    except Exception:  # not cached: only the network can provide it
        return name, None
    return name, folder


def load_encoder(encoder: str | None, device: torch.device, dtype: torch.dtype):
    """Load a fast encoder; None for the model's own VAE.

    Returns
    -------
    tuple
        ``(module, identity)``; identity is a JSON-able dict naming the encoder and its
        revision (merged into ``Engine.identity``), or ``(None, None)`` for the VAE.
    """
    source = encoder_source(encoder)
    if source is None:
        return None, None
    name, folder = source
    if folder is None:  # a hub id that is not cached: download unless offline
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(name, allow_patterns=_PATTERNS)
        except Exception as error:
            raise ModelLoadError(
                f"cannot get encoder {name!r} from the Hugging Face hub or its local cache "
                f"({type(error).__name__}). Connect once so it can be downloaded (~10 MB), "
                "pass a folder holding it, or use encoder='vae' (the model's own)."
            ) from error
    folder_path = Path(folder)
    try:
        from diffusers import AutoencoderTiny

        module = AutoencoderTiny.from_pretrained(folder_path, use_safetensors=True)
        module.to(device)
        if module.dtype != dtype:
            module.to(dtype)
        module.eval().requires_grad_(False)
    except Exception as error:
        raise ModelLoadError(
            f"cannot load encoder {name!r} from {folder_path}: {type(error).__name__}: "
            f"{error}. It must be a diffusers AutoencoderTiny folder (config.json and "
            "diffusion_pytorch_model.safetensors); download it again."
        ) from error
    return module, {"encoder": name, "encoder_revision": encoder_revision(name, folder_path)}


def encoder_revision(name: str, folder: Path) -> str:
    """Hub snapshot folders are named by commit; a user's folder gets a fingerprint."""
    if Path(name).expanduser().is_dir():
        from .models import _folder_fingerprint

        return _folder_fingerprint(folder)
    return folder.name


def encode_pixels(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents of ``pixels`` in [-1, 1]: the VAE posterior mean, or TAESD's output.

    Both end in the latent space the UNet was trained on: the VAE's mean times its
    ``scaling_factor`` (0.18215 for SD2); TAESD is trained on scaled latents already
    (its ``scaling_factor`` is 1).
    """
    output = encoder.encode(pixels)
    latent = output.latent_dist.mean if hasattr(output, "latent_dist") else output.latents
    return latent * float(getattr(encoder.config, "scaling_factor", 1.0))


def save_tiny_autoencoder(folder: str | Path, seed: int = 0) -> Path:
    """Save a small random `AutoencoderTiny` (same layout as ``madebyollin/taesd``).

    For tests and trying the option without weights: it downsamples by 8 to 4 latent
    channels as TAESD does, but its latents are meaningless.
    """
    from diffusers import AutoencoderTiny

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        module = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
        )
    finally:
        torch.random.set_rng_state(state)
    folder = Path(folder)
    module.save_pretrained(folder, safe_serialization=True)
    return folder


def describe(identity: dict[str, Any] | None) -> str:
    """``"vae"`` or the fast encoder's name, for messages."""
    return "vae" if not identity else str(identity["encoder"])
