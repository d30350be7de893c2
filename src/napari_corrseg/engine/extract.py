"""The `Engine`: images -> latents -> one UNet pass -> `AttentionMaps`.

Every image is prepared (`napari_corrseg.images.prepare_image`), resized to the model's
square input without padding, VAE-encoded (``latent_dist.mean * scaling_factor``) and
noised to the chosen timestep. All images get the SAME seeded noise field, so an image's
maps do not depend on its place in the batch and two identical images give identical
maps. One UNet pass over the batch, with the cached empty-prompt embedding, records the
maps (`napari_corrseg.engine.capture`) and stops after the last chosen layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, InputImageError
from ..images import prepare_image, resize_image
from ..maps import AttentionMaps, ImageGeometry
from .capture import AttentionRecorder, EarlyExit, LayerInfo, select_layers, self_attention_layers
from .models import Components

__all__ = ["Engine"]

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


class Engine:
    """A loaded model and the one-pass attention extraction built on it.

    Create it with `napari_corrseg.engine.load_engine`. Attributes other modules may use:
    ``unet``, ``vae``, ``scheduler``, ``device``, ``dtype``, ``image_size``,
    ``identity`` (JSON-able provenance), ``is_tiny``.
    """

    def __init__(self, components: Components, device: torch.device, dtype: torch.dtype):
        self.unet = components.unet
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.device = device
        self.dtype = dtype
        self.image_size = int(components.image_size)
        self.identity: dict[str, Any] = dict(components.identity)
        self._prompt_embedding = components.prompt_embedding
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Engine(model={self.identity['model']!r}, device={self.device}, "
            f"dtype={self.identity['dtype']}, image_size={self.image_size})"
        )

    @property
    def is_tiny(self) -> bool:
        """True for the random-weight tiny model: its maps are NOT semantic."""
        return bool(self.identity.get("tiny"))

    @property
    def layers(self) -> list[LayerInfo]:
        """Every self-attention layer (name, grid side), in execution order."""
        return self_attention_layers(self.unet, self.image_size)

    # -- building blocks ----------------------------------------------------------

    def prompt_embeddings(self, batch_size: int) -> torch.Tensor:
        """The cached empty-prompt embedding repeated to ``(batch_size, tokens, dim)``."""
        return self._prompt_embedding.expand(batch_size, -1, -1)

    @torch.no_grad()
    def encode(
        self,
        images: Sequence[np.ndarray],
        *,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> tuple[torch.Tensor, list[ImageGeometry]]:
        """Prepare, resize and VAE-encode images one by one.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Images as napari holds them (see `napari_corrseg.images`).
        progress : callable, optional
            ``progress("encode", fraction)`` after each image.
        cancel : callable, optional
            Checked before each image; True raises `Cancelled`.

        Returns
        -------
        latents : torch.Tensor
            ``(B, 4, image_size / 8, image_size / 8)`` scaled latents on the engine device.
        geometries : list of ImageGeometry
            Per image, on the latent grid; `extract` replaces the grid with the layer's.
        """
        images = _as_image_list(images)
        if len(images) == 0:
            raise InputImageError("no images given; pass a list of at least one image")
        latent_side = self.image_size // 8
        latents, geometries = [], []
        for index, image in enumerate(images):
            if cancel is not None and cancel():
                raise Cancelled("encoding was cancelled")
            prepared = prepare_image(image, name=f"image {index}")
            latents.append(self.encode_prepared(prepared))
            geometries.append(ImageGeometry(prepared.shape[:2], (latent_side, latent_side)))
            if progress is not None:
                progress("encode", (index + 1) / len(images))
        return torch.cat(latents), geometries

    @torch.no_grad()
    def encode_prepared(self, prepared: np.ndarray) -> torch.Tensor:
        """VAE latent ``(1, 4, h, w)`` of one `prepare_image` result.

        The single place an image becomes a latent: a per-image latent cache can wrap it
        (keyed by the prepared pixels and ``identity``) without changing callers.
        """
        square = resize_image(prepared, self.image_size)
        pixels = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None]
        pixels = (pixels * 2.0 - 1.0).to(device=self.device, dtype=self.dtype)
        latent = self.vae.encode(pixels).latent_dist.mean
        return latent * float(self.vae.config.scaling_factor)

    def _check_timestep(self, timestep: int) -> None:
        steps = int(self.scheduler.config.num_train_timesteps)
        if not 0 <= int(timestep) < steps:
            raise ValueError(f"timestep must be in 0..{steps - 1}, got {timestep}")

    def add_noise(self, latents: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
        """Noise latents to ``timestep`` with one seeded noise field shared by all images.

        The noise is drawn on the CPU in float32, so it is the same on every device.
        """
        self._check_timestep(timestep)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
        noise = noise.to(device=latents.device, dtype=latents.dtype).expand_as(latents)
        timesteps = torch.full((latents.shape[0],), int(timestep), device=latents.device)
        return self.scheduler.add_noise(latents, noise, timesteps)

    # -- the main job -------------------------------------------------------------

    @torch.no_grad()
    def extract(
        self,
        images: Sequence[np.ndarray],
        *,
        layers: str | int | Sequence[int | str] = "auto",
        timestep: int = 261,
        seed: int = 0,
        pairs: str | Sequence[tuple[int, int]] = "all",
        early_exit: bool = True,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> AttentionMaps:
        """Self and cross self-attention of a set of images from one UNet pass.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Any number of images as napari holds them; sizes may differ.
        layers : "auto", int, or sequence of int or str
            ``"auto"``: the decoder layers at ``image_size / 16`` (32x32 at 512 px). An int
            or ints pick every layer with that grid side (8/16/32/64 at 512 px); strings
            pick layers by module name (see `layers`). Maps of one grid side are averaged;
            several sides are aggregated onto the finest grid.
        timestep : int
            Diffusion timestep of the noised latent (DIFT uses 261 for SD2.1).
        seed : int
            Seed of the noise.
        pairs : "all" or sequence of (int, int)
            Ordered cross pairs to compute; self maps are always computed.
        early_exit : bool
            Stop the UNet after the last chosen layer (same maps, less time).
        progress : callable, optional
            ``progress(stage, fraction)`` with stages "load", "encode", "forward".
        cancel : callable, optional
            Polled between images and layers; returning True raises `Cancelled`.

        Returns
        -------
        AttentionMaps
            Row-stochastic ``(N, N)`` float32 maps; ``settings`` records the model
            identity, layers, timestep and seed.
        """

        def report(stage: str, fraction: float) -> None:
            if progress is not None:
                progress(stage, float(fraction))
            if cancel is not None and cancel():
                raise Cancelled(f"extraction was cancelled during {stage}")

        report("load", 0.0)
        chosen = select_layers(self.unet, self.image_size, layers)
        images = _as_image_list(images)
        n_images = len(images)
        pair_list = _check_pairs(pairs, n_images)
        self._check_timestep(timestep)
        report("load", 1.0)
        latents, geometries = self.encode(images, progress=progress, cancel=cancel)
        noisy = self.add_noise(latents, timestep, seed)
        report("forward", 0.0)
        recorder = AttentionRecorder(
            chosen,
            n_images,
            pair_list,
            early_exit=early_exit,
            cancel=cancel,
            on_layer=lambda fraction: progress and progress("forward", fraction),
        )
        timesteps = torch.full((n_images,), int(timestep), device=self.device)
        with self._lock, recorder.attached(self.unet):  # processors are per model: one pass
            try:
                self.unet(noisy, timesteps, encoder_hidden_states=self.prompt_embeddings(n_images))
            except EarlyExit:
                pass
        per_side = recorder.result()
        report("forward", 1.0)
        grid, maps = _combine_resolutions(per_side)
        settings = {
            "model": dict(self.identity),
            "layers": [layer.name for layer in chosen],
            "resolutions": sorted(per_side),
            "timestep": int(timestep),
            "seed": int(seed),
            "image_size": self.image_size,
            "prompt": "",
        }
        geometries = [ImageGeometry(g.image_shape, grid) for g in geometries]
        return AttentionMaps(grid, geometries, maps, settings)


def _as_image_list(images) -> list:
    """A bare 2-D or ``(H, W, C)`` array is one image; anything else is a sequence."""
    if isinstance(images, np.ndarray) and (
        images.ndim == 2 or (images.ndim == 3 and images.shape[-1] <= 4)
    ):
        return [images]
    return list(images)


def _check_pairs(pairs, n_images: int) -> list[tuple[int, int]]:
    """``"all"`` -> every ordered pair; else validate ``[(i, j), ...]``."""
    if isinstance(pairs, str):
        if pairs != "all":
            raise ValueError(f"pairs must be 'all' or a list of (i, j), got {pairs!r}")
        return [(i, j) for i in range(n_images) for j in range(n_images) if i != j]
    checked = []
    for pair in pairs:
        try:
            i, j = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"each pair must be two image indices (i, j), got {pair!r}") from None
        if not (0 <= i < n_images and 0 <= j < n_images):
            raise ValueError(f"pair {pair!r} names an image outside 0..{n_images - 1}")
        checked.append((i, j))
    return checked


def _combine_resolutions(
    per_side: dict[int, dict[tuple[int, int], np.ndarray]],
) -> tuple[tuple[int, int], dict[tuple[int, int], np.ndarray]]:
    """One grid side: as is. Several: `correspondence.aggregate_attention` per pair."""
    sides = sorted(per_side)
    if len(sides) == 1:
        return (sides[0], sides[0]), per_side[sides[0]]
    try:
        from ..correspondence import aggregate_attention
    except ImportError as error:
        raise ValueError(
            f"layers span grid sides {sides}; aggregating several resolutions needs "
            "napari_corrseg.correspondence.aggregate_attention, which is not available. "
            "Choose layers of one grid side."
        ) from error
    grids = [(side, side) for side in sides]
    maps = {}
    for pair in per_side[sides[0]]:
        aggregated = aggregate_attention(
            [per_side[side][pair] for side in sides], grids, out_grid=grids[-1]
        )
        maps[pair] = np.asarray(aggregated, dtype=np.float32)
    return grids[-1], maps
