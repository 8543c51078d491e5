"""Backbones for DFF / CASENet: the authors' dilated ResNet and adapters for other extractors.

Every backbone is an ``nn.Module`` whose ``forward(x)`` returns a list of feature maps ordered
from the lowest to the top level and which carries a ``feature_info`` (:class:`FeatureInfo`)
describing their channels and strides.
"""

from .adapters import FeatureListBackbone, TimmBackbone, default_dff_indices
from .factory import BackboneSource, backbone_from_config, create_backbone, list_backbones
from .feature_info import FeatureInfo, parse_feature_info
from .loading import CheckpointMismatchError, LoadReport, load_state_dict_checked, read_state_dict
from .resnet import (
    BasicBlock,
    Bottleneck,
    DilatedResNet,
    dilated_resnet50,
    dilated_resnet101,
    dilated_resnet_tiny,
    load_torchvision_weights,
    run_checkpointed,
)

__all__ = [
    "BackboneSource",
    "BasicBlock",
    "Bottleneck",
    "CheckpointMismatchError",
    "DilatedResNet",
    "FeatureInfo",
    "FeatureListBackbone",
    "LoadReport",
    "TimmBackbone",
    "backbone_from_config",
    "create_backbone",
    "list_backbones",
    "default_dff_indices",
    "dilated_resnet50",
    "dilated_resnet101",
    "dilated_resnet_tiny",
    "load_state_dict_checked",
    "load_torchvision_weights",
    "parse_feature_info",
    "read_state_dict",
    "run_checkpointed",
]
