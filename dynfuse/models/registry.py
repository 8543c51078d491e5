"""Model builders by name: ``create_model("dff" | "casenet", backbone=..., num_classes=...)``.

Backbone names: "resnet50", "resnet101" (the authors' dilated ResNets), "tiny" (a small CPU-friendly
one with the same topology), "timm:<model name>" (any timm features_only model), or an ``nn.Module``
with a ``feature_info``. ``TABLE1`` maps each row of the paper's ablation (Table 1) to its options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..backbones.adapters import TimmBackbone
from ..backbones.resnet import dilated_resnet50, dilated_resnet101, dilated_resnet_tiny
from .edge import DFF, CASENet, EdgeModel

__all__ = [
    "TABLE1",
    "create_backbone",
    "create_model",
    "create_table1_model",
    "list_models",
    "register_model",
]

Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | None

_MODELS: dict[str, Callable[..., EdgeModel]] = {}

# The paper's Table 1 (Cityscapes, ResNet-50, mean MF-ODS %): model name and create_model options.
TABLE1: dict[str, tuple[str, dict[str, Any]]] = {
    "casenet": ("casenet", {}),  # 78.4 (reproduced baseline)
    "+normalizer": ("dff", {"learner": "fixed", "normalize": True}),  # 78.7
    "+location-invariant": ("dff", {"learner": "invariant", "normalize": True}),  # 79.1
    "+location-adaptive+softmax": ("dff", {"learner": "adaptive", "activation": "softmax"}),  # 80.1
    "+location-adaptive": ("dff", {"learner": "adaptive", "activation": None}),  # 80.4 (DFF)
    "location-adaptive-no-normalizer": ("dff", {"learner": "adaptive", "normalize": False}),  # 78.9
}


def register_model(name: str) -> Callable[[Callable[..., EdgeModel]], Callable[..., EdgeModel]]:
    """Decorator adding a builder ``fn(**kwargs) -> EdgeModel`` under ``name`` (lower case)."""

    def deco(fn: Callable[..., EdgeModel]) -> Callable[..., EdgeModel]:
        key = name.lower()
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(_MODELS)


def create_backbone(
    backbone: str | nn.Module,
    *,
    pretrained: Source = None,
    checkpoint: bool = False,
    norm_layer: Callable[[int], nn.Module] | None = None,
) -> nn.Module:
    """Build a backbone by name (see the module docstring) or pass a module through.

    ``pretrained``: for the dilated ResNets a local torchvision ImageNet file or state dict; for
    "tiny" a state dict of the same architecture; for "timm:<name>" a local weights file that timm
    loads (nothing is downloaded). Not allowed with a module.
    """
    if isinstance(backbone, nn.Module):
        if pretrained is not None:
            raise ValueError("pretrained_backbone cannot be used with a backbone module; load it yourself")
        return backbone
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    name = backbone.lower()
    builders = {"resnet50": dilated_resnet50, "resnet101": dilated_resnet101, "tiny": dilated_resnet_tiny}
    if name in builders:
        return builders[name](pretrained, norm_layer=norm_layer, checkpoint_stages=checkpoint)
    if name.startswith("timm:"):
        timm_name = backbone[len("timm:"):]
        if not timm_name:
            raise ValueError("give a timm model name after 'timm:', e.g. 'timm:resnet50'")
        if norm_layer is not None:
            raise ValueError("norm_layer applies to the dilated ResNets only, not to timm backbones")
        kwargs: dict[str, Any] = {}
        if pretrained is not None:
            if not isinstance(pretrained, (str, os.PathLike)):
                raise TypeError("for timm backbones pretrained_backbone must be a local file path")
            kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": os.fspath(pretrained)}}
        bb = TimmBackbone(timm_name, **kwargs)
        if checkpoint:
            bb.body.set_grad_checkpointing(True)
        return bb
    raise ValueError(
        f"unknown backbone {backbone!r}: use 'resnet50', 'resnet101', 'tiny', 'timm:<name>' or a module"
    )


def create_model(
    name: str,
    *,
    backbone: str | nn.Module = "resnet50",
    num_classes: int,
    pretrained_backbone: Source = None,
    **kwargs: Any,
) -> EdgeModel:
    """Build a registered model.

    Args:
        name: "dff" or "casenet" (or anything registered with :func:`register_model`).
        backbone: "resnet50", "resnet101", "tiny", "timm:<name>" or an nn.Module with feature_info.
        num_classes: K.
        pretrained_backbone: local backbone weights (see :func:`create_backbone`); never downloads.
        **kwargs: model options: ``learner``, ``normalize``, ``activation`` (DFF only),
            ``fusion_backend``, ``upsample``, ``learner_resolution`` (DFF only), ``norm_layer``,
            ``checkpoint_backbone``, ``checkpoint_learner`` (DFF only), ``channels_last``,
            ``fused_learner`` (DFF only).

    Example: ``create_model("dff", backbone="tiny", num_classes=19)``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return _MODELS[key](backbone=backbone, num_classes=num_classes,
                        pretrained_backbone=pretrained_backbone, **kwargs)


def create_table1_model(row: str, **kwargs: Any) -> EdgeModel:
    """Build the model of one row of the paper's Table 1 (keys of :data:`TABLE1`).

    ``kwargs`` go to :func:`create_model` (``num_classes`` is required) and override the row's options.
    """
    if row not in TABLE1:
        raise ValueError(f"unknown Table 1 row {row!r}; rows: {list(TABLE1)}")
    name, options = TABLE1[row]
    return create_model(name, **{**options, **kwargs})


@register_model("dff")
def _build_dff(
    *,
    backbone: str | nn.Module,
    num_classes: int,
    pretrained_backbone: Source = None,
    checkpoint_backbone: bool = False,
    norm_layer: Callable[[int], nn.Module] | None = None,
    **kwargs: Any,
) -> DFF:
    bb = create_backbone(backbone, pretrained=pretrained_backbone, norm_layer=norm_layer)
    return DFF(bb, num_classes, norm_layer=norm_layer, checkpoint_backbone=checkpoint_backbone, **kwargs)


@register_model("casenet")
def _build_casenet(
    *,
    backbone: str | nn.Module,
    num_classes: int,
    pretrained_backbone: Source = None,
    checkpoint_backbone: bool = False,
    norm_layer: Callable[[int], nn.Module] | None = None,
    **kwargs: Any,
) -> CASENet:
    not_for_casenet = sorted(
        k for k in ("learner", "normalize", "activation", "learner_resolution", "checkpoint_learner",
                  "fused_learner")
        if k in kwargs
    )
    if not_for_casenet:
        raise ValueError(
            f"CASENet has a fixed fusion without normalizer; options {not_for_casenet} apply to DFF "
            "only (for CASENet's fusion with the normalizer use create_model('dff', learner='fixed'))"
        )
    bb = create_backbone(backbone, pretrained=pretrained_backbone, norm_layer=norm_layer)
    return CASENet(bb, num_classes, norm_layer=norm_layer, checkpoint_backbone=checkpoint_backbone,
                   **kwargs)
