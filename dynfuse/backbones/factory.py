"""Backbones by name: ``create_backbone("resnet50" | "resnet101" | "tiny" | "timm:<name>" | module)``.

"resnet50" and "resnet101" are the authors' dilated ResNets, "tiny" a small CPU-friendly one with
the same topology, "timm:<model name>" any timm ``features_only`` model; an ``nn.Module`` with a
``feature_info`` passes through.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoints import read_checkpoint
from .adapters import TimmBackbone
from .resnet import dilated_resnet50, dilated_resnet101, dilated_resnet_tiny

__all__ = ["BackboneSource", "backbone_from_config", "create_backbone", "list_backbones"]

#: Where pretrained backbone weights come from: a local file, a state dict, or nothing.
BackboneSource = str | os.PathLike[str] | Mapping[str, torch.Tensor] | None


# Backbones built by name; "timm:<model name>" is accepted besides these.
_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet50": dilated_resnet50,
    "resnet101": dilated_resnet101,
    "tiny": dilated_resnet_tiny,
}


def list_backbones() -> list[str]:
    """Backbone names :func:`create_backbone` builds (besides ``"timm:<model name>"``)."""
    return list(_BACKBONES)


def create_backbone(
    backbone: str | nn.Module,
    *,
    pretrained: BackboneSource = None,
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
    if name in _BACKBONES:
        return _BACKBONES[name](pretrained, norm_layer=norm_layer, checkpoint_stages=checkpoint)
    if name.startswith("timm:"):
        timm_name = backbone[len("timm:") :]
        if not timm_name:
            raise ValueError("give a timm model name after 'timm:', e.g. 'timm:resnet50'")
        if norm_layer is not None:
            raise ValueError("norm_layer applies to the dilated ResNets only, not to timm backbones")
        kwargs: dict[str, Any] = {}
        if pretrained is not None:
            if not isinstance(pretrained, (str, os.PathLike)):
                raise TypeError("for timm backbones pretrained_backbone must be a local file path")
            if not os.fspath(pretrained).endswith(".safetensors"):
                # timm would fail on a file that is not a checkpoint with torch's internals; say
                # what the file is first (timm reads it again: weights load once per model).
                read_checkpoint(pretrained)
            kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": os.fspath(pretrained)}}
        bb = TimmBackbone(timm_name, **kwargs)
        if checkpoint:
            body: Any = bb.body  # a timm model; nn.Module's typing does not know its methods
            body.set_grad_checkpointing(True)
        return bb
    raise ValueError(
        f"unknown backbone {backbone!r}: use one of {list_backbones()}, 'timm:<name>' or a module"
    )


def backbone_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Build a backbone again from its ``build_config`` ({"name", "kwargs"}), random weights.

    The named builders record it: ``create_backbone("resnet50" | "resnet101" | "tiny" |
    "timm:<name>")``, :func:`~dynfuse.backbones.dilated_resnet_tiny` (``widths``) and
    :class:`~dynfuse.backbones.TimmBackbone` built from a name (``out_indices``, ``in_channels`` and
    the timm keyword arguments, e.g. ``output_stride``). ``config.json`` of a saved model holds it.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise ValueError(f"a backbone config is {{'name': str, 'kwargs': dict}}, got {config!r}")
    name, kwargs = config["name"], dict(config.get("kwargs") or {})
    builders = {"resnet50": dilated_resnet50, "resnet101": dilated_resnet101, "tiny": dilated_resnet_tiny}
    if name in builders:
        return builders[name](**kwargs)
    if name.startswith("timm:") and len(name) > len("timm:"):
        return TimmBackbone(name[len("timm:") :], **kwargs)
    raise ValueError(
        f"unknown backbone {name!r} in the config: use 'resnet50', 'resnet101', 'tiny' or 'timm:<name>'"
    )
