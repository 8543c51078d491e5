"""Fusion modules over :func:`dynfuse.ops.dynamic_fuse`."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import dynamic_fuse
from ..ops.validation import check_activation, check_backend


class DynamicFusion(nn.Module):
    """Module form of :func:`dynamic_fuse` (no parameters).

    forward(side5 (B, K, H, W), sides (B, S, H, W), weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1))
    -> (B, K, H, W) in side5's dtype.
    """

    def __init__(self, *, activation: str | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.activation = check_activation(activation)
        self.backend = check_backend(backend)

    def forward(self, side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return dynamic_fuse(side5, sides, weights, activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"


class FixedFusion(nn.Module):
    """CASENet's fixed fusion: a grouped 1x1 convolution over the shared concatenation.

    Learns one weight per class and input, shared by all images and locations, plus a bias per class.
    ``weight`` has the grouped convolution's shape (K, S+1, 1, 1), so the authors' ``fuse.weight`` /
    ``fuse.bias`` load directly. forward(side5 (B, K, H, W), sides (B, S, H, W)) -> (B, K, H, W).
    """

    def __init__(
        self,
        num_classes: int,
        num_inputs: int = 4,
        *,
        bias: bool = True,
        activation: str | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes, self.num_inputs = num_classes, num_inputs
        self.activation = check_activation(activation)
        self.backend = check_backend(backend)
        self.weight = nn.Parameter(torch.empty(num_classes, num_inputs, 1, 1))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as the grouped Conv2d(K*(S+1), K, 1, groups=K) it replaces.
        conv = nn.Conv2d(self.num_classes * self.num_inputs, self.num_classes, 1, groups=self.num_classes)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if self.bias is not None:
                self.bias.copy_(conv.bias)

    @property
    def fusion_weights(self) -> torch.Tensor:
        """The (K, S+1) weights in the op's fixed form."""
        return self.weight.view(self.num_classes, self.num_inputs)

    def forward(self, side5: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        w = self.fusion_weights.to(side5.dtype)
        fused = dynamic_fuse(side5, sides, w, activation=self.activation, backend=self.backend)
        if self.bias is not None:
            fused = fused + self.bias.to(fused.dtype)[:, None, None]
        return fused

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_inputs={self.num_inputs}, "
            f"bias={self.bias is not None}, activation={self.activation!r}, backend={self.backend!r}"
        )
