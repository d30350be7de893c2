"""Partition normalisation of cross maps: the draft paper's eq. 2.3, in torch.

``"separate"``: each cross map's softmax runs over the other image's keys alone (the
project's default, and the formula the token store relies on). ``"joint"``: per head, one
softmax over the query image's own keys and the other image's keys (mutual self-attention
/ KV injection), the other image's block kept, averaged over heads and each row
renormalised over that block -- eq. 2.3 on the "latter half" of the joint attention.
Used by `napari_corrseg.engine.capture.accumulate_attention`; the numpy twin is
`napari_corrseg.core.partition`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PARTITIONS", "check_partition", "joint_average"]

#: Partition normalisations of the cross maps.
PARTITIONS = ("separate", "joint")


def check_partition(partition: str) -> str:
    """Return ``partition`` if it is one of `PARTITIONS`; raise ValueError otherwise."""
    if partition not in PARTITIONS:
        raise ValueError(
            f"partition must be one of {', '.join(PARTITIONS)}, got {partition!r}; 'joint' "
            "is the paper's eq. 2.3 (softmax over both images' keys, then renormalised)"
        )
    return partition


def joint_average(
    scores: torch.Tensor, probs: torch.Tensor, partners: Sequence[int], own: int
) -> torch.Tensor:
    """Head averages ``(rows, T, N)`` with eq. 2.3 for the cross blocks (block 0 = own).

    Per head and row, the joint softmax over [own keys, partner keys] puts the share
    ``sigmoid(lse_partner - lse_own)`` on the partner block; renormalising the head
    average over that block weights each head's separate softmax by that share.
    """
    if partners[0] != own:
        raise ValueError("joint partition needs the query image's own keys first")
    log_mass = torch.logsumexp(scores, dim=-1)  # (heads, rows, T)
    weights = torch.sigmoid(log_mass[:, :, 1:] - log_mass[:, :, :1])  # (heads, rows, T-1)
    averaged = torch.empty(probs.shape[1:], dtype=probs.dtype, device=probs.device)
    averaged[:, 0] = probs[:, :, 0].sum(dim=0).div_(probs.shape[0])
    weighted = (probs[:, :, 1:] * weights[..., None]).sum(dim=0)  # (rows, T-1, N)
    averaged[:, 1:] = weighted / weights.sum(dim=0)[..., None]
    return averaged
