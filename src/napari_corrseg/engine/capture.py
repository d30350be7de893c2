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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled

__all__ = [
    "AttentionRecorder",
    "EarlyExit",
    "LayerInfo",
    "RecordingProcessor",
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

    @torch.no_grad()
    def record(self, attn, hidden_states: torch.Tensor, layer: LayerInfo) -> None:
        """Add this layer's head-averaged maps to the running sums."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("attention extraction was cancelled")
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, N, C), as the processors do
            batch, channels = hidden_states.shape[:2]
            hidden_states = hidden_states.view(batch, channels, -1).transpose(1, 2)
        batch, n_tokens, _ = hidden_states.shape
        if batch != self.n_images:
            raise RuntimeError(f"layer {layer.name} saw batch {batch}, expected {self.n_images}")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        query = query.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
        key = key.view(batch, n_tokens, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        # float32 scores whatever the model dtype: what upcast_attention asks for, and for
        # layers without it only more precise than the layer's own attention
        query = query.float() * attn.scale
        key = key.float()
        sums = self.sums.setdefault(layer.resolution, {})
        for a, targets in self.targets.items():
            keys = torch.cat([key[b] for b in targets], dim=1).transpose(1, 2).contiguous()
            width = keys.shape[2]  # T * N keys: image a's own, then its pair partners'
            step = max(1, min(n_tokens, self.chunk_elements // (heads * width)))
            scores_buffer, probs_buffer = self._buffers(heads * step * width, query.device)
            for start in range(0, n_tokens, step):
                rows = query[a, :, start : start + step]  # (heads, rows, d)
                size = heads * rows.shape[1] * width
                scores = scores_buffer[:size].view(heads, rows.shape[1], width)
                torch.bmm(rows, keys, out=scores)
                shape = (heads, rows.shape[1], len(targets), n_tokens)
                probs = probs_buffer[:size].view(shape)
                _softmax_into(scores.view(shape), probs)
                averaged = probs.sum(dim=0).div_(heads)  # (rows, T, N)
                for t, b in enumerate(targets):
                    total = sums.get((a, b))
                    if total is None:
                        total = sums[(a, b)] = torch.zeros(
                            (n_tokens, n_tokens), dtype=torch.float32, device=query.device
                        )
                    total[start : start + step] += averaged[:, t]
        self.counts[layer.resolution] = self.counts.get(layer.resolution, 0) + 1
        self.recorded.append(layer.name)
        if self.on_layer is not None:
            self.on_layer(len(self.recorded) / len(self.layers))
        if self.early_exit and len(self.recorded) == len(self.layers):
            raise EarlyExit

    def _buffers(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Reused flat float32 buffers for one chunk of scores and of probabilities.

        Filling fresh 100 MB tensors costs more than the exponentials on a CPU (page
        faults), so the buffers live as long as the recorder.
        """
        if self._scratch is None or self._scratch[0].numel() < size:
            self._scratch = tuple(
                torch.empty(size, dtype=torch.float32, device=device) for _ in range(2)
            )
        return self._scratch

    def result(self) -> dict[int, dict[tuple[int, int], np.ndarray]]:
        """``{grid side: {(i, j): (N, N) float32}}``, layer-averaged, rows renormalised."""
        missing = [layer.name for layer in self.layers if layer.name not in self.recorded]
        if missing:
            raise RuntimeError(f"layers never ran: {missing}")
        out = {}
        for resolution, maps in self.sums.items():
            count = self.counts[resolution]
            out[resolution] = {}
            for pair, total in maps.items():
                mean = (total / count).cpu().numpy().astype(np.float32)
                # float32 sums drift by ~1e-7; renormalise so rows sum to 1 exactly enough
                out[resolution][pair] = mean / mean.sum(axis=1, keepdims=True)
        return out


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
