"""dynfuse: Dynamic Feature Fusion (DFF) for semantic edge detection.

The fusion op (:func:`dynamic_fuse`), the DFF layers, and heads that sit on any backbone.
"""

from .heads import CASENetHead, DFFHead, DFFOutput, HeadOptions
from .layers import (
    DynamicFusion,
    FixedFusion,
    FixedWeights,
    FusedLocationAdaptiveFusion,
    LocationAdaptiveLearner,
    LocationInvariantLearner,
    SharedConcat,
    SideNormBlock,
)
from .models import create_model, from_pretrained, load_official_dff
from .ops import dynamic_fuse

__version__ = "0.1.0"

__all__ = [
    "CASENetHead",
    "DFFHead",
    "DFFOutput",
    "DynamicFusion",
    "FixedFusion",
    "FixedWeights",
    "FusedLocationAdaptiveFusion",
    "HeadOptions",
    "LocationAdaptiveLearner",
    "LocationInvariantLearner",
    "SharedConcat",
    "SideNormBlock",
    "__version__",
    "create_model",
    "dynamic_fuse",
    "from_pretrained",
    "load_official_dff",
]
