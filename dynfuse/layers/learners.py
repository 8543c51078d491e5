"""Adaptive weight learners: predict fusion weights from the Side5-w feature map (section 4.2)."""

from __future__ import annotations

import torch
from torch import nn

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
