"""DFF and CASENet heads: multi-level backbone features -> (side5, fuse, weights).

A head takes S+1 feature maps ordered from the lowest level to the top one, normalises each to the
output size with a :class:`SideNormBlock`, predicts fusion weights from the top level and fuses with
:func:`dynfuse.ops.dynamic_fuse`. It works on any backbone that reports channels and strides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    DynamicFusion,
    FixedFusion,
    FusedLocationAdaptiveFusion,
    LocationAdaptiveLearner,
    LocationInvariantLearner,
    SideNormBlock,
)
from .layers.side_norm import NormLayer
from .ops.validation import check_activation, check_backend

LEARNERS = ("adaptive", "invariant", "fixed")
LEARNER_RESOLUTIONS = ("full", "top")


class DFFOutput(NamedTuple):
    """What a DFF or CASENet head (and model) returns.

    side5: (B, K, H, W) class logits of the Side5 block.
    fuse: (B, K, H, W) fused logits.
    weights: fusion weights in the op's forms: (B, K, S+1, H, W) adaptive, (B, K, S+1) invariant,
        (K, S+1) fixed. Before the optional softmax. None with ``fused_learner=True`` unless the
        head's ``fused_learner.return_weights`` is set (the fused branch never builds them otherwise).
    """

    side5: torch.Tensor
    fuse: torch.Tensor
    weights: torch.Tensor | None


def parse_feature_info(feature_info: Any) -> list[tuple[int, int]]:
    """Channels and strides of each level, from timm's ``FeatureInfo``, a list of its dicts
    (``num_chs``, ``reduction``) or a plain list of ``(channels, stride)`` pairs."""
    if hasattr(feature_info, "channels") and hasattr(feature_info, "reduction"):
        chs, reds = feature_info.channels(), feature_info.reduction()
        return [(int(c), int(r)) for c, r in zip(chs, reds, strict=True)]
    if not isinstance(feature_info, Iterable):
        raise TypeError(
            "feature_info must be timm's FeatureInfo, a list of dicts with 'num_chs' and "
            f"'reduction', or a list of (channels, stride) pairs; got {type(feature_info).__name__}"
        )
    levels = []
    for i, item in enumerate(feature_info):
        if isinstance(item, dict):
            if "num_chs" not in item or "reduction" not in item:
                raise ValueError(f"feature_info[{i}] needs 'num_chs' and 'reduction', got {item!r}")
            levels.append((int(item["num_chs"]), int(item["reduction"])))
        elif isinstance(item, Sequence) and len(item) == 2:
            levels.append((int(item[0]), int(item[1])))
        else:
            raise ValueError(f"feature_info[{i}] must be a dict or a (channels, stride) pair, got {item!r}")
    return levels


class DFFHead(nn.Module):
    """Dynamic Feature Fusion head.

    Args:
        in_channels: channels of the S+1 input levels, lowest first, top (Side5) last.
        num_classes: K.
        strides: stride of each level relative to the output (e.g. (1, 2, 4, 8) for the authors'
            dilated ResNet, (4, 8, 16, 32) for a plain one).
        learner: "adaptive" (per location, the paper's best), "invariant" (per image) or "fixed"
            (learned constants, CASENet-style fusion with the normalizer).
        normalize: BatchNorm in the Side1-3 and Side5 blocks (the paper's normalizer). The Side5-w
            block feeding the learner always keeps its BatchNorm, as in the authors' code.
        activation: None (the paper's choice) or "softmax" over the S+1 weights.
        upsample: "deconv" (the authors' transposed convolutions) or "bilinear".
        backend: fusion backend, see :func:`dynfuse.ops.dynamic_fuse`.
        norm_layer: 2-D normalization factory (default BatchNorm2d).
        learner_resolution: "full" runs Side5-w and the learner at the output size (the paper);
            "top" runs them at the top level's resolution and upsamples the weights bilinearly
            (far less memory; not the paper's model).
        feature_indices: if set, forward() accepts the backbone's full feature list and picks these.
        fused_learner: compute Side5-w's upsampling, the location-adaptive learner and the fusion with
            :class:`~dynfuse.layers.FusedLocationAdaptiveFusion`: the same outputs and gradients
            without the (B, K*(S+1), H, W) activations (about three times the learner's FLOPs). Needs
            learner="adaptive", learner_resolution="full" and BatchNorm2d in the learner; the weights
            are returned only when ``head.fused_learner.return_weights`` is True.

    forward(features, output_size=None) -> DFFOutput with side5 and fuse (B, K, H, W) logits; the
    default output size is the lowest level's size times its stride.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        strides: Sequence[int],
        learner: str = "adaptive",
        normalize: bool = True,
        activation: str | None = None,
        upsample: str = "deconv",
        backend: str = "auto",
        norm_layer: NormLayer | None = None,
        learner_resolution: str = "full",
        feature_indices: Sequence[int] | None = None,
        fused_learner: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        strides = [int(s) for s in strides]
        if len(in_channels) < 2:
            raise ValueError(f"in_channels needs at least 2 levels (S >= 1 plus the top), got {in_channels}")
        if len(strides) != len(in_channels):
            raise ValueError(
                f"strides must give one stride per level: {len(in_channels)} levels, got {strides}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {learner!r}")
        if learner_resolution not in LEARNER_RESOLUTIONS:
            raise ValueError(
                f"learner_resolution must be one of {LEARNER_RESOLUTIONS}, got {learner_resolution!r}"
            )
        check_activation(activation)
        check_backend(backend)
        self.in_channels = tuple(in_channels)
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.num_sides = len(in_channels) - 1
        self.learner_kind = learner
        self.normalize = normalize
        self.activation = activation
        self.learner_resolution = learner_resolution
        self.feature_indices = tuple(feature_indices) if feature_indices is not None else None
        if self.feature_indices is not None and len(self.feature_indices) != len(in_channels):
            raise ValueError(
                f"feature_indices {self.feature_indices} must name {len(in_channels)} levels"
            )
        k, n_in = num_classes, self.num_sides + 1
        c_top, s_top = in_channels[-1], strides[-1]
        self.sides = nn.ModuleList(
            SideNormBlock(c, 1, s, norm=normalize, upsample=upsample, norm_layer=norm_layer)
            for c, s in zip(in_channels[:-1], strides[:-1], strict=True)
        )
        self.side5 = SideNormBlock(c_top, k, s_top, norm=normalize, upsample=upsample, norm_layer=norm_layer)
        self.side5_w: SideNormBlock | None = None
        self.fusion: DynamicFusion | None = None
        self.learner: nn.Module
        if learner == "fixed":
            self.learner = FixedFusion(k, n_in, activation=activation, backend=backend)
            return
        w_scale = s_top if learner_resolution == "full" else 1
        self.side5_w = SideNormBlock(c_top, k * n_in, w_scale, upsample=upsample, norm_layer=norm_layer)
        if learner == "adaptive":
            self.learner = LocationAdaptiveLearner(k * n_in, k, n_in, norm_layer=norm_layer)
        else:
            self.learner = LocationInvariantLearner(k * n_in, k, n_in)
        self.fusion = DynamicFusion(activation=activation, backend=backend)
        self.fused_learner: FusedLocationAdaptiveFusion | None = None
        if fused_learner:
            if learner != "adaptive" or learner_resolution != "full":
                raise ValueError(
                    "fused_learner=True needs learner='adaptive' and learner_resolution='full', got "
                    f"learner={learner!r}, learner_resolution={learner_resolution!r}"
                )
            self.fused_learner = FusedLocationAdaptiveFusion(activation=activation)

    @classmethod
    def from_feature_info(
        cls,
        feature_info: Any,
        num_classes: int,
        *,
        indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> DFFHead:
        """Build a head from a backbone's feature description.

        ``feature_info``: timm's ``FeatureInfo`` (``model.feature_info`` of a ``features_only`` model),
        a list of its dicts, or a list of (channels, stride). ``indices`` picks the S+1 levels to use
        (default: all, lowest first); forward() then accepts the backbone's full list of maps.
        """
        levels = parse_feature_info(feature_info)
        if indices is not None:
            bad = [i for i in indices if not -len(levels) <= i < len(levels)]
            if bad:
                raise ValueError(f"indices {list(indices)} out of range for {len(levels)} levels")
            levels = [levels[i] for i in indices]
        return cls(
            [c for c, _ in levels],
            num_classes,
            strides=[s for _, s in levels],
            feature_indices=indices,
            **kwargs,
        )

    def _select(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise TypeError(
                f"features must be a list of {len(self.in_channels)} feature maps, "
                f"got {type(features).__name__}"
            )
        feats = list(features)
        if self.feature_indices is not None and len(feats) != len(self.in_channels):
            try:
                feats = [feats[i] for i in self.feature_indices]
            except IndexError:
                raise ValueError(
                    f"features has {len(feats)} maps; feature_indices {self.feature_indices} "
                    "do not fit"
                ) from None
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"expected {len(self.in_channels)} feature maps (channels {self.in_channels}), "
                f"got {len(feats)}"
            )
        return feats

    def _weights(self, top: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        assert self.side5_w is not None  # internal invariant: only the fixed learner lacks it
        if self.learner_resolution == "full":
            return self.learner(self.side5_w(top, output_size))
        weights = self.learner(self.side5_w(top, top.shape[-2:]))
        if weights.dim() == 3:
            return weights
        b, k, n, h, w = weights.shape
        up = F.interpolate(weights.reshape(b, k * n, h, w), size=output_size, mode="bilinear",
                           align_corners=False)
        return up.view(b, k, n, *output_size)

    def forward(
        self, features: Sequence[torch.Tensor], output_size: Sequence[int] | None = None
    ) -> DFFOutput:
        feats = self._select(features)
        if output_size is None:
            output_size = (feats[0].shape[-2] * self.strides[0], feats[0].shape[-1] * self.strides[0])
        size = (int(output_size[0]), int(output_size[1]))
        top = feats[-1]
        side5 = self.side5(top, size)
        sides = torch.cat([blk(f, size) for blk, f in zip(self.sides, feats[:-1], strict=True)], dim=1)
        sides = sides.to(side5.dtype)
        if isinstance(self.learner, FixedFusion):
            fuse = self.learner(side5, sides)
            return DFFOutput(side5, fuse, self.learner.fusion_weights)
        assert self.fusion is not None  # internal invariant: set for every non-fixed learner
        if self.fused_learner is not None:
            assert self.side5_w is not None and isinstance(self.learner, LocationAdaptiveLearner)
            fuse, fused_weights = self.fused_learner(self.side5_w, self.learner, top, side5, sides, size)
            return DFFOutput(side5, fuse, fused_weights)
        weights = self._weights(top, size)
        fuse = self.fusion(side5, sides, weights.to(side5.dtype))
        return DFFOutput(side5, fuse, weights)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, strides={self.strides}, "
            f"learner={self.learner_kind!r}, normalize={self.normalize}, "
            f"activation={self.activation!r}, learner_resolution={self.learner_resolution!r}"
            + (", fused_learner=True" if self.fused_learner is not None else "")
        )


class CASENetHead(DFFHead):
    """CASENet's head: side blocks without the normalizer and a fixed grouped-conv fusion.

    Same inputs and outputs as :class:`DFFHead`; ``weights`` of the output is the (K, S+1) fixed form.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        strides: Sequence[int],
        upsample: str = "deconv",
        backend: str = "auto",
        norm_layer: NormLayer | None = None,
        feature_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            strides=strides,
            learner="fixed",
            normalize=False,
            upsample=upsample,
            backend=backend,
            norm_layer=norm_layer,
            feature_indices=feature_indices,
        )
