"""Head-averaged cross attention with or without the draft paper's partition normalisation.

The paper (eq. 2.3) takes the attention of mutual self-attention -- source queries over
the source's own keys *and* the target's keys, one softmax per head -- and renormalises
its "latter half", the block over the target's keys, so that each row is a distribution
over the target again. Averaged over heads, that is not the plain
``mean_h softmax(Q_s K_t^T / sqrt(d))``: each head is weighted, per source token, by the
share of its attention that goes to the target,

    A_st[i] = sum_h w_h(i) softmax_h(i) / sum_h w_h(i),
    w_h(i) = sigmoid(lse_h^t(i) - lse_h^s(i)),

with ``lse`` the log-sum-exp of the head's scores over the target's and over the source's
own keys. ``partition="separate"`` (the project's default, ``w_h = 1``) and ``"joint"``
(eq. 2.3) are the two choices; `napari_corrseg.engine.partition` computes the same in
torch inside the engine. Measured comparison: ``docs/method.md``.

numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PARTITIONS", "cross_attention", "head_average"]

#: The partition normalisations (see the module docstring).
PARTITIONS = ("separate", "joint")
# score entries per chunk of rows
_CHUNK_ENTRIES = 1 << 22


def _check(partition: str) -> bool:
    if partition not in PARTITIONS:
        raise ValueError(
            f"partition must be one of {', '.join(PARTITIONS)}, got {partition!r}; 'joint' "
            "is the paper's eq. 2.3 (softmax over both images' keys, then renormalised)"
        )
    return partition == "joint"


def _logsumexp(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0]


def head_average(cross_scores, own_scores=None, partition: str = "separate") -> np.ndarray:
    """Head-averaged attention from per-head scores (logits).

    Parameters
    ----------
    cross_scores : array_like
        ``(H, N, M)`` scores of the ``N`` query tokens over the other image's ``M`` keys.
    own_scores : array_like, optional
        ``(H, N, N')`` scores over the query image's own keys; needed for ``"joint"``.
    partition : {"separate", "joint"}

    Returns
    -------
    numpy.ndarray
        ``(N, M)`` float32, rows sum to 1.
    """
    joint = _check(partition)
    cross = np.asarray(cross_scores, dtype=np.float64)
    if cross.ndim != 3:
        raise ValueError(f"cross_scores must be (heads, N, M), got shape {cross.shape}")
    log_mass = _logsumexp(cross)  # (H, N)
    probs = np.exp(cross - log_mass[..., None])
    if not joint:
        return probs.mean(axis=0).astype(np.float32)
    if own_scores is None:
        raise ValueError("partition='joint' needs own_scores, the scores over the own keys")
    own = np.asarray(own_scores, dtype=np.float64)
    if own.shape[:2] != cross.shape[:2]:
        raise ValueError(
            f"own_scores has shape {own.shape}; its heads and rows must match {cross.shape}"
        )
    weights = 1.0 / (1.0 + np.exp(_logsumexp(own) - log_mass))  # (H, N)
    averaged = np.einsum("hn,hnm->nm", weights, probs) / weights.sum(axis=0)[:, None]
    return averaged.astype(np.float32)


def cross_attention(queries, keys, own_keys=None, partition: str = "separate") -> np.ndarray:
    """``A_ij`` from per-head queries of image ``i`` and keys of image ``j``.

    Parameters
    ----------
    queries : array_like
        ``(H, N, d)`` or ``(L, H, N, d)`` queries of image ``i``, *unscaled* (the score is
        ``Q K^T / sqrt(d)``); float16 is computed in float64.
    keys : array_like
        Keys of image ``j``, same leading shape, ``M`` tokens.
    own_keys : array_like, optional
        Keys of image ``i`` itself; needed for ``partition="joint"``.
    partition : {"separate", "joint"}

    Returns
    -------
    numpy.ndarray
        ``(N, M)`` float32, rows sum to 1: the mean over layers of the head averages.
    """
    joint = _check(partition)
    q = np.asarray(queries, dtype=np.float64)
    k = np.asarray(keys, dtype=np.float64)
    if q.ndim == 3:
        q, k = q[None], k[None]
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries {np.shape(queries)} and keys {np.shape(keys)} must be (H, N, d) or "
            "(L, H, N, d) with the same layers, heads and head size"
        )
    own = None
    if joint:
        if own_keys is None:
            raise ValueError("partition='joint' needs own_keys, the query image's own keys")
        own = np.asarray(own_keys, dtype=np.float64)
        own = own[None] if own.ndim == 3 else own
    n_layers, heads, n_rows, dim = q.shape
    scale = 1.0 / np.sqrt(dim)
    out = np.zeros((n_rows, k.shape[2]), dtype=np.float64)
    step = max(1, _CHUNK_ENTRIES // max(heads * k.shape[2], 1))
    for layer in range(n_layers):
        for start in range(0, n_rows, step):
            rows = q[layer, :, start : start + step] * scale
            cross = rows @ k[layer].transpose(0, 2, 1)
            own_scores = rows @ own[layer].transpose(0, 2, 1) if joint else None
            out[start : start + step] += head_average(cross, own_scores, partition)
    out /= n_layers
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)
