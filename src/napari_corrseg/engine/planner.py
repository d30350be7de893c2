"""Plan the UNet passes of a collection: at most b images per pass, memory bounded.

Cross maps need no shared pass: image i's queries and image j's keys at a layer depend
only on image i and image j (same seeded noise for every image, per-sample
normalisation), so each pass keeps its images' queries and keys
(`napari_corrseg.engine.capture.QueryKeyRecorder`) and the maps of the pairs a task
needs are computed afterwards. n images cost ceil(n / b) passes and n encodes, whatever
pairs are asked for; b comes from a memory estimate and a budget.

The estimate (bytes beyond the weights) has the parts that were measured on the
full-size SD2.1-base UNet at 512 px, float32 on a CPU, batch 1, 2 and 4
(``benchmarks/bench_planner_memory.py``, results in ``benchmarks/results/planner.md``):

* activations of the early-exited pass, ``ACTIVATION_FACTOR`` x latent tokens x the first
  block's channels per image (~120 MiB per 512 px image);
* the scratch of the map computation: two buffers of heads x N x (1 + partners) x N
  float32 scores, capped by ``CHUNK_ELEMENTS``, where *partners* is the largest number of
  images one image's queries are paired with (``n - 1`` for ``pairs="all"``);
* the queries and keys kept for every image, and the returned maps;
* separately, the encoder: one image at a time, ``ENCODER_FACTOR`` x its widest
  full-resolution activation (the VAE at 512 px: ~640 MiB, more than a pair's UNet work).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .capture import CHUNK_ELEMENTS, LayerInfo

__all__ = [
    "PassPlan",
    "available_memory_bytes",
    "estimate_encoder_bytes",
    "estimate_image_bytes",
    "plan_passes",
    "scratch_bytes",
]

#: Activation bytes of one image in one (early-exited, no-grad) UNet pass, per latent
#: token and top-level channel, in units of the dtype: skip connections, the widest
#: transformer feed-forward (GEGLU, 8x channels) and working copies. Checked against the
#: peak RSS of SD2.1-base at 512 px (benchmarks/bench_planner_memory.py): the pass phase
#: grows by 120-130 MiB per image, this factor gives 120 MiB.
ACTIVATION_FACTOR = 24
#: Peak of encoding one image, in units of the encoder's widest full-resolution
#: activation (first block channels x image side^2): a ResNet block holds its input, the
#: hidden state and the output being formed, plus layout copies of channels-last
#: convolutions. Measured 5.1 for SD2.1's VAE at 512 px, float32, channels-last.
ENCODER_FACTOR = 5
#: Share of the available memory the default budget takes.
DEFAULT_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class PassPlan:
    """Batches of image indices and the memory each part is expected to take (bytes)."""

    batches: list[list[int]]
    batch_size: int
    budget_bytes: int
    image_bytes: int  # activations of one image in a pass
    pass_fixed_bytes: int  # recording scratch, independent of the batch
    store_bytes: int  # queries and keys kept for every image
    maps_bytes: int  # the returned maps
    encode_bytes: int = 0  # one image through the encoder (0: every latent was cached)

    @property
    def n_passes(self) -> int:
        """Number of UNet passes."""
        return len(self.batches)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak of the UNet passes and the maps beyond the weights: one pass
        plus everything kept (what the budget bounds)."""
        return (
            self.image_bytes * self.batch_size
            + self.pass_fixed_bytes
            + self.store_bytes
            + self.maps_bytes
        )

    @property
    def extraction_peak_bytes(self) -> int:
        """Estimated peak of the whole extraction beyond the weights: encoding (one image
        at a time, before the passes) or the passes, whichever is larger."""
        return max(self.encode_bytes, self.peak_bytes)


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free memory, else the OS's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown (e.g. Windows): assume a modest laptop


def estimate_image_bytes(unet, image_size: int, dtype: torch.dtype) -> int:
    """Activation bytes of one image in one UNet pass (see `ACTIVATION_FACTOR`)."""
    latent_tokens = (image_size // 8) ** 2
    channels = int(unet.config.block_out_channels[0])
    element = torch.empty((), dtype=dtype).element_size()
    return latent_tokens * channels * element * ACTIVATION_FACTOR


def estimate_encoder_bytes(encoder, image_size: int, dtype: torch.dtype) -> int:
    """Peak bytes of encoding one image (see `ENCODER_FACTOR`); 0 if unknown."""
    config = getattr(encoder, "config", None)
    channels = getattr(config, "block_out_channels", None) or getattr(
        config, "encoder_block_out_channels", None
    )
    if not channels:
        return 0
    element = torch.empty((), dtype=dtype).element_size()
    return int(image_size) ** 2 * int(channels[0]) * element * ENCODER_FACTOR


def scratch_bytes(unet, layers: Sequence[LayerInfo], max_partners: int) -> int:
    """The two score buffers of the map computation (`capture.accumulate_attention`).

    One image's queries are scored against its own keys and its ``max_partners``
    partners' keys at once, in chunks of at most ``CHUNK_ELEMENTS`` scores.
    """
    largest = max(layer.resolution for layer in layers) ** 2
    widest = max(unet.get_submodule(layer.name).heads for layer in layers)
    return 2 * 4 * min(CHUNK_ELEMENTS, widest * largest * largest * (1 + max(0, max_partners)))


def _store_bytes_per_image(unet, layers: Sequence[LayerInfo]) -> int:
    """float32 queries and keys of one image at every chosen layer."""
    total = 0
    for layer in layers:
        channels = unet.get_submodule(layer.name).to_q.out_features
        total += 2 * layer.resolution**2 * channels * 4
    return total


def plan_passes(
    unet,
    image_size: int,
    dtype: torch.dtype,
    layers: Sequence[LayerInfo],
    n_images: int,
    n_pairs: int,
    *,
    device: torch.device,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    max_partners: int | None = None,
    encoder=None,
    keep_all: bool = True,
) -> PassPlan:
    """Split ``n_images`` into UNet passes that fit a memory budget.

    Parameters
    ----------
    unet : UNet2DConditionModel
        The model (its config sizes the estimate).
    image_size : int
        Model input side in pixels.
    dtype : torch.dtype
        Activation dtype.
    layers : sequence of LayerInfo
        Recorded layers.
    n_images, n_pairs : int
        Images, and ordered cross pairs to compute.
    device : torch.device
        Where the pass runs (for the default budget).
    batch_size : int, optional
        Images per pass; overrides the memory-based choice.
    memory_budget : int, optional
        Bytes the extraction may use beyond the weights; default half the free memory.
    max_partners : int, optional
        The most cross partners one image has; default ``min(n_pairs, n_images - 1)``,
        exact for ``pairs="all"`` and ``"reference"``.
    encoder : module, optional
        The encoder, when images were encoded for this extraction (sets
        ``encode_bytes``; the budget bounds the passes only).
    keep_all : bool
        Whether every image's queries and keys are kept until the end (maps of any
        pair); False when each pass hands its images' tokens on (the token store), so
        only one pass's are held.

    Returns
    -------
    PassPlan

    Raises
    ------
    ValueError
        ``batch_size`` below 1, or an explicit budget too small for one image per pass.
    """
    if n_images < 1:
        raise ValueError("no images to plan for; pass at least one image")
    explicit = memory_budget is not None
    budget = (
        int(memory_budget)
        if explicit
        else int(available_memory_bytes(device) * DEFAULT_BUDGET_SHARE)
    )
    image = estimate_image_bytes(unet, image_size, dtype)
    sides = sorted({layer.resolution for layer in layers})
    if max_partners is None:
        max_partners = min(n_pairs, n_images - 1)
    fixed = scratch_bytes(unet, layers, max_partners)
    per_image_store = _store_bytes_per_image(unet, layers)
    store = per_image_store * n_images if keep_all else 0
    maps = (n_images + n_pairs) * sum(side**4 for side in sides) * 4
    per_image = image if keep_all else image + per_image_store
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        size = min(int(batch_size), n_images)
    else:
        spare = budget - fixed - store - maps
        size = max(1, min(n_images, spare // per_image if spare > 0 else 1))
        if explicit and spare < per_image:
            raise ValueError(
                f"memory_budget {budget / 2**20:.0f} MiB is too small: one image per pass "
                f"needs about {(per_image + fixed + store + maps) / 2**20:.0f} MiB for "
                f"{n_images} images; raise memory_budget or process fewer images at once"
            )
    # even batches: 9 images at b=4 -> 3 + 3 + 3, not 4 + 4 + 1
    n_passes = math.ceil(n_images / size)
    per_pass = math.ceil(n_images / n_passes)
    batches = [list(range(s, min(s + per_pass, n_images))) for s in range(0, n_images, per_pass)]
    if not keep_all:
        store = per_image_store * per_pass
    encode = estimate_encoder_bytes(encoder, image_size, dtype) if encoder is not None else 0
    return PassPlan(batches, per_pass, budget, image, fixed, store, maps, encode)
