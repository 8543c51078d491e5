"""Shared concatenation of the class maps with the shared low-level maps (Eq. 1-2)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.reference import shared_concat


class SharedConcat(nn.Module):
    """(side5 (B, K, H, W), sides (B, S, H, W)) -> (B, K*(S+1), H, W).

    Channel ``k*(S+1) + j`` holds side5[:, k] for j = 0 and sides[:, j-1] for j >= 1, the order of the
    paper and of the authors' code. The fusion op never needs this tensor; it is here for users who
    want the literal concatenation (CASENet-style grouped convolutions, visualisation).
    """

    def forward(self, side5: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        for name, t in (("side5", side5), ("sides", sides)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got {shape}")
        if sides.shape[0] != side5.shape[0] or sides.shape[2:] != side5.shape[2:]:
            raise ValueError(
                f"sides {tuple(sides.shape)} must match side5 {tuple(side5.shape)} in batch and size"
            )
        return shared_concat(side5, sides)

    def extra_repr(self) -> str:
        return "order=(side5_k, side_1, ..., side_S)"
