"""Plain-PyTorch formulations of the fusion op that build the shared concatenation.

These are the oracle the fast paths are tested against and the baselines they are benchmarked
against. They materialise the (B, K*(S+1), H, W) concatenation and the product, exactly as Eq. (1)-(4)
of the paper read literally.
"""

from __future__ import annotations

import torch

from .utils import WeightForm, activate, as_5d, compute_dtype

__all__ = ["activate", "authors_fuse", "reference_fuse", "shared_concat"]


def shared_concat(side5: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """Shared concatenation of Eq. (1)-(2).

    side5 (B, K, H, W) and sides (B, S, H, W) -> (B, K*(S+1), H, W), where channel k*(S+1) + j holds
    side5[:, k] for j = 0 and sides[:, j-1] for j >= 1; dtype of the inputs (promoted if they differ).
    """
    b, k, h, w = side5.shape
    s = sides.shape[1]
    dtype = torch.promote_types(side5.dtype, sides.dtype)
    grouped = torch.cat(
        [side5.unsqueeze(2).to(dtype), sides.unsqueeze(1).expand(b, k, s, h, w).to(dtype)], dim=2
    )
    return grouped.reshape(b, k * (s + 1), h, w)


def reference_fuse(
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    form: WeightForm,
    activation: str | None,
) -> torch.Tensor:
    """The literal shared concatenation, element-wise product and category-wise sum.

    Returns (B, K, H, W) in side5's dtype; computed in float32 (float64 for float64 inputs).
    """
    ct = compute_dtype(side5.dtype)
    b, k, h, w = side5.shape
    s = sides.shape[1]
    concat = shared_concat(side5.to(ct), sides.to(ct)).view(b, k, s + 1, h, w)
    coeffs = activate(as_5d(weights, form).to(ct), activation)
    return (concat * coeffs).sum(dim=2).to(side5.dtype)


def authors_fuse(
    side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor, activation: str | None = None
) -> torch.Tensor:
    """The authors' formulation (Lavender105/DFF): a growing ``torch.cat`` over classes.

    Kept as a benchmark peer and a test oracle, not as a backend: it copies the concatenation once per
    class (O(K^2) copies) and materialises the concat and the product. side5 (B, K, H, W), sides
    (B, S, H, W), weights in any of the three forms; returns (B, K, H, W) in the inputs' dtype.
    """
    b, k, h, w = side5.shape
    s = sides.shape[1]
    forms: dict[int, WeightForm] = {5: "adaptive", 3: "invariant", 2: "fixed"}
    form = forms[weights.dim()]
    fuse = torch.cat((side5[:, 0:1], sides), 1)
    for i in range(1, k):
        fuse = torch.cat((fuse, side5[:, i : i + 1], sides), 1)
    fuse = fuse.view(b, k, s + 1, h, w)
    coeffs = activate(as_5d(weights, form), activation)
    return torch.sum(torch.mul(fuse, coeffs), 2)
