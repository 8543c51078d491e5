"""Fusion modules over :func:`dynfuse.ops.dynamic_fuse`."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import dynamic_fuse
from ..ops.validation import check_activation, check_backend


def _fuse(
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    activation: str | None,
    backend: str,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    fused = dynamic_fuse(side5, sides, weights, activation=activation, backend=backend)
    if bias is not None:
        fused = fused + bias.to(fused.dtype)[:, None, None]
    return fused


def _init_bias(bias: torch.Tensor, num_inputs: int) -> None:
    # Conv2d's default bias of the grouped Conv2d(K*(S+1), K, 1, groups=K): fan-in S+1 per group.
    bound = 1.0 / math.sqrt(num_inputs)
    nn.init.uniform_(bias, -bound, bound)


class DynamicFusion(nn.Module):
    """Module form of :func:`dynamic_fuse`, with an optional per-class bias.

    forward(side5 (B, K, H, W), sides (B, S, H, W), weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1))
    -> (B, K, H, W) in side5's dtype.

    Args:
        activation: None or "softmax" over the S+1 weights.
        backend: see :func:`dynamic_fuse`.
        num_classes: K, the number of classes (the size of the bias).
        bias: with ``bias=True`` a learned (K,) ``bias`` is added to each class's fused map
            (CASENet's fusion is a grouped 1x1 convolution with a bias; the DFF fusion has none).
            ``num_inputs`` (S+1) only sets the bias's initialisation, the grouped convolution's.
    """

    def __init__(
        self,
        *,
        activation: str | None = None,
        backend: str = "auto",
        num_classes: int | None = None,
        bias: bool = False,
        num_inputs: int = 4,
    ) -> None:
        super().__init__()
        self.activation = check_activation(activation)
        self.backend = check_backend(backend)
        self.bias: nn.Parameter | None = None
        if bias:
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
                raise ValueError(f"a fusion bias needs num_classes, a positive int; got {num_classes!r}")
            self.bias = nn.Parameter(torch.empty(num_classes))
            _init_bias(self.bias, num_inputs)

    def forward(self, side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _fuse(side5, sides, weights, self.activation, self.backend, self.bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}, bias={self.bias is not None}"


class FixedFusion(nn.Module):
    """CASENet's fixed fusion as one standalone layer: a grouped 1x1 convolution over the shared
    concatenation, computed by :func:`dynamic_fuse` without building the concatenation.

    Learns one weight per class and input, shared by all images and locations, plus a bias per class.
    ``weight`` has the grouped convolution's shape (K, S+1, 1, 1), so the authors' ``fuse.weight`` /
    ``fuse.bias`` load directly. forward(side5 (B, K, H, W), sides (B, S, H, W)) -> (B, K, H, W).
    (The heads build the same from their parts: a :class:`~dynfuse.layers.FixedWeights`
    learner and a :class:`DynamicFusion` with a bias.)
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
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            _init_bias(self.bias, self.num_inputs)

    @property
    def fusion_weights(self) -> torch.Tensor:
        """The (K, S+1) weights in the op's fixed form."""
        return self.weight.view(self.num_classes, self.num_inputs)

    def forward(self, side5: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        w = self.fusion_weights.to(side5.dtype)
        return _fuse(side5, sides, w, self.activation, self.backend, self.bias)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_inputs={self.num_inputs}, "
            f"bias={self.bias is not None}, activation={self.activation!r}, backend={self.backend!r}"
        )
