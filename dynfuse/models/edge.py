"""DFF and CASENet models: a backbone (``.backbone``) plus a fusion head (``.head``).

Every parameter outside the backbone lives in ``.head``, so the authors' optimiser split (backbone at
lr, everything else at 10x lr) is ``model.backbone.parameters()`` vs ``model.head.parameters()``
(see :meth:`EdgeModel.param_groups`).

Inputs are images normalised like the backbone's pre-training (ImageNet mean/std for the dilated
ResNets), (B, 3, H, W) of any H, W; outputs are :class:`~dynfuse.heads.DFFOutput` logits at (H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..backbones.resnet import DilatedResNet, run_checkpointed
from ..heads import CASENetHead, DFFHead, DFFOutput
from ..layers import LocationAdaptiveLearner
from ..layers.side_norm import check_feature

__all__ = ["CASENet", "DFF", "EdgeModel", "CheckpointedAdaptiveLearner"]

NormLayer = Callable[[int], nn.Module]


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


class EdgeModel(nn.Module):
    """Backbone + head; ``forward(images (B, C, H, W)) -> DFFOutput`` at (H, W). Base of DFF/CASENet."""

    def __init__(self, backbone: nn.Module, head: DFFHead, *, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: torch.Tensor) -> DFFOutput:
        """images (B, C, H, W) float -> DFFOutput(side5, fuse (B, K, H, W) logits, weights)."""
        check_feature("images", images, getattr(self.backbone, "in_channels", None))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        return self.head(features, output_size=images.shape[-2:])

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Optimiser groups as the authors train: backbone at ``lr``, the head at ``head_lr_mult * lr``."""
        return [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": [p for p in self.head.parameters() if p.requires_grad], "lr": lr * head_lr_mult},
        ]

    def set_checkpointing(self, *, backbone: bool | None = None, learner: bool | None = None) -> None:
        """Turn activation checkpointing of the backbone stages / the adaptive learner on or off.

        Backbone: our dilated ResNets checkpoint their stem and four stages; timm backbones use
        ``set_grad_checkpointing``. Learner: only the location-adaptive learner is worth it (the
        others are tiny) and it is switched to :class:`CheckpointedAdaptiveLearner`.
        """
        if backbone is not None:
            _set_backbone_checkpointing(self.backbone, bool(backbone))
        if learner and getattr(self.head, "fused_learner", None) is not None:
            raise ValueError("checkpoint_learner does not apply to the fused learner (it keeps no "
                             "full-resolution learner activations)")
        if learner is not None:
            lrn = self.head.learner
            if isinstance(lrn, LocationAdaptiveLearner):
                lrn.__class__ = CheckpointedAdaptiveLearner if learner else LocationAdaptiveLearner
            elif learner:
                raise ValueError(
                    "checkpoint_learner needs the location-adaptive learner, this head has "
                    f"{type(lrn).__name__}"
                )

    @property
    def checkpointing(self) -> dict[str, bool]:
        """Which parts are checkpointed: ``{"backbone": bool, "learner": bool}``."""
        bb = self.backbone
        if isinstance(bb, DilatedResNet):
            bb_on = bb.checkpoint_stages
        else:
            body = getattr(bb, "body", bb)
            bb_on = bool(getattr(body, "grad_checkpointing", False))
        return {"backbone": bb_on, "learner": isinstance(self.head.learner, CheckpointedAdaptiveLearner)}


def _set_backbone_checkpointing(backbone: nn.Module, enable: bool) -> None:
    if isinstance(backbone, DilatedResNet):
        backbone.checkpoint_stages = enable
        return
    body = getattr(backbone, "body", backbone)
    setter = getattr(body, "set_grad_checkpointing", None)
    if setter is None:
        if enable:
            raise ValueError(
                f"checkpoint_backbone is not supported for {type(body).__name__}: it has no "
                "set_grad_checkpointing() (our dilated ResNets and timm models have it)"
            )
        return
    setter(enable)


class DFF(EdgeModel):
    """Dynamic Feature Fusion (Hu et al., IJCAI 2019) on any backbone with a ``feature_info``.

    Args:
        backbone: module returning S+1 feature maps (low -> top) with ``feature_info``; e.g.
            :func:`dynfuse.backbones.dilated_resnet50` (the paper), ``dilated_resnet_tiny``, a
            :class:`~dynfuse.backbones.TimmBackbone`.
        num_classes: K.
        learner: "adaptive" (paper), "invariant" or "fixed" (Table 1 rows 5, 3, 2).
        normalize: the normalizer (BatchNorm) in the side blocks (row 6 turns it off).
        activation: None (paper) or "softmax" over the fusion weights (row 4).
        fusion_backend: backend of :func:`dynfuse.ops.dynamic_fuse` ("auto", "torch", "reference",
            "triton"); use "reference" or "torch" for ONNX export.
        upsample: "deconv" (paper) or "bilinear".
        learner_resolution: "full" (paper) or "top": run Side5-w and the learner at the top level's
            resolution and upsample the weights (much less memory; not the paper's model).
        norm_layer: normalization factory for the head (e.g. ``nn.SyncBatchNorm``).
        checkpoint_backbone, checkpoint_learner: activation checkpointing (memory for compute).
        channels_last: keep parameters and inputs in channels-last memory format.
        fused_learner: the fused location-adaptive branch (same model, a fraction of the learner's
            memory; see :class:`~dynfuse.heads.DFFHead`). Excludes ``checkpoint_learner``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        learner: str = "adaptive",
        normalize: bool = True,
        activation: str | None = None,
        fusion_backend: str = "auto",
        upsample: str = "deconv",
        learner_resolution: str = "full",
        norm_layer: NormLayer | None = None,
        checkpoint_backbone: bool = False,
        checkpoint_learner: bool = False,
        channels_last: bool = False,
        fused_learner: bool = False,
    ) -> None:
        if fused_learner and checkpoint_learner:
            raise ValueError("fused_learner and checkpoint_learner exclude each other: the fused branch "
                             "already keeps no full-resolution learner activations")
        info = _feature_info(backbone)
        head = DFFHead.from_feature_info(
            info,
            num_classes,
            learner=learner,
            normalize=normalize,
            activation=activation,
            upsample=upsample,
            backend=fusion_backend,
            norm_layer=norm_layer,
            learner_resolution=learner_resolution,
            fused_learner=fused_learner,
        )
        super().__init__(backbone, head, channels_last=channels_last)
        self.set_checkpointing(backbone=checkpoint_backbone, learner=checkpoint_learner)


class CASENet(EdgeModel):
    """CASENet (Yu et al., CVPR 2017) as the DFF authors reproduced it: side blocks without the
    normalizer and a fixed per-class fusion (a grouped 1x1 conv). Table 1 row 1.

    Args: as :class:`DFF` where they apply (no learner, normalizer or activation options).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        fusion_backend: str = "auto",
        upsample: str = "deconv",
        norm_layer: NormLayer | None = None,
        checkpoint_backbone: bool = False,
        channels_last: bool = False,
    ) -> None:
        info = _feature_info(backbone)
        head = CASENetHead(
            list(info.channels()),
            num_classes,
            strides=list(info.reduction()),
            upsample=upsample,
            backend=fusion_backend,
            norm_layer=norm_layer,
        )
        super().__init__(backbone, head, channels_last=channels_last)
        self.set_checkpointing(backbone=checkpoint_backbone)


def _feature_info(backbone: nn.Module) -> Any:
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(info, "channels") or not hasattr(info, "reduction"):
        raise TypeError(
            f"backbone {type(backbone).__name__} needs a feature_info with channels() and reduction(); "
            "wrap it in dynfuse.backbones.FeatureListBackbone or TimmBackbone"
        )
    return info
