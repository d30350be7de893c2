"""The `Engine`: images -> latents -> one UNet pass -> `AttentionMaps`.

Every image is prepared (`napari_corrseg.core.images.prepare_image`), resized to the model's
square input without padding, encoded (the VAE's ``latent_dist.mean * scaling_factor``,
or the fast TAESD encoder) once -- latents are cached per image
(`napari_corrseg.files.latent_cache`) -- and noised to the chosen timestep. All images get the
SAME seeded noise field, so an image's maps do not depend on its place in the batch and
two identical images give identical maps. The images go through the UNet in passes of
at most b images (`napari_corrseg.engine.planner`), each keeping its images' queries and
keys at the chosen layers and stopping after the last one; the maps of the requested
pairs are then computed from those (`napari_corrseg.engine.capture`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core.images import prepare_image, resize_image
from ..core.maps import AttentionMaps, ImageGeometry
from ..errors import Cancelled, InputImageError
from ..files.latent_cache import LatentCache, latent_key
from .capture import (
    EarlyExit,
    LayerInfo,
    QueryKeyRecorder,
    maps_from_store,
    select_layers,
    self_attention_layers,
)
from .encoders import encode_pixels
from .models import Components
from .partition import check_partition
from .planner import PassPlan, plan_passes
from .query_key import QueryKeyMixin

__all__ = ["Engine"]

Progress = Callable[[str, float], None]
Cancel = Callable[[], bool]


class Engine(QueryKeyMixin):
    """A loaded model and the one-pass attention extraction built on it.

    Create it with `napari_corrseg.engine.load_engine`. Attributes other modules may use:
    ``unet``, ``vae``, ``scheduler``, ``device``, ``dtype``, ``image_size``,
    ``identity`` (JSON-able provenance), ``is_tiny``, ``encoder`` (the module that
    turns pixels into latents: ``vae`` or a fast encoder), ``latent_cache``,
    ``encoder_calls`` (images actually encoded, for tests and benchmarks), ``last_plan``.

    For collections (`napari_corrseg.engine.query_key.QueryKeyMixin`):
    ``extract_query_key`` / ``iter_query_key`` return each image's queries and keys
    instead of maps, and ``attention_backend`` forms maps from them on this device.
    """

    def __init__(
        self,
        components: Components,
        device: torch.device,
        dtype: torch.dtype,
        *,
        encoder: Any = None,
        encoder_identity: dict[str, Any] | None = None,
        latent_cache: LatentCache | None = None,
        batch_size: int | None = None,
        memory_budget: int | None = None,
    ):
        self.unet = components.unet
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.device = device
        self.dtype = dtype
        self.image_size = int(components.image_size)
        # the default VAE adds nothing, so identities (and cache keys) stay as they were
        self.identity: dict[str, Any] = {**components.identity, **(encoder_identity or {})}
        self.encoder = encoder if encoder is not None else components.vae
        self.latent_cache = latent_cache if latent_cache is not None else LatentCache()
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.encoder_calls = 0
        self.last_plan: PassPlan | None = None
        self._prompt_embedding = components.prompt_embedding
        self._lock = threading.Lock()

    @property
    def encoder_identity(self) -> dict[str, Any]:
        """What determines a latent: model (for its VAE) or fast encoder, and dtype."""
        if "encoder" in self.identity:
            keys = ("encoder", "encoder_revision", "dtype")
        else:
            keys = ("model", "revision", "file_sha256", "dtype")
        identity = {k: self.identity[k] for k in keys if k in self.identity}
        # channels-last convolutions round differently (~1e-6): keep their latents apart
        identity["channels_last"] = _is_channels_last(self.encoder)
        return identity

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

    @torch.inference_mode()
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
            Images as napari holds them (see `napari_corrseg.core.images`).
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

    @torch.inference_mode()
    def encode_prepared(self, prepared: np.ndarray) -> torch.Tensor:
        """Latent ``(1, 4, h, w)`` of one `prepare_image` result, through the latent cache.

        The single place an image becomes a latent. A hit (same prepared pixels, encoder
        and input size) skips the encoder; ``encoder_calls`` counts the misses.
        """
        key = latent_key(prepared, self.encoder_identity, self.image_size)
        cached = self.latent_cache.get(key) if self.latent_cache is not None else None
        if cached is not None:
            # a copy: callers may change the latent in place, the cache must not change
            return torch.from_numpy(cached.copy()).to(device=self.device, dtype=self.dtype)
        square = resize_image(prepared, self.image_size)
        pixels = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None]
        pixels = (pixels * 2.0 - 1.0).to(device=self.device, dtype=self.dtype)
        latent = encode_pixels(self.encoder, pixels)
        self.encoder_calls += 1
        if self.latent_cache is not None:
            self.latent_cache.put(key, latent.float().cpu().numpy())
        return latent

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

    def recorded_pass(self, noisy: torch.Tensor, timestep: int, recorder) -> None:
        """One UNet pass over ``noisy`` at ``timestep`` with ``recorder`` attached, stopped
        by its early exit once it holds every chosen layer."""
        steps = torch.full((noisy.shape[0],), int(timestep), device=self.device)
        with self._lock, recorder.attached(self.unet):  # processors are per model
            try:
                self.unet(noisy, steps, encoder_hidden_states=self.prompt_embeddings(len(noisy)))
            except EarlyExit:
                pass

    # -- the main job -------------------------------------------------------------

    @torch.inference_mode()
    def extract(
        self,
        images: Sequence[np.ndarray],
        *,
        layers: str | int | Sequence[int | str] = "auto",
        timestep: int = 261,
        seed: int = 0,
        pairs: str | Sequence[tuple[int, int]] = "all",
        reference: int = 0,
        early_exit: bool = True,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        partition: str = "separate",
    ) -> AttentionMaps:
        """Self and cross self-attention of a set of images, each through the UNet once.

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
        pairs : "all", "reference" or sequence of (int, int)
            Ordered cross pairs to compute: every pair, each image against ``reference``
            (both directions), or a list; self maps are always computed.
        reference : int
            The reference image of ``pairs="reference"``.
        early_exit : bool
            Stop the UNet after the last chosen layer (same maps, less time).
        batch_size : int, optional
            Images per UNet pass (default: the engine's setting, else chosen from the
            memory budget). The maps do not depend on it.
        memory_budget : int, optional
            Bytes the extraction may use beyond the weights (default: the engine's
            setting, else half the free memory).
        progress : callable, optional
            ``progress(stage, fraction)`` with stages "load", "encode", "forward".
        cancel : callable, optional
            Polled between images and layers; returning True raises `Cancelled`.
        partition : {"separate", "joint"}
            Normalisation of the cross maps: each over the other image's keys alone, or
            the paper's eq. 2.3 (`napari_corrseg.engine.partition`).

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
        check_partition(partition)
        chosen = select_layers(self.unet, self.image_size, layers)
        images = _as_image_list(images)
        n_images = len(images)
        pair_list = _check_pairs(pairs, n_images, reference)
        self._check_timestep(timestep)
        report("load", 1.0)
        encoded_before = self.encoder_calls
        latents, geometries = self.encode(images, progress=progress, cancel=cancel)
        # planned after encoding: bad images are reported first, and encoded latents
        # stay in the latent cache if the plan refuses the budget
        plan = plan_passes(
            self.unet,
            self.image_size,
            self.dtype,
            chosen,
            n_images,
            len({p for p in pair_list if p[0] != p[1]}),
            device=self.device,
            batch_size=batch_size if batch_size is not None else self.batch_size,
            memory_budget=memory_budget if memory_budget is not None else self.memory_budget,
            max_partners=_max_partners(pair_list, n_images),
            encoder=self.encoder if self.encoder_calls > encoded_before else None,
        )
        self.last_plan = plan
        report("forward", 0.0)
        store: dict = {}
        for number, batch in enumerate(plan.batches):
            noisy = self.add_noise(latents[batch[0] : batch[-1] + 1], timestep, seed)
            done = number / plan.n_passes
            recorder = QueryKeyRecorder(
                chosen,
                batch,
                store,
                early_exit=early_exit,
                cancel=cancel,
                on_layer=lambda f, done=done: (
                    progress and progress("forward", done + 0.9 * f / plan.n_passes)
                ),
            )
            self.recorded_pass(noisy, timestep, recorder)
            del noisy
        per_side = maps_from_store(store, chosen, n_images, pair_list, partition=partition)
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
        if partition != "separate":  # the default leaves settings (and cache keys) as they were
            settings["partition"] = partition
        geometries = [ImageGeometry(g.image_shape, grid) for g in geometries]
        return AttentionMaps(grid, geometries, maps, settings)


def _max_partners(pairs: Sequence[tuple[int, int]], n_images: int) -> int:
    """The most cross partners any image's queries have (sizes the map scratch)."""
    counts = np.bincount([i for i, j in pairs if i != j], minlength=n_images)
    return int(counts.max()) if counts.size else 0


def _is_channels_last(module) -> bool:
    """Whether a module's first convolution weight is stored channels-last."""
    for parameter in module.parameters():
        if parameter.ndim == 4 and parameter.shape[1] * parameter.shape[2] > 1:
            return parameter.is_contiguous(memory_format=torch.channels_last)
    return False


def _as_image_list(images) -> list:
    """A bare 2-D or ``(H, W, C)`` array is one image; anything else is a sequence."""
    if isinstance(images, np.ndarray) and (
        images.ndim == 2 or (images.ndim == 3 and images.shape[-1] <= 4)
    ):
        return [images]
    return list(images)


def _check_pairs(pairs, n_images: int, reference: int = 0) -> list[tuple[int, int]]:
    """``"all"`` -> every ordered pair; ``"reference"`` -> each image against
    ``reference``, both directions; else validate ``[(i, j), ...]``."""
    if isinstance(pairs, str):
        if pairs == "reference":
            if not 0 <= int(reference) < n_images:
                raise ValueError(
                    f"reference image {reference} does not exist; pick one of 0..{n_images - 1}"
                )
            others = [j for j in range(n_images) if j != int(reference)]
            return [p for j in others for p in ((int(reference), j), (j, int(reference)))]
        if pairs != "all":
            raise ValueError(
                f"pairs must be 'all' or a list of (i, j), or 'reference' (each image "
                f"against one), got {pairs!r}"
            )
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
        from ..core.correspondence import aggregate_attention
    except ImportError as error:
        raise ValueError(
            f"layers span grid sides {sides}; aggregating several resolutions needs "
            "napari_corrseg.core.correspondence.aggregate_attention, which is not available. "
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
