"""The CASENet-style dilated ResNet used by the DFF authors (Lavender105/DFF, PyTorch-Encoding).

Topology (checked against the authors' ``encoding/dilated/resnet.py``): a 7x7 stem convolution with
stride 1 (not 2), BN, ReLU, a 3x3/2 max-pool, then four stages with strides 1, 2, 2, 1 and *every*
3x3 convolution of a stage dilated by 2, 2, 2, 4 (padding = dilation), the stride sitting on the 3x3
convolution of the first block and on its 1x1 projection shortcut. Output stride is 8.

Features returned by ``forward``: ``[c1, c2, c3, c5]`` with c1 = relu(bn1(conv1 x)) (stride 1),
c2 = layer1 (stride 2), c3 = layer2 (stride 4), c5 = layer4 (stride 8). layer3 (c4) is computed but
not returned, as in the paper. Parameter names are torchvision's, so its ImageNet files load
directly (``fc.*`` is ignored: there is no classifier here).

Spatial sizes for an (H, W) input: c1 (H, W), c2 ceil(H/2), c3 ceil(H/4), c5 ceil(H/8) -- any size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..layers.checkpointing import run_checkpointed
from .feature_info import FeatureInfo
from .loading import LoadReport, load_state_dict_checked, read_state_dict

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DilatedResNet",
    "dilated_resnet50",
    "dilated_resnet101",
    "dilated_resnet_tiny",
    "load_torchvision_weights",
    "run_checkpointed",
]

NormLayer = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """Two dilated 3x3 convolutions with an identity (or 1x1 projection) shortcut; expansion 1."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, dilated 3x3 (carries the stride), 1x1 expand (x4), shortcut."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class DilatedResNet(nn.Module):
    """CASENet/DFF dilated ResNet returning ``[c1, c2, c3, c5]`` (see the module docstring).

    Args:
        block: "bottleneck" (ResNet-50/101) or "basic".
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        widths: planes per stage (a bottleneck stage outputs 4x planes).
        stem_channels: channels of the 7x7 stem convolution (c1).
        strides: per stage; the authors' (1, 2, 2, 1).
        dilations: per stage; the authors' (2, 2, 2, 4).
        in_channels: image channels.
        norm_layer: BatchNorm-like factory ``norm_layer(num_features)``; default nn.BatchNorm2d.
        checkpoint_stages: recompute the stem and each stage in backward (activation checkpointing)
            when training with gradients; trades ~30% more backbone compute for much less memory.

    Input (B, in_channels, H, W) float; output list of 4 tensors (B, C_i, ceil(H/r_i), ceil(W/r_i))
    with C_i = ``feature_info.channels()`` and r_i = ``feature_info.reduction()`` = (1, 2, 4, 8).
    """

    #: How to build it again ({"name", "kwargs"}), set by the named builders; None otherwise.
    build_config: dict[str, Any] | None = None

    # Stages are registered by name in __init__ (add_module); declared here for type checkers.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        strides: Sequence[int] = (1, 2, 2, 1),
        dilations: Sequence[int] = (2, 2, 2, 4),
        in_channels: int = 3,
        norm_layer: NormLayer | None = None,
        checkpoint_stages: bool = False,
    ):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        for name, seq in (
            ("layers", layers),
            ("widths", widths),
            ("strides", strides),
            ("dilations", dilations),
        ):
            if len(seq) != 4 or any(int(v) < 1 for v in seq):
                raise ValueError(f"{name} must hold 4 positive ints (one per stage), got {seq!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        block_cls = _BLOCKS[block]
        self.in_channels = in_channels
        self.checkpoint_stages = checkpoint_stages

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=1, padding=3, bias=False)
        self.bn1 = norm_layer(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        channels = stem_channels
        stage_out = []
        for i, (n, planes, s, d) in enumerate(zip(layers, widths, strides, dilations, strict=True)):
            stage, channels = self._make_stage(block_cls, channels, planes, n, s, d, norm_layer)
            self.add_module(f"layer{i + 1}", stage)
            stage_out.append(channels)

        # c1 is at the input resolution; the max-pool halves it; each stage multiplies its stride.
        stage_reduction = []
        r = 2
        for s in strides:
            r *= int(s)
            stage_reduction.append(r)
        self.feature_info = FeatureInfo.from_lists(
            [stem_channels, stage_out[0], stage_out[1], stage_out[3]],
            [1, stage_reduction[0], stage_reduction[1], stage_reduction[3]],
            ["relu", "layer1", "layer2", "layer4"],
        )
        self._init_weights()

    @staticmethod
    def _make_stage(
        block_cls: type[BasicBlock] | type[Bottleneck],
        in_channels: int,
        planes: int,
        blocks: int,
        stride: int,
        dilation: int,
        norm_layer: NormLayer,
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * block_cls.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(out_channels),
            )
        mods = [block_cls(in_channels, planes, stride, dilation, downsample, norm_layer)]
        mods += [block_cls(out_channels, planes, 1, dilation, None, norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*mods), out_channels

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _run(
        self, fn: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module, x: torch.Tensor
    ) -> torch.Tensor:
        if self.checkpoint_stages and self.training and torch.is_grad_enabled():
            return run_checkpointed(fn, owner, x)
        return fn(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        c1 = self._run(self._stem, self.bn1, x)
        x = self.maxpool(c1)
        c2 = self._run(self.layer1, self.layer1, x)
        c3 = self._run(self.layer2, self.layer2, c2)
        c4 = self._run(self.layer3, self.layer3, c3)
        c5 = self._run(self.layer4, self.layer4, c4)
        return [c1, c2, c3, c5]


def _is_classifier_key(key: str) -> bool:
    return key.startswith("fc.")


def load_torchvision_weights(
    backbone: DilatedResNet,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> LoadReport:
    """Load a torchvision ResNet ImageNet state dict (file path or mapping) into ``backbone``.

    The classifier (``fc.*``) is ignored; missing ``num_batches_tracked`` buffers are tolerated.
    Anything else missing, unexpected or mis-shaped raises CheckpointMismatchError listing it all.
    Dilation does not change parameter shapes, so the stride-1 stem and dilated stages take the
    ImageNet weights as they are (exactly what the authors did).
    """
    state = read_state_dict(source)
    return load_state_dict_checked(
        backbone, state, ignore=_is_classifier_key, what="torchvision ResNet weights"
    )


def _build(
    layers: Sequence[int],
    pretrained: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None,
    **kwargs,
) -> DilatedResNet:
    model = DilatedResNet("bottleneck", layers, **kwargs)
    if pretrained is not None:
        load_torchvision_weights(model, pretrained)
    return model


def _record(model: DilatedResNet, name: str, **kwargs: Any) -> DilatedResNet:
    # How to build this backbone again (dynfuse.backbones.backbone_from_config reads it); what
    # save_pretrained writes into config.json. Not part of the state dict.
    model.build_config = {"name": name, "kwargs": kwargs}
    return model


def dilated_resnet50(
    pretrained: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    norm_layer: NormLayer | None = None,
    checkpoint_stages: bool = False,
) -> DilatedResNet:
    """Dilated ResNet-50 (features 64/256/512/2048 at strides 1/2/4/8).

    ``pretrained``: None, or a local torchvision ``resnet50`` ImageNet file (or its state dict).
    Nothing is downloaded.
    """
    return _record(
        _build((3, 4, 6, 3), pretrained, norm_layer=norm_layer, checkpoint_stages=checkpoint_stages),
        "resnet50",
    )


def dilated_resnet101(
    pretrained: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    norm_layer: NormLayer | None = None,
    checkpoint_stages: bool = False,
) -> DilatedResNet:
    """Dilated ResNet-101 (features 64/256/512/2048 at strides 1/2/4/8); see dilated_resnet50."""
    return _record(
        _build((3, 4, 23, 3), pretrained, norm_layer=norm_layer, checkpoint_stages=checkpoint_stages),
        "resnet101",
    )


def dilated_resnet_tiny(
    pretrained: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    norm_layer: NormLayer | None = None,
    checkpoint_stages: bool = False,
    widths: Sequence[int] = (16, 32, 64, 128),
) -> DilatedResNet:
    """A small CPU-friendly backbone with the same CASENet topology, for demos and tests.

    One basic block per stage with ``widths`` planes (default 16/32/64/128), a 16-channel stem,
    strides 1/2/2/1, dilations 2/2/2/4, output stride 8; about 0.3 M parameters. Features
    (16, 16, 32, 128) channels at strides (1, 2, 4, 8) by default. ``pretrained``: a local state
    dict file of this same architecture (e.g. one you saved), or None.
    """
    model = DilatedResNet(
        "basic",
        (1, 1, 1, 1),
        widths=widths,
        stem_channels=widths[0],
        norm_layer=norm_layer,
        checkpoint_stages=checkpoint_stages,
    )
    if pretrained is not None:
        load_state_dict_checked(model, read_state_dict(pretrained), what="tiny backbone weights")
    widths = tuple(int(w) for w in widths)
    return _record(model, "tiny", **({} if widths == (16, 32, 64, 128) else {"widths": list(widths)}))
