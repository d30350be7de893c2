"""Several map recipes from ONE UNet pass: the paper's open choices, side by side.

The draft paper leaves two choices open that change the maps but not the model run:

* **layers**: ``"middle"`` -- one middle decoder layer at ``image_size / 16`` (32x32 at
  512 px, the paper's "middle layer ... N = 1024"); ``"average"`` -- every decoder layer
  at that grid, averaged (the project's default, ``layers="auto"``); ``"coarse+average"``
  -- those plus the decoder layers at ``image_size / 32`` (16x16), aggregated onto the
  finer grid (DiffSeg's recipe);
* **partition**: ``"separate"`` or ``"joint"`` (eq. 2.3, `napari_corrseg.engine.partition`).

`extract_variants` runs the UNet once over the union of the layers, keeps every image's
queries and keys, and forms the maps of each requested recipe from them, so a sweep
costs one forward pass per image set, not one per recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.maps import AttentionMaps, ImageGeometry
from .capture import LayerInfo, QueryKeyRecorder, maps_from_store
from .extract import Engine, _check_pairs, _combine_resolutions
from .partition import PARTITIONS, check_partition
from .planner import plan_passes

__all__ = ["ALL_VARIANTS", "LAYER_CHOICES", "extract_variants", "layer_choice"]

#: Names of the layer recipes (module docstring).
LAYER_CHOICES = ("middle", "average", "coarse+average")


def layer_choice(engine, name: str) -> list[LayerInfo]:
    """The layers of one recipe of `LAYER_CHOICES` on ``engine``'s model."""
    side = engine.image_size // 16
    decoder = [layer for layer in engine.layers if layer.name.startswith("up_blocks")]
    fine = [layer for layer in decoder if layer.resolution == side]
    coarse = [layer for layer in decoder if layer.resolution == side // 2]
    if not fine:
        raise ValueError(f"the model has no decoder self-attention layer at {side}x{side}")
    if name == "middle":
        return [fine[len(fine) // 2]]
    if name == "average":
        return fine
    if name == "coarse+average":
        if not coarse:
            raise ValueError(f"the model has no decoder layer at {side // 2}x{side // 2}")
        return sorted(coarse + fine, key=lambda layer: layer.order)
    raise ValueError(f"unknown layer choice {name!r}; choose one of {', '.join(LAYER_CHOICES)}")


@torch.inference_mode()
def extract_variants(
    engine,
    images: Sequence,
    variants: Sequence[tuple[str, str]],
    *,
    timestep: int = 261,
    seed: int = 0,
    pairs="all",
) -> dict[tuple[str, str], AttentionMaps]:
    """Maps of every ``(layer choice, partition)`` recipe from one UNet pass.

    Parameters
    ----------
    engine : Engine
        A loaded engine (or `LazyEngine`).
    images : sequence of numpy.ndarray
        The images (a pair, usually).
    variants : sequence of (str, str)
        ``(layer choice, partition)`` pairs, from `LAYER_CHOICES` x ``PARTITIONS``.
    timestep, seed : int
        As in `Engine.extract`.
    pairs : "all" or sequence of (int, int)
        Cross pairs to compute.

    Returns
    -------
    dict
        ``{(layer choice, partition): AttentionMaps}``.
    """
    if not isinstance(engine, Engine):  # a LazyEngine: the model is needed now
        engine = engine.load()
    images = list(images)
    chosen = {name: layer_choice(engine, name) for name, _ in variants}
    for _, partition in variants:
        check_partition(partition)
    union = {layer for layers in chosen.values() for layer in layers}
    union = sorted(union, key=lambda layer: layer.order)
    pair_list = _check_pairs(pairs, len(images))
    engine._check_timestep(timestep)
    latents, geometries = engine.encode(images)
    plan = plan_passes(
        engine.unet,
        engine.image_size,
        engine.dtype,
        union,
        len(images),
        len({p for p in pair_list if p[0] != p[1]}),
        device=engine.device,
        batch_size=getattr(engine, "batch_size", None),
        memory_budget=getattr(engine, "memory_budget", None),
    )
    store: dict = {}
    for batch in plan.batches:
        noisy = engine.add_noise(latents[batch[0] : batch[-1] + 1], timestep, seed)
        recorder = QueryKeyRecorder(union, batch, store)
        engine.recorded_pass(noisy, timestep, recorder)
    out = {}
    for name, partition in variants:
        layers = chosen[name]
        kept = {layer.name: dict(store[layer.name]) for layer in layers}  # store stays whole
        per_side = maps_from_store(kept, layers, len(images), pair_list, partition=partition)
        grid, maps = _combine_resolutions(per_side)
        settings = {
            "model": dict(engine.identity),
            "layers": [layer.name for layer in layers],
            "resolutions": sorted(per_side),
            "timestep": int(timestep),
            "seed": int(seed),
            "image_size": engine.image_size,
            "prompt": "",
            "partition": partition,
            "layer_choice": name,
        }
        placed = [ImageGeometry(g.image_shape, grid) for g in geometries]
        out[(name, partition)] = AttentionMaps(grid, placed, maps, settings)
    return out


#: Every recipe of the sweep: each layer choice with each partition.
ALL_VARIANTS = [(name, partition) for name in LAYER_CHOICES for partition in PARTITIONS]
