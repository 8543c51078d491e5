"""Small helpers shared by every formulation of the fusion op (lean, reference, Triton).

The weights come in three forms; :func:`as_5d` gives all of them one broadcastable 5-D view so that
each formulation is written once, and :func:`activate` applies the optional activation over the S+1
weights of each class.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
from einops import rearrange

#: adaptive (B, K, S+1, H, W), invariant (B, K, S+1), fixed (K, S+1).
WeightForm: TypeAlias = Literal["adaptive", "invariant", "fixed"]

# einops patterns that view each weight form as (B|1, K, S+1, H|1, W|1).
_AS_5D = {
    "adaptive": "b k j h w -> b k j h w",
    "invariant": "b k j -> b k j 1 1",
    "fixed": "k j -> 1 k j 1 1",
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (for gradcheck), everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_5d(weights: torch.Tensor, form: WeightForm) -> torch.Tensor:
    """View any weight form as (B|1, K, S+1, H|1, W|1) so it broadcasts against (B, K, S+1, H, W)."""
    if form == "adaptive":
        return weights
    return rearrange(weights, _AS_5D[form])


def unflatten_weights(weights: torch.Tensor, num_inputs: int) -> torch.Tensor:
    """A flat learner output (B, K*(S+1), H, W) as the adaptive form (B, K, S+1, H, W).

    Channel k*(S+1) + j is the weight of input j of class k: the order of the shared concatenation.
    A view when the layout allows it (a contiguous or channels_last learner output).
    """
    return rearrange(weights, "b (k j) h w -> b k j h w", j=num_inputs)


def activate(weights5d: torch.Tensor, activation: str | None) -> torch.Tensor:
    """Apply the optional activation over the S+1 weights of each class (dim 2 of the 5-D view)."""
    if activation == "softmax":
        return torch.softmax(weights5d, dim=2)
    return weights5d
