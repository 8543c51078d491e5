"""DFF and CASENet models: a backbone (``.backbone``) plus a fusion head (``.head``).

Every parameter outside the backbone lives in ``.head``, so the authors' optimiser split (backbone at
lr, everything else at 10x lr) is ``model.backbone.parameters()`` vs ``model.head.parameters()``
(see :meth:`EdgeModel.param_groups`).

Inputs are images normalised like the backbone's pre-training (ImageNet mean/std for the dilated
ResNets), (B, 3, H, W) of any H, W; outputs are :class:`~dynfuse.heads.DFFOutput` logits at (H, W).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones.resnet import DilatedResNet
from ..heads import CASENetHead, DFFHead, DFFOutput, HeadOptions
from ..layers import CheckpointedAdaptiveLearner, LocationAdaptiveLearner
from ..layers.side_norm import check_dtype, check_feature

__all__ = ["CASENet", "DFF", "EdgeModel", "CheckpointedAdaptiveLearner", "MODEL_OPTIONS"]

NormLayer = Callable[[int], nn.Module]

#: Keyword arguments of the models that are not head options (:class:`~dynfuse.heads.HeadOptions`).
MODEL_OPTIONS = ("norm_layer", "checkpoint_backbone", "checkpoint_learner", "channels_last")


class EdgeModel(nn.Module):
    """Backbone + head; ``forward(images (B, C, H, W)) -> DFFOutput`` at (H, W). Base of DFF/CASENet.

    Sharing: :meth:`save_pretrained` writes a folder (safetensors weights, a ``config.json`` that
    rebuilds the model, a model card), :meth:`from_pretrained` loads one (or a Hub repository id),
    :meth:`push_to_hub` uploads one; see :mod:`dynfuse.models.pretrained`.
    """

    #: The registered name a config rebuilds this class with (``create_model(config_name, ...)``).
    config_name: str | None = None
    #: Names of the K classes, when known (set by ``from_pretrained``; written by ``save_pretrained``).
    class_names: list[str] | None = None
    #: The ``config.json`` a model was loaded from (input ``mean``/``std``, metrics, training).
    pretrained_config: dict[str, Any] | None = None

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
        params = next(self.backbone.parameters(), None)
        if params is not None:
            check_dtype("images", images, params, "model")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        return self.head(features, output_size=images.shape[-2:])

    @property
    def build_config(self) -> dict[str, Any]:
        """How to build this model again (model, backbone name and kwargs, K, head and model
        options), read from the live model; a ValueError when its backbone was given as a module.
        See :func:`dynfuse.models.pretrained.model_build_config`."""
        from .pretrained import model_build_config

        return model_build_config(self)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a model card ``README.md`` to
        ``save_directory``; ``kwargs``: ``class_names``, ``mean``, ``std``, ``metrics`` with
        ``protocol``, ``training`` (see :func:`dynfuse.models.pretrained.save_pretrained`)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], **kwargs: Any) -> EdgeModel:
        """Load a :meth:`save_pretrained` folder or Hub repository id (eval mode, identical
        outputs); see :func:`dynfuse.models.pretrained.from_pretrained`. ``DFF.from_pretrained``
        refuses a saved CASENet and the reverse."""
        from .pretrained import from_pretrained

        model = from_pretrained(source, **kwargs)
        if not isinstance(model, cls):
            found = type(model).__name__
            raise TypeError(
                f"{str(source)!r} holds a {found} ({model.config_name!r}), not a {cls.__name__}: "
                f"load it with dynfuse.from_pretrained or {found}.from_pretrained"
            )
        return model

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model to the Hugging Face Hub repository ``repo_id`` (the ``hub`` extra);
        see :func:`dynfuse.models.pretrained.push_to_hub`."""
        from .pretrained import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

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
            raise ValueError(
                "checkpoint_learner does not apply to the fused learner (it keeps no "
                "full-resolution learner activations)"
            )
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


class _OptionsModel(EdgeModel):
    """An :class:`EdgeModel` whose head is built from the backbone's ``feature_info`` and
    :class:`~dynfuse.heads.HeadOptions` (``head_class`` picks DFF's or CASENet's)."""

    head_class: type[DFFHead] = DFFHead

    @classmethod
    def resolve_options(cls, options: HeadOptions | None = None, **head_options: Any) -> HeadOptions:
        """The head options this model would be built with; a ValueError names an unknown or
        invalid option (builders call this before making a possibly large backbone)."""
        unknown = sorted(set(head_options) - set(HeadOptions.names()) - {"backend"})
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {cls.__name__}: head options are "
                f"{list(HeadOptions.names())}, model options {list(MODEL_OPTIONS)}"
            )
        return cls.head_class.resolve_options(options, **head_options)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        options: HeadOptions | None = None,
        norm_layer: NormLayer | None = None,
        checkpoint_backbone: bool = False,
        checkpoint_learner: bool = False,
        channels_last: bool = False,
        **head_options: Any,
    ) -> None:
        info = _feature_info(backbone)
        opts = self.resolve_options(options, **head_options)
        head = self.head_class.from_feature_info(info, num_classes, options=opts, norm_layer=norm_layer)
        super().__init__(backbone, head, channels_last=channels_last)
        self.set_checkpointing(backbone=checkpoint_backbone, learner=checkpoint_learner)


class DFF(_OptionsModel):
    """Dynamic Feature Fusion (Hu et al., IJCAI 2019) on any backbone with a ``feature_info``.

    Args:
        backbone: module returning S+1 feature maps (low -> top) with ``feature_info``; e.g.
            :func:`dynfuse.backbones.dilated_resnet50` (the paper), ``dilated_resnet_tiny``, a
            :class:`~dynfuse.backbones.TimmBackbone`.
        num_classes: K.
        options: the head, a :class:`~dynfuse.heads.HeadOptions` (default: the paper's DFF; the
            rows of Table 1 are in :data:`dynfuse.models.TABLE1`).
        norm_layer: normalization factory for the head (e.g. ``nn.SyncBatchNorm``).
        checkpoint_backbone: activation checkpointing of the backbone (memory for compute).
        checkpoint_learner: activation checkpointing of the weight learner (memory for compute).
        channels_last: keep parameters and inputs in channels-last memory format.
        **head_options: :class:`~dynfuse.heads.HeadOptions` fields applied on top of ``options``:
            ``learner`` ("adaptive", "invariant", "fixed": Table 1 rows 5, 3, 2), ``normalize``,
            ``activation``, ``upsample``, ``learner_resolution``, ``fusion_backend``.
    """

    head_class = DFFHead
    config_name = "dff"


class CASENet(_OptionsModel):
    """CASENet (Yu et al., CVPR 2017) as the DFF authors reproduced it: side blocks without the
    normalizer and a fixed per-class fusion (a grouped 1x1 conv with a bias). Table 1 row 1.

    Args: as :class:`DFF`; the head starts from :data:`~dynfuse.heads.CASENET_OPTIONS` and only
    ``fusion_backend`` and ``upsample`` may change (the rest would be another model).
    """

    head_class = CASENetHead
    config_name = "casenet"


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
