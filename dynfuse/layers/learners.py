"""Weight learners: the fusion weights of a head, from the Side5-w feature map (section 4.2).

Every learner is called the same way, ``learner(x)`` with the Side5-w map ``x`` (B, C, H, W), and
returns the weights in one of :func:`dynfuse.ops.dynamic_fuse`'s forms: (B, K, S+1, H, W) per location
(:class:`LocationAdaptiveLearner`), (B, K, S+1) per image (:class:`LocationInvariantLearner`) or
(K, S+1) shared by all (:class:`FixedWeights`, which reads no input).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checkpointing import run_checkpointed
from .side_norm import NormLayer, check_feature


def _conv_bn(cin: int, cout: int, norm_layer: NormLayer, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=1, bias=True), norm_layer(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LocationAdaptiveLearner(nn.Module):
    """1x1 conv-BN-ReLU, 1x1 conv-BN-ReLU, 1x1 conv-BN -> one weight set per class and location.

    Input (B, in_channels, H, W) -> weights (B, K, num_inputs, H, W), the channel ``k*num_inputs + j``
    of the last convolution being weight j of class k. The authors use in = hidden = 4K channels.
    Submodule names (conv1, conv2, conv3, each Sequential(conv, bn[, relu])) match the authors'
    ``ada_learner`` so their checkpoints map one to one.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_inputs: int = 4,
        *,
        hidden_channels: int | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        out = num_classes * num_inputs
        hidden = hidden_channels or out
        self.in_channels, self.num_classes, self.num_inputs = in_channels, num_classes, num_inputs
        self.hidden_channels = hidden
        self.conv1 = _conv_bn(in_channels, hidden, norm_layer, relu=True)
        self.conv2 = _conv_bn(hidden, hidden, norm_layer, relu=True)
        self.conv3 = _conv_bn(hidden, out, norm_layer, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature("LocationAdaptiveLearner input", x, self.in_channels)
        w = self.conv3(self.conv2(self.conv1(x)))
        b, _, h, wd = w.shape
        return w.view(b, self.num_classes, self.num_inputs, h, wd)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"num_inputs={self.num_inputs}, hidden_channels={self.hidden_channels}"
        )


class LocationInvariantLearner(nn.Module):
    """Global average pool, FC-BN-ReLU x2, FC-BN -> one weight set per class and image.

    Input (B, in_channels, H, W) -> weights (B, K, num_inputs). Built from the paper's description
    (section 4.2); the authors' code has no such learner. BatchNorm1d needs B > 1 in training mode.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_inputs: int = 4,
        *,
        hidden_features: int | None = None,
        norm_layer_1d: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        bn = norm_layer_1d or nn.BatchNorm1d
        out = num_classes * num_inputs
        hidden = hidden_features or out
        self.in_channels, self.num_classes, self.num_inputs = in_channels, num_classes, num_inputs
        self.hidden_features = hidden
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Sequential(nn.Linear(in_channels, hidden), bn(hidden), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), bn(hidden), nn.ReLU(inplace=True))
        self.fc3 = nn.Sequential(nn.Linear(hidden, out), bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature("LocationInvariantLearner input", x, self.in_channels)
        v = self.pool(x).flatten(1)
        w = self.fc3(self.fc2(self.fc1(v)))
        return w.view(x.shape[0], self.num_classes, self.num_inputs)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"num_inputs={self.num_inputs}, hidden_features={self.hidden_features}"
        )


class CheckpointedAdaptiveLearner(LocationAdaptiveLearner):
    """A :class:`LocationAdaptiveLearner` whose three conv-BN(-ReLU) blocks are recomputed in backward.

    At full resolution the learner keeps about six (B, K*(S+1), H, W) activations for backward; with
    checkpointing only its input and output stay alive. Same parameters and state-dict keys as the
    plain learner; models switch an existing learner's class to this one (and back).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return run_checkpointed(super().forward, self, x)
        return super().forward(x)


class FixedWeights(nn.Module):
    """Learned constants: one weight per class and fused input, shared by all images and locations.

    The "learner" of CASENet's fixed fusion (and of Table 1's "+normalizer" row). ``forward(x)``
    ignores ``x`` (heads pass it so that every learner is called alike) and returns the (K, S+1)
    weights, a view of ``weight``. ``weight`` keeps the (K, S+1, 1, 1) shape of the grouped 1x1
    convolution it replaces, so the authors' ``fuse.weight`` loads as it is; it is initialised like
    that convolution.
    """

    def __init__(self, num_classes: int, num_inputs: int = 4) -> None:
        super().__init__()
        self.num_classes, self.num_inputs = int(num_classes), int(num_inputs)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.num_inputs, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Conv2d's default: kaiming_uniform_(a=sqrt(5)) over the fan-in of one group (S+1 inputs).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.weight.view(self.num_classes, self.num_inputs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_inputs={self.num_inputs}"
