"""Record head-averaged self and cross self-attention beside an unchanged UNet pass.

At each chosen self-attention layer (``attn1`` of a transformer block), a
`RecordingProcessor` computes, from the layer's own query and key projections,

* ``A_ii = mean_heads softmax(Q_i K_i^T * scale)`` for every image ``i`` of the batch,
* ``A_ij = mean_heads softmax(Q_i K_j^T * scale)`` for the requested ordered pairs,

and then hands the call to the layer's original processor, so the forward pass is
exactly what it would have been. Scores and softmax are computed in float32 whatever the
model's dtype, which is what ``upcast_attention`` (SD2.1) asks for.
Queries are processed in chunks and heads are averaged at once, so memory holds one
chunk of ``heads x rows x keys`` scores plus one running ``N x N`` sum per map and
resolution; it does not grow with heads x layers x N^2. Maps of layers that share a
resolution are averaged.

Early exit: once the last chosen layer is recorded, the recorder raises `EarlyExit`
(caught by the caller) so the rest of the UNet does not run.

`AttentionRecorder` computes the maps inside the pass. `QueryKeyRecorder` (what
`Engine.extract` uses) instead keeps each image's queries and keys, and
`maps_from_store` computes the maps afterwards with the same arithmetic
(`accumulate_attention`), so images of one pair need not share a pass.

``partition="joint"`` gives the cross maps of the paper's eq. 2.3 instead (see
`napari_corrseg.engine.partition`); self maps are the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled
from .partition import check_partition, joint_average

__all__ = [
    "AttentionRecorder",
    "EarlyExit",
    "LayerInfo",
    "QueryKeyRecorder",
    "RecordingProcessor",
    "accumulate_attention",
    "maps_from_store",
    "project_query_key",
    "select_layers",
    "self_attention_layers",
]

#: Score elements per query chunk (float32): about 128 MiB of scores at a time.
CHUNK_ELEMENTS = 1 << 25

_NAME = re.compile(r"^(down_blocks|up_blocks|mid_block)\.?(\d*)\.attentions\.(\d+)\.")


class EarlyExit(Exception):  # a control-flow signal, not an error
    """Raised after the last requested layer is recorded to stop the UNet."""


@dataclass(frozen=True)
class LayerInfo:
    """One self-attention layer: its module name and token grid side."""

    name: str
    resolution: int  # grid side: the layer sees resolution x resolution tokens
    order: int  # position in the UNet's execution order


def self_attention_layers(unet, image_size: int) -> list[LayerInfo]:
    """All self-attention layers of a UNet2DConditionModel in execution order.

    The grid side follows from the block position: the latent (``image_size / 8``) is
    halved by each down block but the last, and doubled back by each up block.
    """
    latent = image_size // 8
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    found = []
    for name, module in unet.named_modules():
        if not name.endswith(".attn1") or not hasattr(module, "to_q"):
            continue
        match = _NAME.match(name)
        if match is None:
            continue
        stage, block, attention = match.group(1), match.group(2), int(match.group(3))
        if stage == "down_blocks":
            level, rank = int(block), (0, int(block))
        elif stage == "mid_block":
            level, rank = n_down - 1, (1, 0)
        else:
            level, rank = n_up - 1 - int(block), (2, int(block))
        found.append((rank, attention, name, latent // 2**level))
    found.sort()
    return [
        LayerInfo(name, resolution, order) for order, (_, _, name, resolution) in enumerate(found)
    ]


def select_layers(
    unet, image_size: int, layers: str | int | Sequence[int | str] = "auto"
) -> list[LayerInfo]:
    """Choose self-attention layers by ``"auto"``, grid side(s) or module names.

    ``"auto"`` means the decoder (up-block) layers whose grid side is ``image_size / 16``
    (32x32 at 512 px, as in the paper). Raises ValueError naming what is available.
    """
    available = self_attention_layers(unet, image_size)
    sides = sorted({layer.resolution for layer in available})
    if isinstance(layers, str) and layers == "auto":
        chosen = [
            layer
            for layer in available
            if layer.name.startswith("up_blocks") and layer.resolution == image_size // 16
        ]
    else:
        wanted = [layers] if isinstance(layers, int | str) else list(layers)
        if not wanted:
            raise ValueError("layers is empty; pass 'auto', a grid side or layer names")
        chosen = []
        for item in wanted:
            if isinstance(item, str) and not item.isdigit():
                hits = [layer for layer in available if layer.name in (item, f"{item}.attn1")]
                if not hits:
                    raise ValueError(
                        f"no self-attention layer named {item!r}; names look like "
                        f"{available[0].name!r} (see engine.layers)"
                    )
            else:
                hits = [layer for layer in available if layer.resolution == int(item)]
                if not hits:
                    raise ValueError(
                        f"no self-attention layer has a {item}x{item} grid at "
                        f"{image_size} px; available grid sides: {sides}"
                    )
            chosen.extend(hits)
    if not chosen:
        raise ValueError(f"no layer matches {layers!r}; available grid sides: {sides}")
    return sorted(set(chosen), key=lambda layer: layer.order)


class AttentionRecorder:
    """Collects running sums of head-averaged maps per resolution and ordered pair.

    Parameters
    ----------
    layers : list of LayerInfo
        Layers to record.
    n_images : int
        Batch size of the UNet pass (one entry per image).
    pairs : sequence of (int, int)
        Ordered cross pairs to record; self maps ``(i, i)`` are always recorded.
    early_exit : bool
        Raise `EarlyExit` once every layer is recorded.
    cancel : callable, optional
        Checked before each layer; True raises `napari_corrseg.errors.Cancelled`.
    on_layer : callable, optional
        Called with the fraction of layers recorded so far.
    chunk_elements : int, optional
        Score elements computed at once (default `CHUNK_ELEMENTS`); bounds memory.
    """

    #: Queries are multiplied by ``attn.scale`` when projected (the maps' formula).
    scale_queries = True

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        n_images: int,
        pairs: Sequence[tuple[int, int]] = (),
        *,
        early_exit: bool = True,
        cancel: Callable[[], bool] | None = None,
        on_layer: Callable[[float], None] | None = None,
        chunk_elements: int | None = None,
    ) -> None:
        self.layers = list(layers)
        self.n_images = n_images
        # keys of image a's queries, self first: (a, a), then (a, b) for each pair
        self.targets = {a: [a] for a in range(n_images)}
        for a, b in pairs:
            if a != b and b not in self.targets[a]:
                self.targets[a].append(b)
        self.early_exit = early_exit
        self.cancel = cancel
        self.on_layer = on_layer
        self.chunk_elements = chunk_elements or CHUNK_ELEMENTS
        self.sums: dict[int, dict[tuple[int, int], torch.Tensor]] = {}
        self.counts: dict[int, int] = {}
        self.recorded: list[str] = []
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextmanager
    def attached(self, unet) -> Iterator[AttentionRecorder]:
        """Install recording processors on the chosen layers; restore them on exit."""
        originals = {}
        try:
            for layer in self.layers:
                module = unet.get_submodule(layer.name)
                originals[layer.name] = module.processor
                module.set_processor(RecordingProcessor(module.processor, self, layer))
            yield self
        finally:
            for name, processor in originals.items():
                unet.get_submodule(name).set_processor(processor)

    def _query_key(self, attn, hidden_states: torch.Tensor, layer: LayerInfo):
        """Check for a cancel, then project this layer's per-head queries and keys."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("attention extraction was cancelled")
        query, key = project_query_key(attn, hidden_states, scale_query=self.scale_queries)
        if query.shape[0] != self.n_images:
            raise RuntimeError(
                f"layer {layer.name} saw batch {query.shape[0]}, expected {self.n_images}"
            )
        return query, key

    @torch.no_grad()
    def record(self, attn, hidden_states: torch.Tensor, layer: LayerInfo) -> None:
        """Add this layer's head-averaged maps to the running sums."""
        query, key = self._query_key(attn, hidden_states, layer)
        sums = self.sums.setdefault(layer.resolution, {})
        self._scratch = accumulate_attention(
            sums, query, key, self.targets, self.chunk_elements, self._scratch
        )
        self._layer_done(layer)

    def _layer_done(self, layer: LayerInfo) -> None:
        self.counts[layer.resolution] = self.counts.get(layer.resolution, 0) + 1
        self.recorded.append(layer.name)
        if self.on_layer is not None:
            self.on_layer(len(self.recorded) / len(self.layers))
        if self.early_exit and len(self.recorded) == len(self.layers):
            raise EarlyExit

    def result(self) -> dict[int, dict[tuple[int, int], np.ndarray]]:
        """``{grid side: {(i, j): (N, N) float32}}``, layer-averaged, rows renormalised."""
        missing = [layer.name for layer in self.layers if layer.name not in self.recorded]
        if missing:
            raise RuntimeError(f"layers never ran: {missing}")
        return finish_sums(self.sums, self.counts)


def project_query_key(
    attn, hidden_states: torch.Tensor, *, scale_query: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's float32 queries and keys, each ``(B, heads, N, head_dim)``.

    Queries are multiplied by ``attn.scale`` (``1 / sqrt(head_dim)``) unless
    ``scale_query`` is False (the token store keeps them unscaled).
    Scores and softmax are float32 whatever the model dtype: what ``upcast_attention``
    asks for, and for layers without it only more precise than the layer's own attention.
    """
    if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, N, C), as the processors do
        batch, channels = hidden_states.shape[:2]
        hidden_states = hidden_states.view(batch, channels, -1).transpose(1, 2)
    batch, n_tokens, _ = hidden_states.shape
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
    heads = attn.heads
    head_dim = query.shape[-1] // heads
    query = query.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
    key = key.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    query = query.float()
    return (query * attn.scale if scale_query else query), key.float()


Scratch = tuple[torch.Tensor, torch.Tensor] | None


def accumulate_attention(
    sums: dict[tuple[int, int], torch.Tensor],
    query: Sequence[torch.Tensor] | torch.Tensor,
    key: Sequence[torch.Tensor] | torch.Tensor,
    targets: dict[int, list[int]],
    chunk_elements: int = CHUNK_ELEMENTS,
    scratch: Scratch = None,
    partition: str = "separate",
) -> Scratch:
    """Add ``mean_heads softmax(Q_a K_b^T)`` to ``sums[(a, b)]`` for every a, b in targets.

    ``query[a]`` and ``key[b]`` are ``(heads, N, d)`` (scaled, float32). Each pair's
    softmax is over its own keys only, so a map does not depend on which other images
    share the batch. Queries go in chunks of at most ``chunk_elements`` scores; the
    returned scratch buffers are reused by the next call (fresh 100 MB tensors cost more
    than the exponentials on a CPU, through page faults). ``partition="joint"``: the
    cross maps follow eq. 2.3 (module docstring); ``targets[a]`` must start with ``a``.
    """
    joint = check_partition(partition) == "joint"
    for a, partners in targets.items():
        rows_all = query[a]
        heads, n_tokens, _ = rows_all.shape
        keys = torch.cat([key[b] for b in partners], dim=1).transpose(1, 2).contiguous()
        width = keys.shape[2]  # T * N keys: image a's own, then its pair partners'
        step = max(1, min(n_tokens, chunk_elements // (heads * width)))
        size_needed = heads * step * width
        if scratch is None or scratch[0].numel() < size_needed:
            scratch = tuple(
                torch.empty(size_needed, dtype=torch.float32, device=rows_all.device)
                for _ in range(2)
            )
        scores_buffer, probs_buffer = scratch
        for start in range(0, n_tokens, step):
            rows = rows_all[:, start : start + step]  # (heads, rows, d)
            size = heads * rows.shape[1] * width
            scores = scores_buffer[:size].view(heads, rows.shape[1], width)
            torch.bmm(rows, keys, out=scores)
            shape = (heads, rows.shape[1], len(partners), n_tokens)
            probs = probs_buffer[:size].view(shape)
            _softmax_into(scores.view(shape), probs)
            if joint and len(partners) > 1:
                averaged = joint_average(scores.view(shape), probs, partners, a)
            else:
                averaged = probs.sum(dim=0).div_(heads)  # (rows, T, N)
            for t, b in enumerate(partners):
                total = sums.get((a, b))
                if total is None:
                    total = sums[(a, b)] = torch.zeros(
                        (n_tokens, n_tokens), dtype=torch.float32, device=rows_all.device
                    )
                total[start : start + step] += averaged[:, t]
    return scratch


def finish_sums(
    sums: dict[int, dict[tuple[int, int], torch.Tensor]], counts: dict[int, int]
) -> dict[int, dict[tuple[int, int], np.ndarray]]:
    """Layer-average running sums and renormalise rows: ``{side: {(i, j): (N, N)}}``."""
    out = {}
    for resolution, maps in sums.items():
        count = counts[resolution]
        out[resolution] = {}
        for pair, total in maps.items():
            mean = (total / count).cpu().numpy().astype(np.float32)
            # float32 sums drift by ~1e-7; renormalise so rows sum to 1 exactly enough
            out[resolution][pair] = mean / mean.sum(axis=1, keepdims=True)
    return out


class QueryKeyRecorder(AttentionRecorder):
    """Keeps each image's queries and keys per layer instead of computing maps in the pass.

    Used by the collection planner: UNet passes of a few images each fill one shared
    ``store`` (``{layer name: {image index: (query, key)}}``), and `maps_from_store`
    computes the maps of any pair afterwards, whichever passes its images were in.
    A 32x32 SD2 layer keeps 5 MiB per image; a 64x64 layer 10 MiB. With
    ``scale_queries=False`` the queries are kept unscaled (what the token store holds).
    """

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        image_indices: Sequence[int],
        store: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]],
        *,
        scale_queries: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(layers, len(image_indices), (), **kwargs)
        self.image_indices = list(image_indices)
        self.store = store
        self.scale_queries = scale_queries

    @torch.no_grad()
    def record(self, attn, hidden_states: torch.Tensor, layer: LayerInfo) -> None:
        query, key = self._query_key(attn, hidden_states, layer)
        kept = self.store.setdefault(layer.name, {})
        for position, image in enumerate(self.image_indices):
            kept[image] = (query[position].contiguous(), key[position].contiguous())
        self._layer_done(layer)


def maps_from_store(
    store: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]],
    layers: Sequence[LayerInfo],
    n_images: int,
    pairs: Sequence[tuple[int, int]],
    chunk_elements: int = CHUNK_ELEMENTS,
    partition: str = "separate",
) -> dict[int, dict[tuple[int, int], np.ndarray]]:
    """Self maps of every image and cross maps of ``pairs`` from stored queries and keys.

    Each layer's entries are released once its maps are summed, so memory falls as the
    maps grow (pass a shallow copy of ``store`` to keep them). Returns
    ``{grid side: {(i, j): (N, N) float32}}`` as `AttentionRecorder.result` does.
    ``partition``: see the module docstring.
    """
    check_partition(partition)
    targets = {a: [a] for a in range(n_images)}
    for a, b in pairs:
        if a != b and b not in targets[a]:
            targets[a].append(b)
    sums: dict[int, dict[tuple[int, int], torch.Tensor]] = {}
    counts: dict[int, int] = {}
    scratch: Scratch = None
    for layer in layers:
        kept = store.pop(layer.name, None)
        if kept is None or len(kept) != n_images:
            raise RuntimeError(f"layer {layer.name} was not recorded for every image")
        query = [kept[i][0] for i in range(n_images)]
        key = [kept[i][1] for i in range(n_images)]
        del kept
        scratch = accumulate_attention(
            sums.setdefault(layer.resolution, {}),
            query,
            key,
            targets,
            chunk_elements,
            scratch,
            partition=partition,
        )
        counts[layer.resolution] = counts.get(layer.resolution, 0) + 1
    return finish_sums(sums, counts)


def _softmax_into(scores: torch.Tensor, out: torch.Tensor) -> None:
    """Softmax over the last axis written into ``out`` (no new allocation if possible)."""
    try:
        torch._softmax(scores, -1, False, out=out)
    except (AttributeError, RuntimeError, TypeError):  # private op: fall back if it changes
        out.copy_(scores.softmax(dim=-1))


class RecordingProcessor:
    """Attention processor that records maps, then calls the layer's own processor.

    Cross-attention calls (with ``encoder_hidden_states``) pass straight through.
    """

    def __init__(self, original, recorder: AttentionRecorder, layer: LayerInfo) -> None:
        self.original = original
        self.recorder = recorder
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            self.recorder.record(attn, hidden_states, self.layer)
        if temb is not None:
            kwargs["temb"] = temb
        return self.original(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )
