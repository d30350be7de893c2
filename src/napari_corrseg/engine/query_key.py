"""Per-image queries and keys for the token store, and the torch attention backend.

`QueryKeyMixin` gives `napari_corrseg.engine.extract.Engine` the collection form of
extraction: every image goes through the UNet once (passes planned to fit memory,
stopping after the last chosen layer) and comes back as its UNSCALED per-head queries
and keys ``(L, H, N, d)`` with its geometry, instead of maps. `TorchAttention` turns a
pair of them back into ``A_ij = mean over layers and heads of softmax(Q_i K_j^T /
sqrt(d))`` with exactly the arithmetic `Engine.extract` uses
(`napari_corrseg.engine.capture.accumulate_attention` then `finish_sums`: float32,
chunked), on the engine's device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..core.images import prepare_image
from ..core.maps import AttentionMaps, ImageGeometry
from ..errors import Cancelled, InputImageError
from .capture import (
    CHUNK_ELEMENTS,
    LayerInfo,
    QueryKeyRecorder,
    accumulate_attention,
    finish_sums,
    select_layers,
)
from .planner import plan_passes

__all__ = ["QueryKeyMixin", "TorchAttention"]

QueryKey = tuple[np.ndarray, np.ndarray, ImageGeometry]


class TorchAttention:
    """``backend(queries_i, keys_j) -> (N, N)`` float32 numpy, computed with torch.

    Parameters
    ----------
    device : torch.device or str
        Where the scores are computed.
    chunk_elements : int
        Score elements computed at once (bounds memory, as in the engine).

    Notes
    -----
    ``queries_i`` and ``keys_j`` are ``(H, N, d)`` or ``(L, H, N, d)`` arrays (float16
    or float32, numpy or anything ``np.asarray`` takes), queries UNSCALED. Each layer's
    queries are cast to float32 and multiplied by ``d ** -0.5`` (the layer's
    ``attn.scale``), heads are averaged per layer, layers averaged and rows renormalised:
    with float32 inputs the result is the map `Engine.extract` returns. Thread-safe.
    """

    def __init__(self, device: torch.device | str = "cpu", chunk_elements: int = CHUNK_ELEMENTS):
        self.device = torch.device(device)
        self.chunk_elements = int(chunk_elements)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TorchAttention(device={str(self.device)!r})"

    def __reduce__(self):
        return (type(self), (str(self.device), self.chunk_elements))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(array), device=self.device).float()

    @torch.inference_mode()
    def __call__(self, queries_i: Any, keys_j: Any) -> np.ndarray:
        queries, keys = np.asarray(queries_i), np.asarray(keys_j)
        if queries.ndim == 3:
            queries, keys = queries[None], keys[None]
        if queries.ndim != 4 or keys.ndim != 4 or queries.shape[::3] != keys.shape[::3]:
            raise ValueError(
                f"queries and keys must be (H, N, d) or (L, H, N, d) with the same L and d, "
                f"got {queries.shape} and {keys.shape}"
            )
        scale = queries.shape[-1] ** -0.5  # diffusers: attn.scale = dim_head ** -0.5
        sums: dict[tuple[int, int], torch.Tensor] = {}
        scratch = getattr(self._local, "scratch", None)
        for layer in range(queries.shape[0]):
            query = self._tensor(queries[layer]) * scale
            key = self._tensor(keys[layer])
            scratch = accumulate_attention(
                sums, {0: query}, {1: key}, {0: [1]}, self.chunk_elements, scratch
            )
        self._local.scratch = scratch
        return finish_sums({0: sums}, {0: queries.shape[0]})[0][(0, 1)]


class QueryKeyMixin:
    """The collection methods of `napari_corrseg.engine.extract.Engine` (see there)."""

    unet: Any
    image_size: int
    device: torch.device
    dtype: torch.dtype
    batch_size: int | None
    memory_budget: int | None
    _lock: threading.Lock

    @property
    def attention_backend(self) -> TorchAttention:
        """Torch backend for `AttentionMaps.from_query_key` on this engine's device."""
        backend = self.__dict__.get("_attention_backend")
        if backend is None:
            backend = self.__dict__["_attention_backend"] = TorchAttention(self.device)
        return backend

    def query_key_layers(
        self, layers: str | int | Sequence[int | str] = "auto"
    ) -> list[LayerInfo]:
        """The chosen layers, checked to share one grid side, head count and head size.

        Raises
        ------
        ValueError
            Layers of several grid sides or head shapes (they cannot be stacked).
        """
        chosen = select_layers(self.unet, self.image_size, layers)
        sides = sorted({layer.resolution for layer in chosen})
        if len(sides) > 1:
            raise ValueError(
                f"layers {layers!r} span grid sides {sides}; a collection's token store "
                "holds layers of one grid side: pick 'auto' or one side such as "
                f"{self.image_size // 16}"
            )
        shapes = {self._head_shape(layer) for layer in chosen}
        if len(shapes) > 1:
            raise ValueError(f"layers {layers!r} have different head shapes {sorted(shapes)}")
        return chosen

    def _head_shape(self, layer: LayerInfo) -> tuple[int, int]:
        attn = self.unet.get_submodule(layer.name)
        return int(attn.heads), int(attn.to_q.out_features) // int(attn.heads)

    def query_key_shape(self, layers: str | int | Sequence[int | str] = "auto") -> tuple:
        """``(L, H, N, d)`` of one image's queries (and keys) at these layers."""
        chosen = self.query_key_layers(layers)
        heads, head_dim = self._head_shape(chosen[0])
        return (len(chosen), heads, chosen[0].resolution ** 2, head_dim)

    def extract_query_key(
        self,
        images: Sequence[np.ndarray],
        *,
        layers: str | int | Sequence[int | str] = "auto",
        timestep: int = 261,
        seed: int = 0,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        progress: Callable[[str, float], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[QueryKey]:
        """Each image's UNSCALED queries and keys ``(L, H, N, d)`` and its geometry.

        Every image goes through the UNet once, in passes of at most ``batch_size``
        images, stopping after the last chosen layer. Default: one image per pass on the
        CPU, where batching gains nothing (``benchmarks/results/throughput.md``) and an
        image's tokens then never depend on which images shared its pass (CPU
        convolutions round differently with the batch), so an interrupted and resumed
        run stores exactly what an uninterrupted one would; on a GPU the planner's
        choice from the memory budget. Maps formed from the result with
        `attention_backend` equal those of `extract` (see `TorchAttention`).

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Images as napari holds them; sizes may differ.
        layers : "auto", int, or sequence of int or str
            As for `extract`, but of one grid side.
        timestep, seed : int
            Noise timestep and seed, as for `extract`.
        batch_size, memory_budget : int, optional
            As for `extract` (``batch_size`` default above); the result does not depend
            on them beyond float rounding.
        progress : callable, optional
            ``progress(stage, fraction)`` with stages "encode" and "forward".
        cancel : callable, optional
            Polled between images and layers; True raises `Cancelled`.

        Returns
        -------
        list of (queries, keys, geometry)
            float32 numpy ``(L, H, N, d)`` on the CPU; geometry on the layers' grid.
        """
        out: list[QueryKey | None] = [None] * len(_image_list(images))
        for index, queries, keys, geometry in self.iter_query_key(
            images,
            layers=layers,
            timestep=timestep,
            seed=seed,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=progress,
            cancel=cancel,
        ):
            out[index] = (queries, keys, geometry)
        return out  # type: ignore[return-value]

    def extract_lazy(
        self,
        images: Sequence[np.ndarray],
        *,
        layers: str | int | Sequence[int | str] = "auto",
        timestep: int = 261,
        seed: int = 0,
        batch_size: int | None = None,
        cache_items: int = 16,
        progress: Callable[[str, float], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> AttentionMaps:
        """A collection's attention maps in their lazy form: each image through the UNet
        once, its queries and keys kept (float32, in memory), every self or cross map
        formed when asked (`AttentionMaps.from_query_key` with `attention_backend`).

        What `extract` gives for the same layers, for any number of images, without
        forming ``n^2`` maps: use it for collections, `extract` for a pair or a few
        images, and a `napari_corrseg.collection.store.TokenStore` (``store.maps(keys)``)
        for collections too large for memory (~16 MB per image at 512 px) or worth
        keeping between sessions.

        Parameters
        ----------
        images, layers, timestep, seed, batch_size, progress, cancel
            As for `extract_query_key`.
        cache_items : int
            Maps kept after they are formed (least recently used dropped first).

        Returns
        -------
        AttentionMaps
            Lazy (``is_lazy``); ``settings`` as `extract` records them.
        """
        extracted = self.extract_query_key(
            images,
            layers=layers,
            timestep=timestep,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            cancel=cancel,
        )
        chosen = self.query_key_layers(layers)
        geometries = [geometry for _, _, geometry in extracted]
        settings = {
            "model": dict(self.identity),
            "layers": [layer.name for layer in chosen],
            "resolutions": [chosen[0].resolution],
            "timestep": int(timestep),
            "seed": int(seed),
            "image_size": self.image_size,
            "prompt": "",
        }
        return AttentionMaps.from_query_key(
            [queries for queries, _, _ in extracted],
            [keys for _, keys, _ in extracted],
            geometries[0].grid,
            geometries=geometries,
            settings=settings,
            backend=self.attention_backend,
            cache_items=cache_items,
        )

    @torch.inference_mode()
    def iter_query_key(
        self,
        images: Sequence[np.ndarray],
        *,
        layers: str | int | Sequence[int | str] = "auto",
        timestep: int = 261,
        seed: int = 0,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        progress: Callable[[str, float], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, ImageGeometry]]:
        """`extract_query_key` as a generator: ``(index, queries, keys, geometry)`` per
        image, as soon as its pass is done (so a caller can store each at once)."""
        images = _image_list(images)
        if not images:
            raise InputImageError("no images given; pass a list of at least one image")
        chosen = self.query_key_layers(layers)
        self._check_timestep(timestep)
        prepared = [prepare_image(image, name=f"image {i}") for i, image in enumerate(images)]
        if batch_size is None:
            batch_size = self.batch_size or (1 if self.device.type == "cpu" else None)
        plan = plan_passes(
            self.unet,
            self.image_size,
            self.dtype,
            chosen,
            len(images),
            0,
            device=self.device,
            batch_size=batch_size,
            memory_budget=memory_budget if memory_budget is not None else self.memory_budget,
            keep_all=False,
        )
        self.last_plan = plan
        side = chosen[0].resolution
        n_images = len(images)
        for batch in plan.batches:
            if cancel is not None and cancel():
                raise Cancelled("extraction was cancelled")
            latents = []
            for position, index in enumerate(batch):
                latents.append(self.encode_prepared(prepared[index]))
                if progress is not None:
                    progress("encode", (batch[0] + position + 1) / n_images)
            noisy = self.add_noise(torch.cat(latents), timestep, seed)
            kept: dict = {}
            recorder = QueryKeyRecorder(
                chosen, list(range(len(batch))), kept, scale_queries=False, cancel=cancel
            )
            self.recorded_pass(noisy, timestep, recorder)
            del noisy, latents
            missing = [layer.name for layer in chosen if layer.name not in kept]
            if missing:
                raise RuntimeError(f"layers never ran: {missing}")
            for position, index in enumerate(batch):
                queries = np.stack([_numpy(kept[layer.name][position][0]) for layer in chosen])
                keys = np.stack([_numpy(kept[layer.name][position][1]) for layer in chosen])
                geometry = ImageGeometry(prepared[index].shape[:2], (side, side))
                if progress is not None:
                    progress("forward", (index + 1) / n_images)
                yield index, queries, keys, geometry
            kept.clear()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def _image_list(images) -> list:
    if isinstance(images, np.ndarray) and (
        images.ndim == 2 or (images.ndim == 3 and images.shape[-1] <= 4)
    ):
        return [images]
    return list(images)
